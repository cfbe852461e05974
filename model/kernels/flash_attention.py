"""Causal attention through FlashAttention 4's Hopper kernels (``--flash-attention``).

``reference`` is :func:`model.decoder.causal_attention_reference`: ``F.scaled_dot_product_attention``,
which picks cuDNN's kernels on the H100 and H200. ``fa4_attention`` runs the same maths in FlashAttention 4
(``flash-attn-4``, the ``flash_attn.cute`` package: Tri Dao's attention in NVIDIA's CuTe DSL, the compiler
quack uses too), on the (B, T, heads, Hd) tensors the projections write. Its backward is where it wins: at
the 124m shapes on an H200, forward + backward take 1.47 ms a layer against 1.67 for SDPA's pick, cuDNN
(PERFORMANCE.md, "Attention").

The two kernels are a ``torch.library.custom_op`` pair (forward, and backward registered as its autograd
formula), so ``torch.compile(fullgraph=True)`` keeps them as opaque calls with known output shapes.
FlashAttention compiles each kernel variant with the CuTe-DSL compiler at its first call (seconds) and keeps
the result in its own disk cache, which :func:`use_cache_dir` puts next to the checkpoints.
:func:`startup_check` compiles and runs the training shape's variant against an fp32 evaluation of the
reference before a run relies on it.

Shape suffix legend: B batch, T sequence, H query heads, K key/value heads, Hd head width.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch

from model.decoder import causal_attention_reference

reference = causal_attention_reference

# At each kernel's first compile the CuTe DSL warns that FlashAttention's ``aux_data`` argument (None in these
# calls) "cannot be converted to a JitArgument": harmless, and printed twice a run, forward and backward
# (flash-attn-4 4.0.0b36, cutlass-dsl 4.8.1). Only that message is silenced.
AUX_DATA_WARNING = r"Argument aux_data \(position \d+\) cannot be converted to a JitArgument"
warnings.filterwarnings("ignore", message=AUX_DATA_WARNING, category=UserWarning)

MIN_CAPABILITY = (9, 0)  # FlashAttention 4's kernels are Hopper's (sm_90) and Blackwell's
AUTO_CAPABILITIES = ((9, 0),)  # where --flash-attention auto turns it on: measured there (H100, H200)
HEAD_DIMS = range(8, 257, 8)  # its Hopper kernels: 8 to 256 wide, in steps of 16 bytes of bf16
CACHE_ENABLED_ENV = "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"
CACHE_DIR_ENV = "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"


@torch.library.custom_op("eco_train::fa4_attention", mutates_args=(), device_types="cuda")
def _fa4_forward(q_BTHHd: torch.Tensor, k_BTKHd: torch.Tensor, v_BTKHd: torch.Tensor) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """Causal attention and each query row's log-sum-exp of its scores, (B, H, T) in fp32 (for the backward)."""
    from flash_attn.cute.interface import _flash_attn_fwd

    out, lse, *_ = _flash_attn_fwd(q_BTHHd.contiguous(), k_BTKHd.contiguous(), v_BTKHd.contiguous(), causal=True,
                                   return_lse=True)
    return out.contiguous(), lse.contiguous()


@_fa4_forward.register_fake
def _(q_BTHHd, k_BTKHd, v_BTKHd):
    B, T, H, _ = q_BTHHd.shape
    return q_BTHHd.new_empty(q_BTHHd.shape), q_BTHHd.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op("eco_train::fa4_attention_backward", mutates_args=(), device_types="cuda")
def _fa4_backward(dy_BTHHd: torch.Tensor, q_BTHHd: torch.Tensor, k_BTKHd: torch.Tensor, v_BTKHd: torch.Tensor,
                  y_BTHHd: torch.Tensor, lse_BHT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from flash_attn.cute.interface import _flash_attn_bwd

    dq, dk, dv = _flash_attn_bwd(q_BTHHd.contiguous(), k_BTKHd.contiguous(), v_BTKHd.contiguous(),
                                 y_BTHHd.contiguous(), dy_BTHHd.contiguous(), lse_BHT.contiguous(), causal=True)[:3]
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@_fa4_backward.register_fake
def _(dy_BTHHd, q_BTHHd, k_BTKHd, v_BTKHd, y_BTHHd, lse_BHT):
    return q_BTHHd.new_empty(q_BTHHd.shape), k_BTKHd.new_empty(k_BTKHd.shape), v_BTKHd.new_empty(v_BTKHd.shape)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, *output)


def _backward(ctx, dy_BTHHd: torch.Tensor, _dlse: torch.Tensor | None):
    q, k, v, y, lse = ctx.saved_tensors
    return _fa4_backward(dy_BTHHd, q, k, v, y, lse)


_fa4_forward.register_autograd(_backward, setup_context=_setup_context)


def fa4_attention(q_BTHHd: torch.Tensor, k_BTKHd: torch.Tensor, v_BTKHd: torch.Tensor) -> torch.Tensor:
    """:data:`reference`'s signature through FlashAttention 4 for training steps (grad enabled).

    Evaluation and sampling run the reference: a sampled prefix shorter than one 128-token tile is a kernel
    variant of its own, which would compile at the first sample.
    """
    if not torch.is_grad_enabled():
        return reference(q_BTHHd, k_BTKHd, v_BTKHd)
    return _fa4_forward(q_BTHHd, k_BTKHd, v_BTKHd)[0]


