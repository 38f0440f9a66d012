"""Metrics and losses against hand-checked values (SPEC §5-6)."""
import math

import pytest
import torch

from nnformer_fast.train.losses import (MAPE_LOG_CAP, accuracy_loss, consistency_l1, latency_consistency_loss,
                                        log_mse, log_mse_mape, relative_mse)
from nnformer_fast.train.metrics import acc_within, divergence_reasons, kendall_tau, mape, regression_metrics


def test_mape_and_acc_by_hand():
    p, y = [1.1, 2.0, 2.7], [1.0, 2.0, 3.0]  # relative errors 0.1, 0, 0.1
    assert mape(p, y) == pytest.approx(0.2 / 3)
    assert acc_within(p, y, 0.01) == pytest.approx(1 / 3)
    assert acc_within(p, y, 0.05) == pytest.approx(1 / 3)
    assert acc_within(p, y, 0.10) == pytest.approx(1.0)  # exactly on the boundary counts
    m = regression_metrics(torch.tensor(p), torch.tensor(y))
    assert m["acc@1"] == pytest.approx(1 / 3) and m["acc@10"] == pytest.approx(1.0)
    assert m["mape"] == pytest.approx(0.2 / 3, rel=1e-6) and m["n"] == 3


def test_kendall_tau_b_by_hand():
    # one discordant pair of six: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # a tie in the predictions: tau-b = (C - D) / sqrt((n0 - n1)(n0 - n2)) = 2 / sqrt(2 * 3)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert kendall_tau([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1.0], [2.0]))


def test_metric_input_errors():
    with pytest.raises(ValueError, match="positive"):
        mape([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="2 predictions for 3"):
        mape([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="no predictions"):
        kendall_tau([], [])


def test_losses_by_hand():
    y = torch.tensor([1.0, 3.0])
    assert relative_mse(torch.tensor([[2.0], [3.0]]), y).item() == pytest.approx(0.5)
    # 0.5 + 0 + 0.01 * mean(|2-1|, |3-3|)
    got = latency_consistency_loss(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 3.0]), y)
    assert got.item() == pytest.approx(0.505)
    # mse = 0.01; p - p[pi] = (-0.2, 0.2), y - y[pi] = 0 -> l1 0.2; 0.01 + 0.2 * 0.2
    p, t = torch.tensor([0.5, 0.7]), torch.tensor([0.6, 0.6])
    assert accuracy_loss(p, t, perm=torch.tensor([1, 0])).item() == pytest.approx(0.05)
    assert accuracy_loss(p, t, perm=torch.tensor([1, 0]), lambda_rank=0).item() == pytest.approx(0.01)
    assert consistency_l1(p, t).item() == pytest.approx(0.1)


def test_losses_bf16_inputs_compute_in_fp32():
    p = torch.tensor([2.0, 3.0], dtype=torch.bfloat16)
    out = relative_mse(p, torch.tensor([1.0, 3.0]))
    assert out.dtype == torch.float32 and out.item() == pytest.approx(0.5)


def test_log_mse_by_hand():
    y = torch.tensor([1.0, 0.001])
    # log 2 and log 0.5 off: mean(log(2)^2, log(2)^2); the tiny target weighs no more than the big one
    assert log_mse(torch.tensor([2.0, 0.0005]), y).item() == pytest.approx(math.log(2) ** 2, rel=1e-5)
    assert log_mse(torch.tensor([[1.0], [0.001]]), y).item() == pytest.approx(0.0, abs=1e-10)
    # relative MSE of the same predictions: the collapse to 0 the log loss avoids costs only 1
    assert relative_mse(torch.zeros(2), y).item() == pytest.approx(1.0)
    got = latency_consistency_loss(torch.tensor([2.0, 0.001]), torch.tensor([1.0, 0.001]), y, loss=log_mse)
    assert got.item() == pytest.approx(math.log(2) ** 2 / 2 + 0.01 * 0.5, rel=1e-5)

    # log term log(2)^2; MAPE term mean(|2 - 1| / 1, |0.0005 - 0.001| / 0.001) = 0.75
    assert log_mse_mape(torch.tensor([2.0, 0.0005]), y).item() == pytest.approx(math.log(2) ** 2 + 0.75, rel=1e-5)
    # a 100x over-prediction: its MAPE term stops at e^cap - 1, the log term keeps growing
    got = log_mse_mape(torch.tensor([100.0]), torch.tensor([1.0])).item()
    assert got == pytest.approx(math.log(100) ** 2 + math.expm1(MAPE_LOG_CAP), rel=1e-5)


def test_divergence_reasons():
    y = [1.0, 2.0, 3.0, 4.0]
    assert divergence_reasons([3.0, 2.0, 1.0, 0.5], 2, pred=[1.1, 2.2, 2.9, 4.1], target=y) == []
    assert divergence_reasons([1.0, 1.0, 1.0, 1.2], 2) == ["final training loss 1.1 above the first epoch's 1"]
    assert divergence_reasons([1.0, 1.0, 1.2], 2) == []  # less than two epochs' worth: not judged
    assert divergence_reasons(pred=[4.0, 3.0, 2.0, 1.0], target=y) == ["held-out Kendall tau -1.000 <= 0"]
    constant = divergence_reasons(pred=[0.01, 0.0101, 0.0102, 0.0103], target=y)
    assert len(constant) == 1 and constant[0].startswith("held-out predictions nearly constant")
    assert divergence_reasons(pred=[2.0, 2.0, 2.0, 2.0], target=y) == [
        "held-out predictions nearly constant (spread 0, targets' 1.12)",
        "held-out Kendall tau undefined (constant predictions)"]
    assert divergence_reasons(pred=[1.0, float("nan"), 2.0, 3.0], target=y) == ["non-finite held-out predictions"]


def test_spearman_and_top_k_by_hand():
    from nnformer_fast.train.metrics import PRECISION_AT_TOP_KEY, best_cell_rank, precision_at_top, spearman_rho

    y, p = [5, 1, 4, 2, 3], [2, 3, 5, 1, 4]
    # rank differences d = (-3, 2, 1, -1, 1): rho = 1 - 6 * 16 / (5 * 24)
    assert spearman_rho(p, y) == pytest.approx(0.2)
    assert best_cell_rank(p, y) == 2  # predicted best: accuracy 4, one cell (5) above it
    assert precision_at_top(p, y, 0.4) == pytest.approx(0.5)  # k = 2: picks accuracies 4, 3; true top 5, 4
    m = regression_metrics(p, y, relative=False)
    assert m["rho"] == pytest.approx(0.2) and m["best_rank"] == 2
    assert m[PRECISION_AT_TOP_KEY] == 0.0  # k = ceil(5 / 100) = 1: accuracy 4 is not the best
    assert "mape" not in m and "best_rank" not in regression_metrics([1.0, 2.0], [1.0, 2.0])
    # ties: tied true values share the best rank; of tied predictions the first counts
    assert best_cell_rank([0, 1, 0.5], [3, 3, 1]) == 1
    assert best_cell_rank([1, 1, 0], [1, 2, 3]) == 3
    # a target tied with the k-th best counts as in the top k (k = 2: accuracies 2 and 3 picked)
    assert precision_at_top([0, 0, 1, 0], [3, 2, 2, 1], 0.5) == 1.0
    assert precision_at_top([0, 0, 1, 0], [3, 2, 2, 1], 0.25) == 0.0
    assert math.isnan(spearman_rho([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="fraction"):
        precision_at_top(p, y, 0.0)
