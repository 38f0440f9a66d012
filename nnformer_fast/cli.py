"""``nnformer-fast`` command line: one subcommand per registration function.

To add a subcommand, write ``_register_<name>(subparsers)`` that adds its parser and sets
``func`` (called with the parsed args, returns an exit code), and list it in ``COMMANDS``.
Heavy imports stay inside the ``func`` so ``nnformer-fast --help`` is fast.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Callable, Sequence

from ._cli_args import int_at_least, one_line

__all__ = ["main", "build_parser", "COMMANDS"]


def _csv(kind: Callable = str):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return [kind(t) for t in items]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


# ------------------------------------------------------------------ build-latency-set
def _run_build_latency_set(args) -> int:
    from .data.builder import build_latency_set, require_onnx

    try:
        require_onnx()
    except ModuleNotFoundError as e:  # the [data] extra is not installed: say so in one line
        print(f"nnformer-fast build-latency-set: error: {e}", file=sys.stderr)
        return 2
    path = build_latency_set(args.out, args.families, args.count, args.batch_sizes, threads=args.threads,
                             repeats=args.repeats, warmup=args.warmup, seed=args.seed, platform=args.platform,
                             tiny=args.tiny, progress=not args.quiet, clock=args.clock, statistic=args.statistic,
                             rounds=args.rounds, passes=args.passes)
    print(f"wrote {path}")
    if args.remeasure_above is not None:
        from .data.builder import remeasure_noisy

        n = remeasure_noisy(args.out, args.remeasure_above, repeats=args.remeasure_repeats, progress=not args.quiet)
        print(f"re-measured noisy records, {n} replaced")
    if args.retest is not None:
        from .data.builder import retest

        r = retest(args.out, args.retest, seed=args.retest_seed, progress=not args.quiet)
        print(f"retest of {r['records']} records: |new - stored| / stored median {100 * r['median']:.2f} %, "
              f"p90 {100 * r['p90']:.2f} %, max {100 * r['max']:.2f} %")
    if args.pack:
        from .data.latency import pack_latency_set

        ds = pack_latency_set(args.out, args.pack, progress=not args.quiet)
        print(f"packed {len(ds)} records into {args.pack}")
    return 0


def _register_build_latency_set(subparsers) -> None:
    from .data.builder.families import FAMILIES
    from .data.builder.measure import CLOCKS, STATISTICS

    p = subparsers.add_parser(
        "build-latency-set", help="generate CNNs and measure them with onnxruntime (NNLQP layout)",
        description="Generate random networks of real CNN families as ONNX (weights stripped), measure each "
                    "with onnxruntime on this machine and write the NNLQP layout to OUT. Rerunning continues "
                    "an interrupted build.")
    p.add_argument("out", help="output folder")
    p.add_argument("--families", type=_csv(), default=list(FAMILIES),
                   help=f"comma-separated families (default all: {','.join(FAMILIES)})")
    p.add_argument("--count", type=int, default=10, help="networks per family (default 10, at most 100000)")
    p.add_argument("--batch-sizes", type=_csv(int), default=[1], help="comma-separated batch sizes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the network generator (>= 0, default 0)")
    p.add_argument("--platform", default=None, help="platform_id column (default cpu-ort-t<threads>)")
    p.add_argument("--tiny", action="store_true", help="smallest network variants (quick checks)")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="what times a run: wall (elapsed, default) or cpu (this thread's CPU time: leaves out "
                        "the waits for a core of a shared machine)")
    p.add_argument("--statistic", choices=list(STATISTICS), default="median",
                   help="the latency of a record: median (default) or min of its timed runs")
    p.add_argument("--rounds", type=int_at_least(1), default=1,
                   help="rounds of --warmup + --repeats runs, interleaved over groups of networks (default 1)")
    p.add_argument("--passes", type=int_at_least(1), default=1,
                   help="passes over the whole set, each with fresh sessions; a record's latency is --statistic over "
                        "them (default 1)")
    p.add_argument("--retest", type=float, default=None, metavar="FRACTION",
                   help="afterwards, measure again a seeded sample of FRACTION of the records with the build's "
                        "protocol and print the median and p90 of |new - stored| / stored (changes nothing)")
    p.add_argument("--retest-seed", type=int, default=0, help="seed of the retest sample (default 0)")
    p.add_argument("--remeasure-above", type=float, default=None, metavar="REL_IQR",
                   help="afterwards, measure again records whose (p75-p25)/median exceeds REL_IQR, keeping "
                        "the less noisy measurement (busy machines)")
    p.add_argument("--remeasure-repeats", type=int_at_least(1), default=None,
                   help="timed runs when re-measuring (default: --repeats)")
    p.add_argument("--pack", default=None, metavar="FILE.npz",
                   help="also write the set as one compact .npz (LatencyDataset.load reads it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_build_latency_set)


# ------------------------------------------------------------------ train / evaluate / predict
def _register_train(subparsers) -> None:
    from .train.cli import register_train

    register_train(subparsers)


def _register_evaluate(subparsers) -> None:
    from .train.cli import register_evaluate

    register_evaluate(subparsers)


def _register_predict(subparsers) -> None:
    from .train.cli import register_predict

    register_predict(subparsers)


# ------------------------------------------------------------------ reproduce
def _register_reproduce(subparsers) -> None:
    from .train.reproduce import register_reproduce

    register_reproduce(subparsers)


#: (name, registration function) of every subcommand, in help order.
COMMANDS: list[tuple[str, Callable]] = [
    ("build-latency-set", _register_build_latency_set),
    ("train", _register_train),
    ("evaluate", _register_evaluate),
    ("predict", _register_predict),
    ("reproduce", _register_reproduce),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnformer-fast", description="NN-Former: fast training and prediction")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _, register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():  # each warning on one line, like the errors
            warnings.showwarning = lambda message, *_, **__: print(
                one_line(f"nnformer-fast {args.command}: warning: {message}"), file=sys.stderr)
            return int(args.func(args) or 0)
    except (ValueError, OSError, ModuleNotFoundError) as e:  # bad options or data, unreadable/unwritable files,
        # an optional package missing (the message names its extra): one line, no traceback
        print(one_line(f"nnformer-fast {args.command}: error: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was written stays (train writes its checkpoint first)
        print(f"\nnnformer-fast {args.command}: interrupted"
              + ("; rerun the same command to resume" if args.command == "build-latency-set" else ""),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
