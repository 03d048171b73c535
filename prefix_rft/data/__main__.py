"""``python -m prefix_rft.data prepare {openr1,generic,eval} ...``: see docs/DATA_AND_EVAL.md."""

from __future__ import annotations

import argparse
import os
import sys

from prefix_rft.data.contract import DEMO_KEY, ContractError
from prefix_rft.data.eval_sets import BENCHMARKS, prepare_eval
from prefix_rft.data.sources import SourceError
from prefix_rft.data.train import OPENR1_HF_ID, prepare_generic, prepare_openr1


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", required=True, help="where train.parquet (+ val.parquet) are written")
    p.add_argument("--split", default="train", help="source split to read (hub datasets). Default: train")
    p.add_argument(
        "--local-path",
        default=None,
        help="a local copy (parquet/jsonl/json file or directory) "
        "in the source's schema; same as the positional SOURCE",
    )
    p.add_argument(
        "--max-demo-tokens",
        type=int,
        default=None,
        help="drop demonstrations longer than N tokens (the paper: 8192); needs --tokenizer",
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer (model) path used to count demo tokens")
    p.add_argument(
        "--subsample",
        type=float,
        default=None,
        help="keep this fraction of the training rows (e.g. 0.1, 0.01 for the paper's ablations)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --subsample and --val-size. Default 0")
    p.add_argument(
        "--val-size",
        type=int,
        default=0,
        help="move K random rows to val.parquet (without demonstrations). Default 0",
    )
    p.add_argument("--demo-key", default=DEMO_KEY, help=f"demo column name. Default {DEMO_KEY}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prefix_rft.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="prepare a dataset")
    kinds = prepare.add_subparsers(dest="kind", required=True)

    p = kinds.add_parser("openr1", help=f"LUFFY's {OPENR1_HF_ID} (the paper's training data)")
    p.add_argument("source", nargs="?", default=None, help=f"hub id or local copy. Default {OPENR1_HF_ID}")
    _train_options(p)

    p = kinds.add_parser("generic", help="any dataset with problem / solution / answer columns")
    p.add_argument("source", nargs="?", default=None, help="hub id or local parquet/jsonl/json file or dir")
    p.add_argument("--config", default=None, help="hub dataset config name")
    p.add_argument("--problem-key", default="problem", help="problem text column. Default: problem")
    p.add_argument(
        "--solution-key",
        default="solution",
        help="demonstration column (a string or a list of strings); '' = no demonstrations",
    )
    p.add_argument(
        "--answer-key",
        default="answer",
        help="ground-truth answer column (see --answer-from-solution). Default: answer",
    )
    p.add_argument(
        "--answer-from-solution",
        action="store_true",
        help="when the answer is missing, use the last \\boxed{} of the first solution",
    )
    p.add_argument("--data-source", default=None, help="data_source value. Default: the source's name")
    _train_options(p)

    p = kinds.add_parser("eval", help="the paper's evaluation sets (one parquet per benchmark)")
    p.add_argument("--output-dir", required=True)
    p.add_argument(
        "--benchmarks", default=None, help=f"comma-separated subset of {','.join(BENCHMARKS)}. Default: all"
    )
    p.add_argument("--no-ood", action="store_true", help="skip ARC-c, GPQA-diamond, MMLU-Pro")
    p.add_argument(
        "--local-dir",
        default=None,
        help="directory with <name>.parquet|jsonl|json copies in the public schemas (no hub; "
        "a missing copy is an error)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "demo_key", None) is not None and not args.demo_key.strip():
        parser.error(f"--demo-key must be a non-empty column name (default {DEMO_KEY})")
    if getattr(args, "local_path", None) and not os.path.exists(os.path.expanduser(args.local_path)):
        print(f"error: --local-path: file not found: {args.local_path}", file=sys.stderr)
        return 1
    try:
        if args.kind == "eval":
            names = [b.strip() for b in args.benchmarks.split(",")] if args.benchmarks else None
            manifest = prepare_eval(
                args.output_dir, benchmarks=names, local_dir=args.local_dir, include_ood=not args.no_ood
            )
            print(f"wrote {len(manifest)} benchmark(s) to {args.output_dir} (manifest.json lists n_samples)")
            return 0
        common = dict(
            output_dir=args.output_dir,
            split=args.split,
            max_demo_tokens=args.max_demo_tokens,
            tokenizer=args.tokenizer,
            subsample=args.subsample,
            seed=args.seed,
            val_size=args.val_size,
            demo_key=args.demo_key,
        )
        source = args.local_path or args.source
        if args.kind == "openr1":
            report = prepare_openr1(source or OPENR1_HF_ID, **common)
        else:
            if not source:
                print("error: generic needs a SOURCE (hub id or local file)", file=sys.stderr)
                return 2
            report = prepare_generic(
                source,
                problem_key=args.problem_key,
                solution_key=args.solution_key or None,
                answer_key=args.answer_key,
                config=args.config,
                data_source=args.data_source,
                answer_from_solution=args.answer_from_solution,
                **common,
            )
        print(report.render())
        return 0
    except (SourceError, ContractError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
