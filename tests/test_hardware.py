"""CPU tests of the hardware profile (training/hardware.py): what it refuses, with the fix."""

import sys

import pytest

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
