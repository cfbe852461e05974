"""Schedules are pure functions of the step: check warmup, peak, end values and shapes."""

from __future__ import annotations

import pytest

from training.schedules import lr_multiplier, muon_momentum

TOTAL, WARMUP = 1000, 100


def _curve(schedule: str, **kw: float) -> list[float]:
    return [
        lr_multiplier(s, total_steps=TOTAL, warmup_steps=WARMUP, schedule=schedule, **kw)
        for s in range(TOTAL + 5)
    ]


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_warmup_peak_and_end(schedule: str) -> None:
    lrs = _curve(schedule, min_ratio=0.1)
    assert lrs[0] == pytest.approx(1 / WARMUP)  # starts near 0, but the first step moves
    assert lrs[WARMUP - 1] == 1.0 and lrs[WARMUP] == 1.0  # peak
    assert all(b > a for a, b in zip(lrs[:WARMUP], lrs[1:WARMUP], strict=False))  # warmup increases
    assert lrs[TOTAL - 1] == pytest.approx(0.1, abs=0.01)
    assert all(v == 0.1 for v in lrs[TOTAL:])  # past the end: min_ratio
    assert all(0 < v <= 1.0 for v in lrs) and all(v >= 0.1 for v in lrs[WARMUP:])
    after = lrs[WARMUP:]
    assert all(b <= a for a, b in zip(after, after[1:], strict=False))  # never increases after warmup


def test_cosine_midpoint() -> None:
    mid = WARMUP + (TOTAL - WARMUP) // 2
    assert lr_multiplier(
        mid, total_steps=TOTAL, warmup_steps=WARMUP, schedule="cosine", min_ratio=0.0
    ) == pytest.approx(0.5)


def test_wsd_stable_then_linear_decay() -> None:
    lrs = _curve("wsd", min_ratio=0.0, decay_frac=0.2)
    decay_start = TOTAL - 200
    assert all(v == 1.0 for v in lrs[WARMUP : decay_start + 1])  # stable region
    assert lrs[decay_start + 100] == pytest.approx(0.5)  # linear: halfway down at half the decay
    diffs = [a - b for a, b in zip(lrs[decay_start:TOTAL], lrs[decay_start + 1 : TOTAL], strict=False)]
    assert max(diffs) == pytest.approx(min(diffs))


def test_no_warmup() -> None:
    assert lr_multiplier(0, total_steps=10, warmup_steps=0, schedule="cosine") == 1.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier(0, total_steps=10, warmup_steps=0, schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_multiplier(0, total_steps=10, warmup_steps=11, schedule="cosine")


def test_muon_momentum_warmup() -> None:
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == pytest.approx(0.95)
    assert muon_momentum(10_000) == pytest.approx(0.95)
    assert muon_momentum(5, warmup_steps=0) == 0.95
    values = [muon_momentum(s) for s in range(400)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def test_schedules_are_pure() -> None:
    kw = dict(total_steps=TOTAL, warmup_steps=WARMUP, schedule="cosine")
    first = [lr_multiplier(s, **kw) for s in range(0, TOTAL, 37)]
    _ = _curve("wsd")  # interleaved calls with other arguments change nothing
    assert [lr_multiplier(s, **kw) for s in range(0, TOTAL, 37)] == first
    assert [muon_momentum(s) for s in range(0, 400, 7)] == [muon_momentum(s) for s in range(0, 400, 7)]
