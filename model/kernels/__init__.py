"""Kernel selection: the one place that decides, per op, Triton kernel or PyTorch reference.

Every kernel lives in its own module here and exposes two callables with the same signature:
``reference`` (plain PyTorch, the ground truth, also what ``torch.compile`` fuses) and
``triton_impl`` (the Triton kernel). ``--kernels`` picks among them:

* ``torch``  — references only.
* ``triton`` — every Triton kernel; an error at start-up if Triton cannot run here.
* ``auto``   — on CUDA, the Triton kernels whose ``AUTO`` flag below is on, i.e. those that beat the
  compiled reference at the 124M and 350M shapes on the H100 (``scripts/bench_kernels.py``,
  PERFORMANCE.md); references everywhere else, and always on the CPU.

Triton runs on the CPU only under ``TRITON_INTERPRET=1`` (the CPU tests use that).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

# op name -> (module under model.kernels, on by default under --kernels auto on CUDA).
# Flip an AUTO flag only with a benchmark in PERFORMANCE.md that shows the kernel winning.
# H100 (PERFORMANCE.md): Newton-Schulz wins its kernel table, 1.16-1.36x. Linear + CE ties there in
# isolation (1.01-1.02x) but wins in the training step, timed interleaved with the compiled reference
# in one process (scripts/bench_train.py sigma vs sigma_flip): 125.2 vs 126.2 ms at 124m, 330.8 vs
# 332.1 ms at 350m, and the loss takes ~4 GB less memory. RMSNorm (0.48-1.33x) and the BitNet
# quantiser (0.44-1.25x) lose to what Inductor fuses at most shapes, so neither is a default. QK norm +
# RoPE (session 9) wins in the step, interleaved against the compiled reference: 123.7 -> 121.7 ms at
# 124m, 327.3 -> 325.6 ms at 350m; its isolated fwd+bwd row is host-bound (PERFORMANCE.md).
KERNELS: dict[str, tuple[str, bool]] = {
    "newton_schulz": ("newton_schulz", True),
    "rms_norm": ("rmsnorm", False),
    "linear_ce": ("linear_ce", True),
    "bitnet_quant": ("bitnet", False),
    "qk_norm_rope": ("qk_norm_rope", True),
}
KERNEL_MODES = ("auto", "triton", "torch")


def triton_status(device: torch.device) -> tuple[bool, str]:
    """``(usable, reason)``: whether Triton kernels can run on ``device`` in this process."""
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising something else
        return False, f"triton is not importable ({e!r})"
    if device.type == "cuda":
        return True, "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "TRITON_INTERPRET=1"
    return False, f"Triton kernels need a CUDA device (or TRITON_INTERPRET=1); this run is on {device.type}"


def resolve(mode: str, device: torch.device, *, compile: bool = False) -> dict[str, str]:
    """Map every op in :data:`KERNELS` to ``"triton"`` or ``"torch"`` for ``--kernels mode``.

    ``compile``: whether the model will run under ``torch.compile``. Raises ``ValueError`` for an
    unknown mode and ``RuntimeError`` for ``triton`` where Triton cannot run, or runs interpreted
    under ``torch.compile`` (which cannot trace interpreted kernels), naming the reason and the fix.
    """
    if mode not in KERNEL_MODES:
        raise ValueError(f"--kernels must be one of {KERNEL_MODES}; got {mode!r}")
    if mode == "torch":
        return dict.fromkeys(KERNELS, "torch")
    usable, reason = triton_status(device)
    if mode == "triton":
        if not usable:
            raise RuntimeError(f"--kernels triton: {reason}. Use --kernels auto or --kernels torch.")
        if compile and device.type != "cuda":
            raise RuntimeError(
                "--kernels triton on the CPU runs the kernels in Triton's interpreter, which torch.compile "
                "cannot trace. Use --compile off with it, or --kernels auto / torch."
            )
        return dict.fromkeys(KERNELS, "triton")
    on_gpu = usable and device.type == "cuda"
    return {op: "triton" if on_gpu and auto else "torch" for op, (_, auto) in KERNELS.items()}


def kernel(op: str, choice: str) -> Callable:
    """The callable for ``op`` (a key of :data:`KERNELS`) under ``choice`` (``"triton"``/``"torch"``)."""
    module_name, _ = KERNELS[op]
    module = importlib.import_module(f"model.kernels.{module_name}")
    return module.triton_impl if choice == "triton" else module.reference


def ns_fn(choices: dict[str, str]) -> Callable | None:
    """Muon's orthogonalization kernel: the Triton one, or None for the optimizer's own reference."""
    return kernel("newton_schulz", "triton") if choices["newton_schulz"] == "triton" else None


FP8_LM_HEAD_MODES = ("auto", "on", "off")


def fp8_lm_head_problem(model: torch.nn.Module, choices: dict[str, str]) -> str | None:
    """Why this model cannot run the FP8 LM head with these kernel choices (the message names the fix), or None."""
    from model.fp8 import FP8_DIM_MULTIPLE, fp8_supported

    device = next(model.parameters()).device
    if choices["linear_ce"] != "triton":
        return ("--fp8-lm-head on: the FP8 LM head is part of the fused linear + CE kernel, which this run does "
                f"not use (linear_ce={choices['linear_ce']}). Use --kernels auto on a GPU, or --fp8-lm-head off.")
    if device.type == "cuda" and not fp8_supported(device):
        return (f"--fp8-lm-head on needs FP8 tensor cores (compute capability 8.9 or later); "
                f"{torch.cuda.get_device_name(device)} has {torch.cuda.get_device_capability(device)}. "
                "Use --fp8-lm-head off.")
    V, D = model.lm_head.weight.shape
    if V % FP8_DIM_MULTIPLE or D % FP8_DIM_MULTIPLE:
        return (f"--fp8-lm-head on: FP8 matmuls need the vocabulary size and d_model to be multiples of "
                f"{FP8_DIM_MULTIPLE}; this model has {V} and {D}. Use --fp8-lm-head off.")
    return None


def fp8_lm_head_wanted(mode: str, model: torch.nn.Module, choices: dict[str, str]) -> bool:
    """Whether ``--fp8-lm-head MODE`` runs the FP8 LM head for this model and these kernel choices.

    ``on`` and ``off`` as given (:func:`apply_to_model` refuses ``on`` where it cannot run). ``auto`` turns it
    on wherever it runs compiled on FP8 tensor cores: the fused linear + CE chosen, a CUDA GPU of compute
    capability 8.9 or later, vocabulary and d_model multiples of 16. It stays off on the CPU, where the kernel
    only runs in Triton's interpreter. PERFORMANCE.md, "The FP8 LM head", has the speed and loss evidence.
    """
    if mode not in FP8_LM_HEAD_MODES:
        raise ValueError(f"--fp8-lm-head must be one of {FP8_LM_HEAD_MODES}; got {mode!r}")
    if mode != "auto":
        return mode == "on"
    return next(model.parameters()).device.type == "cuda" and fp8_lm_head_problem(model, choices) is None


FUSED_MLP_MODES = ("auto", "on", "off")


def fused_mlp_wanted(mode: str, model: torch.nn.Module, cache_root: Path | None = None,
                     micro_batch: tuple[int, int] | None = None,
                     announce: Callable[[str], None] | None = None) -> tuple[bool, str | None]:
    """Whether ``--fused-mlp MODE`` runs this model's MLPs through quack's fused GEMMs, and why not if not.

    ``off``: never. ``on``: wherever it can run (a CUDA GPU of compute capability 9.0+, bf16 weights, no
    BitNet, quack importable) and passes its start-up check; raises ``RuntimeError`` naming the fix otherwise.
    ``auto``: on where it was measured to win (the H100, compute capability 9.0, d_model 768 and up) under
    the same conditions; off elsewhere, and off with the reason returned when the start-up check fails (the
    caller reports it). The reason is None when ``auto`` is off for an ordinary cause (the CPU, another GPU,
    a narrow model, BitNet), and says what failed when quack does not import or fails its check where
    ``auto`` would have run it.
    ``cache_root``: where quack keeps its compiled kernels and tuned configs (the trainer: next to the
    checkpoints; None: ``QUACK_CACHE_DIR`` or quack's own folder), set just before quack is first imported
    and seeded with the configs shipped for this GPU model (:func:`model.kernels.swiglu_mlp.use_cache_dir`).
    ``micro_batch``: ``(rows, seq_len)`` of a training micro-batch; the start-up check then runs that shape's
    GEMMs, which training reuses (:func:`model.kernels.swiglu_mlp.startup_check`), else a small shape.
    ``announce``: told before that check, which can take minutes at a first start (the trainer's console).
    PERFORMANCE.md, "SwiGLU inside the matmuls through quack", has the evidence.
    """
    if mode not in FUSED_MLP_MODES:
        raise ValueError(f"--fused-mlp must be one of {FUSED_MLP_MODES}; got {mode!r}")
    if mode == "off":
        return False, None
    from model.kernels import swiglu_mlp

    device = next(model.parameters()).device
    if not _worth_checking(mode, swiglu_mlp, model, lambda cap: swiglu_mlp.auto_applies(cap, model.cfg.d_model)):
        return False, None
    swiglu_mlp.use_cache_dir(cache_root, device)
    shape = None if micro_batch is None else (*micro_batch, model.cfg.d_model, model.cfg.d_ff)
    if announce is not None and shape is not None:
        announce(f"fused MLP: checking quack's GEMMs at the training shape ({shape[0]} x {shape[1]} tokens) against "
                 "the reference; a first start compiles them, and tunes them first (minutes, once) where no configs "
                 f"for this shape ship for {swiglu_mlp.gpu_folder_name(device)}")
    return _passes_checks("--fused-mlp", mode, swiglu_mlp, lambda: swiglu_mlp.startup_check(device, shape=shape))


def _worth_checking(mode: str, module, model: torch.nn.Module,
                    auto_applies: Callable[[tuple[int, int]], bool]) -> bool:
    """Whether a GPU kernel module (``auto_applies`` judges a compute capability) goes on to its start-up checks
    under ``mode`` ``auto`` or ``on``: not off the GPU or where ``auto`` does not apply, nor where the model does
    not suit it (``module.problem``), which ``auto`` leaves quietly and ``on`` raises as ``RuntimeError``."""
    device = next(model.parameters()).device
    if mode == "auto" and (device.type != "cuda" or not auto_applies(torch.cuda.get_device_capability(device))):
        return False
    problem = module.problem(model)
    if problem is not None:
        if mode == "auto":
            return False
        raise RuntimeError(problem)
    return True


def cute_dsl_import_problem(module: str, needs: str, flag: str) -> str | None:
    """Why ``module`` of a CuTe-DSL kernel library cannot be imported here, or None. ``needs`` says what for and
    which package (``"the fused MLP needs quack-kernels"``); the message names the fix, ``flag`` off among it."""
    try:
        importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken compiler install raising something else
        return (f"{needs} and nvidia-cutlass-dsl (in the lock, Linux x86-64 only), which do not import here: "
                f"{type(e).__name__}: {e}. Reinstall with scripts/setup_env.sh, or use {flag} off.")
    return None


def relative_error_problem(names: tuple[str, ...], got: list[torch.Tensor], want: list[torch.Tensor],
                           tolerance: float) -> str | None:
    """The first of ``got`` (named by ``names``) whose relative error ``||got - want|| / ||want||`` against its
    fp32 ``want`` exceeds ``tolerance``, as ``"<name> relative error <err> > <tolerance>"``; None if none does.
    A NaN fails too. The start-up checks of the CuTe-DSL kernels share it."""
    for name, g, w in zip(names, got, want, strict=True):
        err = ((g.float() - w).norm() / w.norm()).item()
        if not err <= tolerance:
            return f"{name} relative error {err:.3g} > {tolerance}"
    return None


def _passes_checks(flag: str, mode: str, module, check: Callable[[], str | None]) -> tuple[bool, str | None]:
    """``(True, None)`` where ``module`` imports and passes ``check``; else off with the reason under ``auto``
    (it should have run here: the caller reports why it does not), or ``RuntimeError`` under ``on``."""
    problem = module.import_problem() or check()
    if problem is not None:
        if mode == "auto":
            return False, f"{flag} auto: left off, {problem}"
        raise RuntimeError(f"{flag} on: {problem}")
    return True, None


FLASH_ATTENTION_MODES = ("auto", "on", "off")


def flash_attention_wanted(mode: str, model: torch.nn.Module, cache_root: Path | None = None,
                           seq_len: int | None = None,
                           announce: Callable[[str], None] | None = None) -> tuple[bool, str | None]:
    """Whether ``--flash-attention MODE`` runs this model's attention through FlashAttention 4, and why not if not.

    ``off``: never (SDPA: cuDNN on the H100). ``on``: wherever it can run (a CUDA GPU of compute capability 9.0+,
    16-bit weights, a head width it takes, ``flash_attn.cute`` importable) and passes its start-up check; raises
    ``RuntimeError`` naming the fix otherwise. ``auto``: on where it was measured to win (compute capability 9.0)
    under the same conditions; off elsewhere, and off with the reason returned when it fails to import or fails
    its check where ``auto`` would have run it (the caller reports it).
    ``cache_root``: where FlashAttention keeps its compiled kernels (the trainer: next to the checkpoints; None:
    its own folder), set before it is first imported (:func:`model.kernels.flash_attention.use_cache_dir`).
    ``seq_len``: the training length; the start-up check then compiles the variants training runs.
    ``announce``: told before that check (the trainer's console).
    PERFORMANCE.md, "Attention", has the evidence.
    """
    if mode not in FLASH_ATTENTION_MODES:
        raise ValueError(f"--flash-attention must be one of {FLASH_ATTENTION_MODES}; got {mode!r}")
    if mode == "off":
        return False, None
    from model.kernels import flash_attention

    if not _worth_checking(mode, flash_attention, model, flash_attention.auto_applies):
        return False, None
    weight = next(model.parameters())
    device = weight.device
    flash_attention.use_cache_dir(cache_root, device)
    cfg = model.cfg
    shape = (seq_len or 256, cfg.n_head, cfg.n_kv_head, cfg.head_dim)
    if announce is not None:
        announce(f"flash attention: checking FlashAttention 4 at the training length ({shape[0]} tokens) against "
                 "the reference; a first start compiles its kernels (seconds)")
    return _passes_checks("--flash-attention", mode, flash_attention,
                          lambda: flash_attention.startup_check(device, shape, dtype=weight.dtype))


def apply_to_model(model: torch.nn.Module, choices: dict[str, str], *, fp8_lm_head: bool = False,
                   fused_mlp: bool = False, flash_attention: bool = False) -> None:
    """Install the kernels chosen for the model (RMSNorm, linear + CE, BitNet, QK norm + RoPE, the MLP, attention).

    Ops left on ``"torch"`` keep the model's built-in references, so nothing is imported for them.
    ``fp8_lm_head``: the fused linear + CE with FP8 matmuls (``--fp8-lm-head``; :func:`fp8_lm_head_wanted`
    decides it). It needs that kernel and, on CUDA, an FP8 GPU; the CPU runs it (slowly, under
    ``TRITON_INTERPRET=1``) for the tests. Raises ``RuntimeError`` naming the fix otherwise.
    ``fused_mlp``: every block's MLP through quack's fused GEMMs (:func:`fused_mlp_wanted` decides it).
    ``flash_attention``: every block's attention through FlashAttention 4 (:func:`flash_attention_wanted`).
    """
    model_ops = ("rms_norm", "linear_ce", "bitnet_quant", "qk_norm_rope")
    chosen = {op: kernel(op, "triton") for op in model_ops if choices[op] == "triton"}
    if fp8_lm_head:
        problem = fp8_lm_head_problem(model, choices)
        if problem:
            raise RuntimeError(problem)
        chosen["linear_ce"] = importlib.import_module("model.kernels.linear_ce").triton_impl_fp8_grad_w
    if fused_mlp:
        chosen["swiglu_mlp"] = importlib.import_module("model.kernels.swiglu_mlp").quack_mlp(tuned=True)
    if flash_attention:
        chosen["attention"] = importlib.import_module("model.kernels.flash_attention").fa4_attention
    model.use_kernels(**chosen)
