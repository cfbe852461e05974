"""eco_train entry point: parse flags -> RunConfig -> run().

    eco_train [@args.txt ...] [--flag value ...]   train
    eco_train report RUN_DIR [--out DIR]          plots and an HTML summary of a run

Exit codes: 0 success, 1 the run failed (the message says why), 2 bad command line,
130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Sequence

from training.cli import UsageError, parse_args, parse_report_args


def main(argv: Sequence[str] | None = None) -> int:
    multiprocessing.freeze_support()  # data workers in a frozen binary
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return _report(argv[1:])
    try:
        ns = parse_args(argv)
    except UsageError as e:
        message = str(e)
        if "fix:" not in message:
            message += "; fix: see `eco_train --help` for the flags and their values"
        print(f"eco_train: error: {message}", file=sys.stderr)
        return 2

    # Heavy imports (torch, tokenizers) only after the command line is known to be good.
    from training.config import RunConfig
    from training.trainer import run

    try:
        return run(RunConfig.from_args(ns))
    except KeyboardInterrupt:
        print("eco_train: interrupted", file=sys.stderr)
        return 130


def _report(argv: list[str]) -> int:
    try:
        ns = parse_report_args(argv)
    except UsageError as e:
        print(f"eco_train report: error: {e}", file=sys.stderr)
        return 2
    from training.report import write_report

    path = write_report(ns.run_dir, ns.out)
    print(f"eco_train report: wrote {path} and its plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
