"""CPU tests of the one place that picks Triton kernel or PyTorch reference (model/kernels/__init__.py)."""

import pytest
import torch

from model import kernels

CPU = torch.device("cpu")


def test_torch_and_auto_on_the_cpu_are_references_everywhere(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # even where Triton could run interpreted
    for mode in ("torch", "auto"):
        assert kernels.resolve(mode, CPU, compile=True) == dict.fromkeys(kernels.KERNELS, "torch")


def test_triton_on_the_cpu_needs_the_interpreter(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="need a CUDA device.*Use --kernels auto"):
        kernels.resolve("triton", CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.resolve("triton", CPU) == dict.fromkeys(kernels.KERNELS, "triton")


def test_interpreted_triton_under_compile_is_refused_with_the_fix(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="torch.compile cannot trace.*--compile off"):
        kernels.resolve("triton", CPU, compile=True)


def test_unknown_mode_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="--kernels must be one of"):
        kernels.resolve("fast", CPU)


def test_auto_defaults_follow_the_h100_measurements() -> None:
    """Newton-Schulz (kernel table), linear + CE and QK norm + RoPE (in the training step) beat their
    compiled references at both preset sizes (PERFORMANCE.md); RMSNorm and the BitNet quantiser do not."""
    assert {op for op, (_, auto) in kernels.KERNELS.items() if auto} == {"newton_schulz", "linear_ce", "qk_norm_rope"}
