"""Checkpoints that never lose a run: resume equivalence, quarantine, retention, signals, faults, crash reports."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from entry import eco_train_cmd, run_eco_train
from safetensors.torch import load_file

from training.checkpoint import (
    MARKER,
    apply_retention,
    complete_checkpoints,
    find_resumable,
    flatten_state,
    sha256_file,
    unflatten_state,
    verify_checkpoint,
)

TINY = [
    "--device", "cpu", "--model-preset", "tiny", "--seq-len", "32", "--batch-size", "4",
    "--vocab-size", "512", "--tokenizer-train-chars", "60000", "--warmup-steps", "2",
    "--log-every", "1", "--eval-every", "0", "--eval-batches", "1", "--sample-every", "0",
    "--bootstrap-seed-batches", "2", "--seed", "5",
]


def cmd_args(run: Path, steps: int, save_every: int, *extra: str) -> list[str]:
    return [*TINY, "--steps", str(steps), "--save-every", str(save_every), "--output-dir", str(run),
            "--checkpoint-dir", str(run / "ck"), *extra]


def train(run: Path, steps: int = 12, save_every: int = 4, *extra: str, faults: str = "",
          expect: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "ECO_TRAIN_FAULTS": faults}
    r = run_eco_train(*cmd_args(run, steps, save_every, *extra), cwd=run.parent, env=env)
    assert r.returncode == expect, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses_by_step(run: Path) -> dict[int, float]:
    """The last logged loss of each step (a resumed run logs the redone steps again)."""
    return {r["step"]: r["loss"] for r in records(run) if r["event"] == "step"}


def final_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "ck" / f"step_{step}" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 12-step run, saving every 4 steps."""
    run = tmp_path_factory.mktemp("ref") / "run"
    train(run)
    return run


# ----------------------------------------------------------------------------------------------
# Resume


def test_resume_after_crash_is_bit_identical_twice(tmp_path, reference):
    run = tmp_path / "run"
    r = train(run, faults="raise@6", expect=1)  # dies in step 6: step_4 is the last checkpoint
    assert "crash report" in r.stderr
    r = train(run, faults="raise@10", expect=1)  # resumes at 4, dies in step 10: step_8 is the last
    assert "[sigma] checkpoint_resume_step=4" in r.stdout
    r = train(run)  # resumes at 8, finishes
    assert "[sigma] checkpoint_resume_step=8" in r.stdout
    assert losses_by_step(run) == losses_by_step(reference)
    assert_same_weights(final_weights(run, 12), final_weights(reference, 12))
    startups = [r for r in records(run) if r["event"] == "startup"]
    assert [s["checkpoint_resume_step"] for s in startups] == [None, 4, 8]


