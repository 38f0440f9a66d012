"""Training, evaluation and prediction for the NN-Former predictors.

``fit(TrainConfig(...))`` trains (see :mod:`.loop`); ``evaluate(checkpoint, data)`` scores a
saved model on a dataset; ``predict(checkpoint, paths)`` predicts the latency of ONNX files.
The CLI (``nnformer-fast train | evaluate | predict``) wraps these three.
"""
from .api import evaluate, load_model, predict
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .loop import FitResult, TrainConfig, evaluate_model, fit
from .metrics import acc_within, kendall_tau, mape, regression_metrics
from .sampler import DistributedTokenBudgetBatchSampler, TokenBudgetBatchSampler

__all__ = ["fit", "evaluate", "predict", "load_model", "TrainConfig", "FitResult", "evaluate_model",
           "CheckpointError", "load_checkpoint", "save_checkpoint", "mape", "acc_within", "kendall_tau",
           "regression_metrics", "TokenBudgetBatchSampler", "DistributedTokenBudgetBatchSampler"]
