"""eco_train entry point: parse flags -> RunConfig -> run().

Exit codes: 0 success, 1 the run failed (the message says why), 2 bad command line,
130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Sequence

from training.cli import UsageError, parse_args


def main(argv: Sequence[str] | None = None) -> int:
    multiprocessing.freeze_support()  # data workers in a frozen binary
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


if __name__ == "__main__":
    sys.exit(main())
