"""``nnformer-fast train | evaluate | predict`` — argument parsers and runners.

Registered from :mod:`nnformer_fast.cli` (one call each); heavy imports happen in the
runners.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["register_train", "register_evaluate", "register_predict"]


def _model_options(text: str) -> dict:
    """``key=value,key=value`` model options (ints, floats, bools, int lists with ``:``)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        if v.lower() in ("true", "false"):
            out[k] = v.lower() == "true"
        else:
            try:
                out[k] = [int(x) for x in v.split(":")] if ":" in v else int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out


def _add_data_args(p, *, required: bool = False) -> None:
    p.add_argument("--data", default=None, required=required,
                   help="dataset: latency — NNLQP folder or its text file, a saved .npz, or 'default' (the "
                        "embedded set; the default); accuracy — NB101/201 JSON (the library's layout, docs/DATA.md, "
                        "or NASLib's) or the NB201 CSV")
    p.add_argument("--data-format", default="auto",
                   help="auto (default), default, nnlqp, npz, nb201-latency | spec-json, nb201-csv, nb101-naslib, "
                        "nb201-naslib")
    p.add_argument("--nb201-device", default=None,
                   help="NAS-Bench-201 latency device (e.g. pixel3); --data is then the nb201_latency folder")
    p.add_argument("--accuracy-dataset", default="cifar10", help="cifar10 | cifar100 | ImageNet16-120 (NB201)")
    p.add_argument("--target", dest="accuracy_target", default="validation_accuracy",
                   help="accuracy field of cell JSON files in the library's layout (default validation_accuracy)")
    p.add_argument("--nb201-encoding", choices=("pruned", "reference"), default="pruned",
                   help="NAS-Bench-201 cells of the nb201-csv and nb201-naslib formats: pruned (docs/DATA.md, the "
                        "default) or reference (the authors' 8 unpruned nodes, depth = the non-none nodes; what "
                        "their checkpoints were trained on). Ignored for other formats (cell JSON files with "
                        "*_avg accuracies always get the authors' depth)")


# ---------------------------------------------------------------------------- train
def _run_train(args) -> int:
    from .loop import TrainConfig, fit

    cfg = TrainConfig(
        task=args.task, data=args.data, data_format=args.data_format, nb201_device=args.nb201_device,
        accuracy_dataset=args.accuracy_dataset, accuracy_target=args.accuracy_target,
        nb201_encoding=args.nb201_encoding, test_fraction=args.test_fraction, split_seed=args.split_seed,
        train_limit=args.train_limit,
        model=args.model, epochs=args.epochs, max_nodes=args.max_nodes, max_graphs=args.max_graphs, lr=args.lr,
        weight_decay=args.weight_decay, warmup=args.warmup, min_lr_ratio=args.min_lr_ratio,
        grad_clip=args.grad_clip or None, ema=args.ema, consistency=args.consistency, precision=args.precision,
        device=args.device, compile=args.compile, num_workers=args.workers, seed=args.seed, out=args.out,
        checkpoint_every=args.checkpoint_every, resume=args.resume, overwrite=args.overwrite,
        max_steps=args.max_steps, eval_every_epoch=args.eval_every_epoch, progress=not args.quiet,
        threads=args.threads)
    try:
        result = fit(cfg)
    except KeyboardInterrupt:
        return 130
    except FloatingPointError as e:
        print(f"nnformer-fast train: error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:  # DDP (torchrun): the summary once, from rank 0
        return 0
    if result.metrics:
        print("held-out: " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in result.metrics.items()))
    t = result.throughput
    print(f"trained {result.step} steps; this run {t['steps']} steps in {t['seconds']:.1f} s: "
          f"{t['graphs_per_s']:.1f} graphs/s, {t['nodes_per_s']:.0f} nodes/s")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def register_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a latency or accuracy predictor",
        description="Train NN-Former on packed batches (token-budget bucketing), with mixed precision, "
                    "atomic checkpoints, exact --resume, Ctrl-C checkpointing and DDP under torchrun.")
    p.add_argument("--task", choices=("latency", "accuracy"), default="latency")
    _add_data_args(p)
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction (default 0.2)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None, help="use only this many training items")
    p.add_argument("--model", type=_model_options, default={},
                   help="model options, e.g. dim=128,n_layers=2,dropout=0 (latency) or depth=6,dim=96 (accuracy)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-nodes", type=int, default=4096, help="node budget per (global) batch (default 4096)")
    p.add_argument("--max-graphs", type=int, default=None, help="cap on graphs per batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.05, help="warm-up: fraction of steps (<1) or steps (>=1)")
    p.add_argument("--min-lr-ratio", type=float, default=0.0, help="cosine floor as a fraction of --lr")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off; > 0 otherwise)")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights in [0, 1) (0 = off), e.g. 0.999")
    p.add_argument("--consistency", action="store_true",
                   help="consistency loss: latency — two stochastic passes; accuracy — every cell beside its twin "
                        "in one batch, weight --model lambda_consistency=1.0 (docs/TRAINING.md)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16",
                   help="bf16 autocast (CPU/GPU, default), fp16 + GradScaler (GPU) or fp32")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (latency task; one graph for all batch shapes; the first steps "
                        "compile, about 1.5 min on a 2-core CPU; see docs/TRAINING.md for when it pays)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers building batches (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/train", help="checkpoint folder (default runs/train)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint (no value: OUT/last.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh even though OUT/last.pt holds an earlier run (which is replaced); without "
                        "it or --resume, train refuses such a folder")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop (with a checkpoint) once N steps in all are done (checked before each step: a run "
                        "resumed at N takes none; 0 takes none)")
    p.add_argument("--eval-every-epoch", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_train)


