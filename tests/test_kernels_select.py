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


def test_relative_error_problem_names_the_first_output_off_and_fails_nan() -> None:
    """The comparison both CuTe-DSL start-up checks end with: bf16 results against their fp32 reference."""
    want = [torch.ones(4), torch.full((4,), 2.0)]
    close = [w.to(torch.bfloat16) for w in want]
    assert kernels.relative_error_problem(("out", "dx"), close, want, 1e-2) is None
    far = [close[0], (want[1] * 1.125).to(torch.bfloat16)]  # exact in bf16
    assert kernels.relative_error_problem(("out", "dx"), far, want, 1e-2) == "dx relative error 0.125 > 0.01"
    nan = [torch.tensor([float("nan"), 1.0, 1.0, 1.0]), close[1]]
    assert kernels.relative_error_problem(("out", "dx"), nan, want, 1e-2) == "out relative error nan > 0.01"