def test_rerunning_a_finished_run_changes_nothing(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    before = {p.name: sha256_file(p / "model.safetensors") for p in complete_checkpoints(run / "ck")}
    r = train(run)
    assert "[sigma] checkpoint_resume_step=12" in r.stdout and "done: 12 steps" in r.stdout
    assert {p.name: sha256_file(p / "model.safetensors") for p in complete_checkpoints(run / "ck")} == before
    assert not (run / "ck" / "quarantine").exists()


def test_resume_never_starts_fresh_and_path_resumes_that_one(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    r = train(run, 12, 4, "--resume", str(run / "ck" / "step_8"))
    assert "[sigma] checkpoint_resume_step=8" in r.stdout
    assert_same_weights(final_weights(run, 12), final_weights(reference, 12))
    r = train(run, 12, 4, "--resume", "never")
    assert "[sigma] checkpoint_resume_step=null" in r.stdout


def test_incompatible_checkpoint_is_refused_unless_weights_only(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    r = train(run, 16, 4, "--optimizer", "c3o", expect=1)
    assert "trained with --optimizer muon" in r.stderr and "--resume-weights-only" in r.stderr
    r = train(run, 16, 4, "--seq-len", "64", expect=1)
    assert "different model" in r.stderr and "max_seq_len" in r.stderr
    r = train(run, 16, 4, "--optimizer", "c3o", "--resume-weights-only")
    assert "resumed from" in r.stdout and "(weights only)" in r.stdout


# The tiny preset as an older eco_train might have defined it: other head count and width, same
# attention width (as 124m went from 12 x 64 to 6 x 128). The run below writes its checkpoint with it.
OLDER_TINY = "dict(n_layer=4, n_head=2, n_kv_head=1, d_model=128, d_ff=384, head_dim=64)"
WITH_OLDER_TINY = (
    "import runpy, sys; import model.config as c; c.PRESETS['tiny'] = " + OLDER_TINY + "; "
    "sys.argv[0] = 'train_sigma.py'; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_resume_continues_the_checkpoint_model_when_its_preset_has_changed(tmp_path):
    """Days of training are not stranded by a release that redefines a preset: same --model-preset,
    the checkpoint's shapes, said on the console; the model keeps training from where it stopped."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    older = subprocess.run([sys.executable, "-c", WITH_OLDER_TINY, *cmd_args(run, 4, 4)], cwd=env["PYTHONPATH"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert older.returncode == 0, older.stderr[-3000:]
    saved = json.loads((run / "config.json").read_text())["model"]
    assert (saved["n_head"], saved["head_dim"]) == (2, 64)
    r = train(run, 8, 4)
    assert "the tiny preset has changed" in r.stdout and "'head_dim': (64, 32)" in r.stdout
    assert "resumed from" in r.stdout and "at step 4" in r.stdout
    assert max(losses_by_step(run)) == 8
    weights = final_weights(run, 8)
    assert weights["layers.0.self_attn.q_norm.weight"].shape == (64,)  # still the checkpoint's 64-wide heads


# ----------------------------------------------------------------------------------------------
# Damage and quarantine


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _drop_listed_file(ck: Path) -> None:
    (ck / "optimizer.json").unlink()


DAMAGE = {
    "truncated tensor file": (lambda ck: os.truncate(ck / "model.safetensors", 100), "size"),
    "flipped byte": (lambda ck: _flip_byte(ck / "optimizer.safetensors"), "sha256 mismatch"),
    "missing marker": (lambda ck: (ck / MARKER).unlink(), "missing completion marker"),
    "missing manifest": (lambda ck: (ck / "manifest.json").unlink(), "missing manifest.json"),
    "manifest lists a missing file": (_drop_listed_file, "missing file(s) listed in the manifest"),
    "empty folder": (lambda ck: [p.unlink() for p in ck.iterdir()], "missing completion marker"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_quarantined_and_previous_used(tmp_path, reference, damage):
    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    (run / "ck" / "step_12").rename(run / "ck" / "step_keep")  # keep step_8 the newest
    shutil.rmtree(run / "ck" / "step_keep")
    hurt, reason = DAMAGE[damage]
    hurt(run / "ck" / "step_8")
    r = train(run, 12, 4)
    assert "[sigma] checkpoint_resume_step=4" in r.stdout
    assert "[sigma] checkpoint_quarantine_count=1" in r.stdout
    (reason_file,) = (run / "ck" / "quarantine").glob("*.reason.txt")
    assert reason in reason_file.read_text()
    assert_same_weights(final_weights(run, 12), final_weights(reference, 12))


def test_leftover_temporary_folder_is_quarantined_never_loaded(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    shutil.copytree(run / "ck" / "step_12", run / "ck" / ".tmp_step_16")
    path, moved = find_resumable(run / "ck", log=lambda _: None)
    assert path == run / "ck" / "step_12"
    assert [reason for _, reason in moved] == ["leftover temporary folder of an interrupted save"]
    assert not (run / "ck" / ".tmp_step_16").exists()


def test_planted_pickle_is_never_unpickled(tmp_path, reference):
    """A checkpoint whose files were swapped for a malicious pickle (manifest rewritten to match) is refused."""
    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    ck = run / "ck" / "step_12"
    canary = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))

    for victim in ("optimizer.json", "model.safetensors"):
        (ck / victim).write_bytes(pickle.dumps(Evil()))
    manifest = json.loads((ck / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = {"size": (ck / name).stat().st_size, "sha256": sha256_file(ck / name)}
    (ck / "manifest.json").write_text(json.dumps(manifest))
    reason = verify_checkpoint(ck)
    assert reason is not None and "unreadable" in reason
    train(run, 12, 4)
    assert not canary.exists(), "a pickle in a checkpoint was executed"
    assert len(list((run / "ck" / "quarantine").glob("*.reason.txt"))) == 1


# ----------------------------------------------------------------------------------------------
# Retention


def test_retention_keeps_newest_and_the_resumed_one(tmp_path, reference):
    run = tmp_path / "run"
    train(run, 12, 2, "--max-checkpoints", "2")
    assert [p.name for p in complete_checkpoints(run / "ck")] == ["step_10", "step_12"]
    # Resuming from step_4 of the reference with keep=1: step_4 survives the whole run.
    other = tmp_path / "other"
    shutil.copytree(reference, other, symlinks=True)
    for name in ("step_8", "step_12"):
        shutil.rmtree(other / "ck" / name)
    train(other, 12, 4, "--max-checkpoints", "1")
    assert [p.name for p in complete_checkpoints(other / "ck")] == ["step_4", "step_12"]


def test_retention_deletes_marker_first(tmp_path, reference):
    root = tmp_path / "ck"
    shutil.copytree(reference / "ck", root)
    seen = []
    orig = Path.unlink

    def spy(self, *a, **k):
        seen.append(self.name)
        return orig(self, *a, **k)

    Path.unlink = spy
    try:
        deleted = apply_retention(root, 1, protect=set())
    finally:
        Path.unlink = orig
    assert [p.name for p in deleted] == ["step_4", "step_8"]
    assert seen == [MARKER, MARKER]
    assert [p.name for p in complete_checkpoints(root)] == ["step_12"]


# ----------------------------------------------------------------------------------------------
# Signals, disk full, non-finite values, crash reports


def _popen(run: Path, steps: int, save_every: int, faults: str = "") -> subprocess.Popen:
    env = {**os.environ, "ECO_TRAIN_FAULTS": faults, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*eco_train_cmd(), *cmd_args(run, steps, save_every)], cwd=run.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 120) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return lines
        assert time.monotonic() < deadline, f"no {needle!r} within {timeout}s"
    raise AssertionError(f"process ended before printing {needle!r}:\n{''.join(lines[-30:])}")


def test_sigterm_saves_exactly_one_checkpoint_and_exits_0(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = _popen(run, steps=100_000, save_every=0)
    _wait_for_line(proc, f"step {5 + int.from_bytes(os.urandom(1)) % 10:>6d}/")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by SIGTERM" in out
    (ck,) = complete_checkpoints(run / "ck")
    assert verify_checkpoint(ck) is None
    stopped = [r for r in records(run) if r["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["step"] == int(ck.name.split("_")[1])


def test_disk_full_keeps_previous_checkpoint_and_training_goes_on(tmp_path):
    run = tmp_path / "run"
    r = train(run, 12, 4, faults="enospc@2")  # the save of step 8 fails
    assert "saving the checkpoint of step 8 failed" in r.stdout and "disk full" in r.stdout
    assert [p.name for p in complete_checkpoints(run / "ck")] == ["step_4", "step_12"]
    assert not [p for p in (run / "ck").iterdir() if p.name.startswith(".tmp")]
    failed = [x for x in records(run) if x["event"] == "checkpoint" and not x["ok"]]
    assert len(failed) == 1 and "No space left" in failed[0]["error"]
    # The final save failing ends the run with a crash report, the previous checkpoint intact.
    run2 = tmp_path / "run2"
    r = train(run2, 12, 4, faults="enospc@3", expect=1)
    assert "final checkpoint could not be written" in r.stderr
    assert [p.name for p in complete_checkpoints(run2 / "ck")] == ["step_4", "step_8"]
    assert all(verify_checkpoint(p) is None for p in complete_checkpoints(run2 / "ck"))


@pytest.mark.parametrize("fault", ["nan_loss@5", "inf_grad@5"])
def test_nonfinite_step_is_skipped_and_counted(tmp_path, fault):
    run = tmp_path / "run"
    r = train(run, 8, 0, faults=fault)
    assert "non-finite loss or gradient, step skipped" in r.stdout
    recs = records(run)
    assert [x["step"] for x in recs if x["event"] == "nonfinite_skip"] == [5]
    end = recs[-1]
    assert end["event"] == "end" and end["nonfinite_skips"] == 1 and end["step"] == 8
    assert all(x["loss"] == x["loss"] for x in recs if x["event"] == "step")  # no NaN was trained on


def test_repeated_nonfinite_rolls_back_then_gives_up(tmp_path):
    run = tmp_path / "run"
    r = train(run, 12, 4, "--max-nonfinite-skips", "2", faults="nan_loss@6x2")
    assert "rolled back to" in r.stdout
    assert [x["step"] for x in records(run) if x["event"] == "rollback"] == [4]
    assert records(run)[-1]["event"] == "end"
    run2 = tmp_path / "run2"
    r = train(run2, 12, 4, "--max-nonfinite-skips", "2", faults="nan_loss@6x50", expect=1)
    assert "a rollback did not help" in r.stderr
    (report,) = (run2 / "errors").glob("crash_step_*.json")
    assert json.loads(report.read_text())["exception_type"] == "NonFiniteError"


def test_exception_writes_a_full_crash_report(tmp_path):
    run = tmp_path / "run"
    r = train(run, 12, 2, faults="raise@5", expect=1)
    report_path = run / "errors" / "crash_step_4.json"
    assert f"crash report: {report_path}" in r.stderr
    report = json.loads(report_path.read_text())
    for key in ("exception_type", "message", "traceback", "step", "tokens", "latest_metrics", "features",
                "config", "versions", "device", "last_valid_checkpoint"):
        assert key in report, key
    assert report["exception_type"] == "RuntimeError" and "injected" in report["message"]
    assert report["step"] == 4 and report["last_valid_checkpoint"].endswith("step_4")
    assert report["features"]["feature_muon_enabled"] == 1 and report["config"]["loop"]["steps"] == 12
    assert report["latest_metrics"]["event"] in ("step", "checkpoint")


def test_out_of_memory_report_has_a_hint(tmp_path):
    run = tmp_path / "run"
    train(run, 12, 4, faults="oom@3", expect=1)
    report = json.loads((run / "errors" / "crash_step_2.json").read_text())
    assert report["exception_type"] == "OutOfMemoryError"
    assert "--batch-size" in report["out_of_memory"]["hint"] and "--grad-accum" in report["out_of_memory"]["hint"]


def test_async_checkpoint_equals_sync_and_logs_the_stall(tmp_path, reference):
    run = tmp_path / "run"
    train(run, 12, 4, "--async-checkpoint", "on")
    assert_same_weights(final_weights(run, 12), final_weights(reference, 12))
    for step in (4, 8, 12):
        assert verify_checkpoint(run / "ck" / f"step_{step}") is None
        ref_opt = load_file(str(reference / "ck" / f"step_{step}" / "optimizer.safetensors"))
        got_opt = load_file(str(run / "ck" / f"step_{step}" / "optimizer.safetensors"))
        assert_same_weights(got_opt, ref_opt)  # written while training went on, yet the state of that step
    saves = [x for x in records(run) if x["event"] == "checkpoint"]
    assert [x["step"] for x in saves] == [4, 8, 12] and all(x["ok"] and x["stall_s"] >= 0 for x in saves)


def test_second_ctrl_c_exits_at_once_without_a_valid_looking_partial(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = _popen(run, steps=100_000, save_every=0, faults="save_pause=30")
    _wait_for_line(proc, "step      3/")
    proc.send_signal(signal.SIGINT)
    _wait_for_line(proc, "[sigma] checkpoint_phase=tensors")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert time.monotonic() - t0 < 20, "the second Ctrl-C did not exit at once"
    assert proc.returncode == 130, out[-2000:]
    assert complete_checkpoints(run / "ck") == []
    path, _ = find_resumable(run / "ck", log=lambda _: None)
    assert path is None


# ----------------------------------------------------------------------------------------------
# The torture test (fast subset; scripts/torture_checkpoints.py runs the long form)


PHASES = ("tensors", "manifest", "rename", "marker", "retention")


@pytest.mark.slow
def test_sigkill_inside_every_save_phase_never_loses_the_run(tmp_path, reference):
    from scripts.torture_checkpoints import kill_in_phase

    for phase in PHASES:
        run = tmp_path / phase
        run.mkdir()
        kill_in_phase(run, cmd_args(run, 12, 4, "--max-checkpoints", "2"), phase)
        for p in (run / "ck").iterdir():
            if p.name.startswith("step_"):
                assert verify_checkpoint(p) is None or not (p / MARKER).exists(), f"{p} looks valid but is not"
        train(run, 12, 4, "--max-checkpoints", "2")
        assert_same_weights(final_weights(run, 12), final_weights(reference, 12))
    print(f"torture subset: {len(PHASES)} SIGKILLs, one inside each save phase: {', '.join(PHASES)}")


def test_flatten_roundtrip_keeps_int_keys_tuples_and_tensors():
    state = {"state": {0: {"exp_avg": torch.randn(3), "step": torch.tensor(4.0)}},
             "param_groups": [{"betas": (0.9, 0.95), "params": [0], "name": "c3o"}]}
    tensors: dict[str, torch.Tensor] = {}
    flat = json.loads(json.dumps(flatten_state(state, tensors)))
    back = unflatten_state(flat, tensors)
    assert list(back["state"]) == [0] and back["param_groups"][0]["betas"] == (0.9, 0.95)
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