# ---------------------------------------------------------------------------- evaluate
def _run_evaluate(args) -> int:
    from .api import evaluate

    opts = {"fmt": args.data_format, "nb201_device": args.nb201_device, "accuracy_dataset": args.accuracy_dataset,
            "target": args.accuracy_target, "nb201_encoding": args.nb201_encoding}
    if args.data is None:  # use the run's own data settings
        opts = {}
    metrics = evaluate(args.checkpoint, args.data, split=args.split, max_nodes=args.max_nodes,
                       device=args.device, precision=args.precision, progress=not args.quiet, **opts)
    if args.json:
        print(json.dumps(metrics))
    else:
        print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return 0


def register_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="metrics of a checkpoint on a dataset",
                              description="MAPE, Acc(1/5/10%%) and Kendall tau (latency) or tau and MSE "
                                          "(accuracy) of a training checkpoint.")
    p.add_argument("checkpoint", help="a checkpoint written by train (e.g. runs/train/last.pt)")
    _add_data_args(p)
    p.add_argument("--split", choices=("test", "train", "all"), default="test",
                   help="held-out part (default; re-split with the run's settings), training part, or all")
    p.add_argument("--max-nodes", type=int, default=8192)
    p.add_argument("--device", default="auto", help="auto (default: CUDA when available), cpu, cuda, cuda:1")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_evaluate)


# ---------------------------------------------------------------------------- predict
#: ``--batch-size`` above this draws a warning: far beyond any measured network
LARGE_BATCH = 2 ** 16


def _batch_size(text: str) -> int:
    """``--batch-size``: an integer in [1, 2**63 - 1] (ONNX dims are int64)."""
    from .._cli_args import int_at_least
    from ..data.onnx_features import MAX_DIM

    value = int_at_least(1)(text)
    if value > MAX_DIM:
        raise argparse.ArgumentTypeError(f"must be <= 2**63 - 1 (ONNX dims are int64), got {value}")
    return value


def _run_predict(args) -> int:
    from .._cli_args import one_line
    from .api import predict

    if args.batch_size > LARGE_BATCH:
        print(f"nnformer-fast predict: warning: --batch-size {args.batch_size} is far beyond the batch sizes of "
              "measured networks; the predictions extrapolate", file=sys.stderr)
    failed = []

    def report(path, error):  # one line per unreadable file; the others are still predicted
        failed.append(path)
        print(one_line(f"nnformer-fast predict: error: {error}"), file=sys.stderr)

    done = predict(args.checkpoint, args.onnx, batch_size=args.batch_size, device=args.device,
                   progress=not args.quiet, on_error=report)
    for path, ms in done:
        print(f"{path}\t{ms:.4f} ms")
    if failed:
        print(f"nnformer-fast predict: {len(failed)} of {len(failed) + len(done)} ONNX files could not be read",
              file=sys.stderr)
        return 2
    return 0


def register_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="predict the latency of ONNX files",
                              description="Print the predicted latency (ms) of each ONNX file (folders are "
                                          "searched recursively for *.onnx). A file that cannot be read is "
                                          "reported in one line and the others are predicted; the exit status "
                                          "is then 2.")
    p.add_argument("checkpoint", help="a latency checkpoint written by train")
    p.add_argument("onnx", nargs="+", help="ONNX files or folders")
    p.add_argument("--batch-size", type=_batch_size, default=1,
                   help=f"input batch size of the networks (default 1; a warning above {LARGE_BATCH})")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when available), cpu, cuda, cuda:1")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_predict)