def use_cache_dir(root: Path | None, device: torch.device) -> Path | None:
    """Keep FlashAttention's compiled kernels under ``root/<GPU name>``; returns the folder, or None for its own.

    Its disk cache is off unless ``FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1``; this turns it on. A
    ``FLASH_ATTENTION_CUTE_DSL_CACHE_DIR`` the user set wins over ``root``; with neither, FlashAttention's own
    default folder (under the system's temporary folder) is used. It reads both when it is imported, so a
    module already imported gets them set on it as well.
    """
    from model.kernels.swiglu_mlp import gpu_folder_name

    os.environ.setdefault(CACHE_ENABLED_ENV, "1")
    path = None
    if os.environ.get(CACHE_DIR_ENV):
        path = Path(os.environ[CACHE_DIR_ENV])
    elif root is not None:
        path = root / gpu_folder_name(device)
        os.environ[CACHE_DIR_ENV] = str(path)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    cache_utils = sys.modules.get("flash_attn.cute.cache_utils")
    if cache_utils is not None:
        cache_utils.CUTE_DSL_CACHE_ENABLED = os.environ[CACHE_ENABLED_ENV] == "1"
        cache_utils.CUTE_DSL_CACHE_DIR = os.environ.get(CACHE_DIR_ENV)
    return path


def auto_applies(capability: tuple[int, int]) -> bool:
    """Whether ``--flash-attention auto`` wants it on this GPU (before :func:`problem`'s checks)."""
    return capability in AUTO_CAPABILITIES


def problem(model: torch.nn.Module) -> str | None:
    """Why this model's attention cannot run through FlashAttention 4 where its weights are (the fix is named).

    Whether it imports is :func:`import_problem`'s question; whether it computes right, :func:`startup_check`'s.
    """
    weight = next(model.parameters())
    cfg = model.cfg
    if weight.device.type != "cuda":
        return (f"--flash-attention on runs FlashAttention 4's GPU kernels; this run is on {weight.device.type}. "
                "Use --flash-attention off.")
    capability = torch.cuda.get_device_capability(weight.device)
    if capability < MIN_CAPABILITY:
        return (f"--flash-attention on needs a GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} "
                f"or later (Hopper); {torch.cuda.get_device_name(weight.device)} has {capability}. "
                "Use --flash-attention off.")
    if weight.dtype not in (torch.bfloat16, torch.float16):
        return (f"--flash-attention on runs 16-bit attention; this run's weights are {weight.dtype}. "
                "Use --flash-attention off.")
    if cfg.head_dim not in HEAD_DIMS:
        return (f"--flash-attention on needs a head width that is a multiple of 8 from 8 to 256; this model's is "
                f"{cfg.head_dim}. Use --flash-attention off.")
    return None


def import_problem() -> str | None:
    """Why FlashAttention 4 cannot be imported here (the fix is named), or None."""
    from model.kernels import cute_dsl_import_problem

    return cute_dsl_import_problem("flash_attn.cute.interface", "FlashAttention 4 needs flash-attn-4",
                                   "--flash-attention")


@torch.enable_grad()  # the kernel path is the training one (see fa4_attention)
def startup_check(device: torch.device, shape: tuple[int, int, int, int], dtype: torch.dtype = torch.bfloat16,
                  tolerance: float = 2e-2) -> str | None:
    """Compile and run FlashAttention's forward and backward; None if they match the reference, else why not.

    ``shape``: ``(seq_len, n_head, n_kv_head, head_dim)`` of the training run. Its kernels do not depend on the
    batch or (past one 128-token tile) the length, so one sequence of the training length compiles the
    variants training runs, and the first training step finds them compiled. ``tolerance`` bounds the relative
    error of the output and of each gradient against the reference evaluated in fp32 (bf16 gives ~3e-3).
    """
    from model.kernels import relative_error_problem

    T, H, K, Hd = shape
    gen = torch.Generator(device=device).manual_seed(0)
    fp32 = [torch.randn(1, T, n, Hd, device=device, generator=gen) for n in (H, K, K)]
    dy = torch.randn(1, T, H, Hd, device=device, generator=gen)
    try:
        half = [t.to(dtype).requires_grad_() for t in fp32]
        out = _fa4_forward(*half)[0]
        got = [out, *torch.autograd.grad(out, half, dy.to(dtype))]
        fp32 = [t.requires_grad_() for t in fp32]
        want_out = reference(*fp32)
        want = [want_out, *torch.autograd.grad(want_out, fp32, dy)]
        off = relative_error_problem(("output", "dq", "dk", "dv"), got, want, tolerance)
        if off is not None:
            return f"FlashAttention 4 is off from the reference: {off}"
    except Exception as e:
        return f"FlashAttention 4 failed its start-up check: {type(e).__name__}: {e}"
    return None
