"""Checkpoint torture test: SIGKILL a small CPU run at random moments, many times, then check it.

    python scripts/torture_checkpoints.py --trials 40

Every save phase is slowed (ECO_TRAIN_FAULTS=save_pause=...) so kills land inside each one: tensor
files, manifest, rename, marker, retention deletion. After every kill the run is restarted; every
restart must resume from a checkpoint that verifies (never a partial one), and the finished run
must equal an uninterrupted one bit for bit. The trials and the phases hit are printed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

ARGS = [
    "--device", "cpu", "--model-preset", "tiny", "--seq-len", "32", "--batch-size", "4",
    "--vocab-size", "512", "--tokenizer-train-chars", "60000", "--warmup-steps", "2",
    "--log-every", "1", "--eval-every", "0", "--eval-batches", "1", "--sample-every", "0",
    "--bootstrap-seed-batches", "2", "--seed", "5", "--steps", "12", "--save-every", "2",
    "--max-checkpoints", "2",
]


def _cmd() -> list[str]:
    from entry import eco_train_cmd

    return eco_train_cmd()


def _start(args: list[str], cwd: Path, pause: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ECO_TRAIN_FAULTS": f"save_pause={pause}" if pause else ""}
    return subprocess.Popen([*_cmd(), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


def kill_in_phase(run: Path, args: list[str], phase: str, pause: float = 0.3) -> None:
    """Start the run and SIGKILL it while it is inside save phase `phase` (the first time it gets there)."""
    proc = _start(args, run.parent, pause)
    try:
        for line in proc.stdout:
            if line.strip() == f"[sigma] checkpoint_phase={phase}":
                proc.send_signal(signal.SIGKILL)
                break
        else:
            raise AssertionError(f"the run ended without reaching save phase {phase!r}")
    finally:
        proc.kill()
        proc.wait()


def _kill_at_random(args: list[str], cwd: Path, rng: random.Random, pause: float) -> tuple[bool, str | None]:
    """Run until done or killed after a random delay; returns (finished, the last save phase seen)."""
    import threading

    proc = _start(args, cwd, pause)
    last_phase: list[str | None] = [None]

    def read() -> None:
        for line in proc.stdout:
            if line.startswith("[sigma] checkpoint_phase="):
                last_phase[0] = line.strip().split("=", 1)[1]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=rng.uniform(1.0, 8.0))
        reader.join()
        return proc.returncode == 0, last_phase[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        return False, last_phase[0]


def main() -> None:
    from safetensors.torch import load_file

    from training.checkpoint import MARKER, verify_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=40, help="SIGKILLs at random moments")
    p.add_argument("--pause", type=float, default=0.15, help="seconds each save phase is held")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    root = Path(tempfile.mkdtemp(prefix="eco_train_torture_"))

    ref = root / "reference"
    subprocess.run([*_cmd(), *ARGS, "--output-dir", str(ref), "--checkpoint-dir", str(ref / "ck")],
                   cwd=root, check=True, capture_output=True)
    expected = load_file(str(ref / "ck" / "step_12" / "model.safetensors"))

    run = root / "run"
    args = [*ARGS, "--output-dir", str(run), "--checkpoint-dir", str(run / "ck")]
    phases: Counter[str] = Counter()
    kills = completions = 0
    while kills < a.trials:
        finished, phase = _kill_at_random(args, root, rng, a.pause)
        if finished:
            completions += 1
            got = load_file(str(run / "ck" / "step_12" / "model.safetensors"))
            assert all(got[k].equal(expected[k]) for k in expected), "a resumed run differs from the reference"
            for d in (run, ):
                import shutil

                shutil.rmtree(d)
            continue
        kills += 1
        phases[phase or "(between saves)"] += 1
        for c in (run / "ck").glob("step_*"):
            if (c / MARKER).exists():
                assert verify_checkpoint(c) is None, f"{c} has a marker but does not verify"
    # finish the last one and check it
    finished, _ = _kill_at_random(args, root, random.Random(1e9), 0)
    while not finished:
        finished, _ = _kill_at_random(args, root, random.Random(1e9), 0)
    got = load_file(str(run / "ck" / "step_12" / "model.safetensors"))
    assert all(got[k].equal(expected[k]) for k in expected), "a resumed run differs from the reference"
    print(f"{kills} SIGKILLs, {completions + 1} completed runs, every one equal to the uninterrupted run")
    print("last save phase seen before each kill: " + ", ".join(f"{k}={v}" for k, v in sorted(phases.items())))


if __name__ == "__main__":
    main()
