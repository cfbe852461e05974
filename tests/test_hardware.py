"""CPU tests of the hardware profile (training/hardware.py): what it refuses, with the fix."""

import sys

import pytest
import torch

from training.hardware import resolve_profile

CPU_FLAGS = dict(device="cpu", profile="auto", c3o_state_dtype="auto")


def test_compile_on_the_cpu_is_allowed_from_source() -> None:
    assert resolve_profile(compile_mode="on", **CPU_FLAGS).compile
    assert not resolve_profile(compile_mode="auto", **CPU_FLAGS).compile


def test_frozen_binary_refuses_compile_on_the_cpu_with_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    with pytest.raises(RuntimeError, match="frozen binary.*fix: use --compile auto or off"):
        resolve_profile(compile_mode="on", **CPU_FLAGS)
    assert not resolve_profile(compile_mode="auto", **CPU_FLAGS).compile  # the default still runs


def test_newton_schulz_runs_in_fp32_on_the_cpu() -> None:
    """Most CPUs emulate bf16 matmuls (9x slower than fp32 on an AVX2 EPYC), so the CPU profile
    orthogonalizes in fp32; CUDA keeps bf16 (tests/test_gpu.py)."""
    hw = resolve_profile(compile_mode="auto", **CPU_FLAGS)
    assert hw.ns_dtype == torch.float32 and hw.startup_fields()["ns_dtype"] == "float32"
