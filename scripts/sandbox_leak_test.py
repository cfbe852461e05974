"""Leak test over thousands of sandbox executions: zombies, open fds, temp folders, stray processes.

    .venv/bin/python scripts/sandbox_leak_test.py --executions 3000
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.test_sandbox import ADD, ATTACKS, IO, _sandbox_processes, _tmp_entries, _zombies_of_self  # noqa: E402
from training.sandbox import Job, SandboxLimits, SandboxPool  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--executions", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
    mixed = [Job(ADD, **IO), Job("def add(a, b) return", **IO), Job(ATTACKS["setsid_double_fork"], **IO),
             Job(ATTACKS["write_outside"], **IO)]
    with SandboxPool(a.workers or None, SandboxLimits(timeout_s=2)) as pool:
        pool.run_many(mixed * 5)
        fds0, tmp0 = len(os.listdir("/proc/self/fd")), _tmp_entries()
        t0 = time.perf_counter()
        res = pool.run_many((mixed * (a.executions // len(mixed) + 1))[: a.executions])
        dt = time.perf_counter() - t0
        fds1 = len(os.listdir("/proc/self/fd"))
    print(f"executions={len(res)} passes={sum(r.passed for r in res)} exec_per_s={len(res) / dt:.1f} "
          f"fds_before={fds0} fds_after={fds1} new_tmp={len(_tmp_entries() - tmp0)} "
          f"zombies={_zombies_of_self()} stray_processes={len(_sandbox_processes())} isolation={pool.iso.mode}")
    return 0 if fds1 <= fds0 and not (_tmp_entries() - tmp0) and not _zombies_of_self() and not _sandbox_processes() else 1


if __name__ == "__main__":
    sys.exit(main())
