"""metrics.jsonl schema, bottleneck diagnosis, resume/crash records, W&B mirror and `eco_train report`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from entry import run_eco_train

from training.metrics import STAGES, ResourceSampler, bottleneck

TINY = [
    "--device", "cpu", "--model-preset", "tiny", "--seq-len", "32", "--batch-size", "4",
    "--vocab-size", "512", "--tokenizer-train-chars", "60000", "--warmup-steps", "2",
    "--log-every", "2", "--eval-every", "4", "--eval-batches", "1", "--sample-every", "0",
    "--bootstrap-seed-batches", "2", "--seed", "3",
]

NUMBER = (int, float)
STEP_SCHEMA: dict[str, tuple] = {
    "event": (str,), "step": (int,), "tokens": (int,), "time": NUMBER, "run_id": (str,),
    "loss": NUMBER, "loss_ema": NUMBER, "lr": NUMBER, "grad_norm": NUMBER,
    "core_step_time_s": NUMBER, "effective_step_time_s": NUMBER, "core_tokens_per_s": NUMBER,
    "core_tokens_per_s_ema": NUMBER, "effective_tokens_per_s": NUMBER, "effective_tokens_per_s_ema": NUMBER,
    "perf_bottleneck_stage_id": (int,), "perf_bottleneck_stage": (str,), "perf_bottleneck_share": NUMBER,
    "cpu_util_percent": NUMBER, "ram_used_percent": NUMBER, "nonfinite_skips": (int,),
    **{f"phase_{s}_s": NUMBER for s in STAGES},
}
# No GPU here: these must be present and null, never a made-up number.
NULL_ON_CPU = ("gpu_util_percent", "gpu_mem_alloc_gb", "gpu_mem_reserved_gb", "gpu_power_w", "gpu_sm_clock_mhz",
               "mfu")
FEATURES = ("muon", "c3o", "compile", "bootstrap_seed", "checkpoint", "nonfinite_guard", "eval", "samples")
STARTUP_SCHEMA = ("startup_init_s", "time_to_first_batch_s", "time_to_first_step_s", "checkpoint_resume_step",
                  "checkpoint_quarantine_count", "instant_inversion_iters", "instant_inversion_rel_residual",
                  "bitnet_1_58_active", "fp8_lm_head_active", "fused_mlp_active", "flash_attention_active",
                  "trl_grpo_available", "run_id")


def train(run: Path, *extra: str, faults: str = "", expect: int = 0, steps: int = 8):
    env = {**os.environ, "ECO_TRAIN_FAULTS": faults}
    r = run_eco_train(*TINY, "--steps", str(steps), "--output-dir", str(run), "--checkpoint-dir", str(run / "ck"),
                      *extra, cwd=run.parent, env=env)
    assert r.returncode == expect, r.stdout[-2000:] + r.stderr[-3000:]
    return r, [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_step_record_has_the_full_schema(tmp_path):
    r, recs = train(tmp_path / "run")
    steps = [x for x in recs if x["event"] == "step"]
    assert [x["step"] for x in steps] == [2, 4, 6, 8]
    for rec in steps:
        for key, types in STEP_SCHEMA.items():
            assert isinstance(rec.get(key), types), (key, rec.get(key))
        for key in NULL_ON_CPU:
            assert key in rec and rec[key] is None, key
        for name in FEATURES:
            assert rec[f"feature_{name}_enabled"] in (0, 1)
            assert isinstance(rec[f"feature_{name}_effective_calls"], int)
        assert 0 <= rec["perf_bottleneck_share"] <= 1
        assert STAGES[rec["perf_bottleneck_stage_id"]] == rec["perf_bottleneck_stage"]
    assert steps[-1]["feature_muon_effective_calls"] == 8 and steps[-1]["feature_eval_effective_calls"] >= 2
    (startup,) = [x for x in recs if x["event"] == "startup"]
    for key in STARTUP_SCHEMA:
        assert key in startup, key
    assert startup["fp8_lm_head_active"] == 0  # --fp8-lm-head auto: off on the CPU
    assert len({x["run_id"] for x in recs}) == 1
    assert "eta=" in r.stdout and "bottleneck=" in r.stdout


def test_minimal_level_keeps_the_core_and_drops_the_rest(tmp_path):
    _, recs = train(tmp_path / "run", "--metrics-level", "minimal")
    step = [x for x in recs if x["event"] == "step"][-1]
    assert step["core_tokens_per_s"] > 0 and step["loss"] > 0
    assert "phase_data_s" not in step and "cpu_util_percent" not in step
    assert step["perf_bottleneck_stage"] is None


@pytest.mark.parametrize(("fault", "stage"), [("slow_data=1.0", "data"), ("slow_opt=1.0", "optimizer")])
def test_bottleneck_names_the_slow_stage(tmp_path, fault, stage):
    _, recs = train(tmp_path / "run", "--eval-every", "0", faults=fault, steps=4)
    for rec in [x for x in recs if x["event"] == "step"]:
        assert rec["perf_bottleneck_stage"] == stage and rec["perf_bottleneck_share"] > 0.5, rec


def test_crashed_run_parses_and_resume_is_marked(tmp_path):
    run = tmp_path / "run"
    train(run, "--save-every", "2", faults="raise@5", expect=1)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)
    _, recs = train(run, "--save-every", "2")
    (resume,) = [x for x in recs if x["event"] == "resume"]
    assert resume["step"] == 4 and resume["checkpoint"].endswith("step_4")
    assert len({x["run_id"] for x in recs}) == 1, "a resumed run keeps its run_id"


def test_report_writes_plots_and_names_the_bottleneck(tmp_path):
    import matplotlib.image

    run = tmp_path / "run"
    train(run, "--eval-every", "0", faults="slow_data=1.0", steps=4)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"event": "step", "cut mid-li')  # what a crash in the middle of a write leaves
    r = run_eco_train("report", str(run), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = run / "report"
    for name in ("loss", "throughput", "mfu", "phases", "gpu_memory", "features"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(png).shape[2] in (3, 4)
    page = (out / "report.html").read_text()
    assert "Bottleneck: data" in page and "1 unreadable line(s) skipped" in page
    r = run_eco_train("report", str(tmp_path / "nope"), cwd=tmp_path)
    assert r.returncode == 2 and "holds no metrics.jsonl" in r.stderr


def test_wandb_offline_leaves_a_run_folder(tmp_path):
    run = tmp_path / "run"
    env_extra = {"WANDB_MODE": "offline", "WANDB_DISABLE_GIT": "true"}
    os.environ.update(env_extra)
    try:
        _, recs = train(run, "--wandb", "offline")
    finally:
        for k in env_extra:
            os.environ.pop(k, None)
    assert recs[-1]["event"] == "end"
    assert list((run / "wandb").glob("offline-run-*")), "no W&B offline run folder"


@pytest.mark.parametrize("when", ["wandb@0", "wandb@4"])
def test_wandb_failure_never_stops_training(tmp_path, when):
    r, recs = train(tmp_path / "run", "--wandb", "offline", faults=when)
    assert recs[-1]["event"] == "end"
    assert "WARNING" in r.stdout and "W&B" in r.stdout or "WandbSink failed" in r.stdout


def test_bottleneck_unit():
    stage_s = {"data": 0.1, "forward": 0.6, "backward": 0.2}
    assert bottleneck(stage_s, 1.0) == (STAGES.index("forward"), "forward", 0.6)
    assert bottleneck({}, 1.0)[1] == "other"
    assert bottleneck({}, 0.0) == (None, None, None)


class FakeNVML:
    """Stands in for the NVML readings torch.cuda exposes (no GPU here): scripted values, or a raise."""

    def __init__(self, monkeypatch, *, clocks: list[float] | None) -> None:
        self.util = iter([10.0, 50.0, 70.0])  # the first answers the sampler's probe
        self.power_mw, self.clocks = iter([600_000.0, 700_000.0]), clocks
        monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: next(self.util))
        monkeypatch.setattr(torch.cuda, "power_draw", lambda device=None: next(self.power_mw))
        monkeypatch.setattr(torch.cuda, "clock_rate", self.clock_rate)

    def clock_rate(self, device=None) -> float:
        if self.clocks is None:
            raise RuntimeError("NVML: Not Supported")  # what some virtualised GPUs answer
        return self.clocks.pop(0)


def test_resource_sampler_averages_gpu_readings_including_the_clock(monkeypatch):
    FakeNVML(monkeypatch, clocks=[1635.0, 1665.0])
    sampler = ResourceSampler(torch.device("cuda"), enabled=False)  # no thread: samples taken by hand
    sampler._samples = [sampler._sample(), sampler._sample()]
    reading = sampler.read()
    assert reading["gpu_util_percent"] == 60.0  # (50 + 70) / 2
    assert reading["gpu_power_w"] == 650.0
    assert reading["gpu_sm_clock_mhz"] == 1650.0


def test_resource_sampler_without_clocks_keeps_the_other_readings(monkeypatch):
    FakeNVML(monkeypatch, clocks=None)
    sampler = ResourceSampler(torch.device("cuda"), enabled=False)
    sampler._samples = [sampler._sample(), sampler._sample()]
    reading = sampler.read()
    assert reading["gpu_sm_clock_mhz"] is None  # null, never invented
    assert reading["gpu_util_percent"] == 60.0 and reading["gpu_power_w"] == 650.0
    assert sampler._nvml  # a missing clock does not turn the other readings off
