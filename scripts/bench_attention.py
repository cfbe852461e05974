"""Causal attention at the preset shapes: every SDPA backend this torch has, forward and forward+backward.

    python3 scripts/bench_attention.py --presets 124m 350m --json attention.json    # on the GPU machine

Why: attention is the second-largest item in the training step's profile (PERFORMANCE.md). This
shows whether a backend other than the one SDPA picks by itself would be faster, and how far each
is from the card's bf16 matmul peak. FLOPs counted are the causal ones (half the square):
forward 2 x 2 x B x H x T^2 x Hd / 2, backward 2.5 x forward. Medians of ``triton.testing.do_bench``.

Where FlashAttention 4 (``flash-attn-4``, ``flash_attn.cute``: CuTe-DSL kernels for Hopper and Blackwell) is
importable, its ``flash_attn_func`` is a row too ("fa4"), on (B, T, heads, Hd) tensors, the layout it takes
and the one the model's projections produce. Each row's ``rel_err`` is the largest relative error (Frobenius)
of the output and the three input gradients against an fp32 evaluation of the same attention.
"""

import argparse
import contextlib
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import PRESETS  # noqa: E402

BACKENDS = {
    "auto": None,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention on (B, heads, T, Hd) tensors through SDPA, whichever backend it is held to."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.size(1) != k.size(1))


def attention_fns() -> dict[str, tuple[Callable[..., torch.Tensor], SDPBackend | None]]:
    """Each row's attention on (B, heads, T, Hd) tensors, and the SDPA backend to hold it to (None: none)."""
    fns = {name: (causal_sdpa, backend) for name, backend in BACKENDS.items()}
    try:
        from flash_attn.cute import flash_attn_func
    except ImportError as e:
        print(json.dumps({"fa4": f"not importable: {e}"}), flush=True)
    else:
        def fa4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            """FlashAttention 4 on (B, heads, T, Hd) views of (B, T, heads, Hd) tensors, its own layout."""
            out, _ = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
            return out.transpose(1, 2)

        fns["fa4"] = (fa4, None)
    return fns


def time_fn(attend: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            grad: torch.Tensor) -> tuple[float, float]:
    """Median ms of the forward and of forward + backward."""
    from triton.testing import do_bench

    def fwd_bwd() -> None:
        torch.autograd.grad(attend(q, k, v), (q, k, v), grad)

    return do_bench(lambda: attend(q, k, v)), do_bench(fwd_bwd)


def relative_error(attend: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   grad: torch.Tensor) -> float:
    """Largest relative error of the output and dq, dk, dv against the same attention in fp32."""
    def run(fn, *tensors):
        leaves = [t.detach().requires_grad_() for t in tensors]
        out = fn(*leaves)
        return [out, *torch.autograd.grad(out, leaves, grad.to(out.dtype))]

    with sdpa_kernel([SDPBackend.MATH]):
        exact = run(causal_sdpa, *(t.float() for t in (q, k, v)))
    got = run(attend, q, k, v)
    return max(((g.float() - e).norm() / e.norm()).item() for g, e in zip(got, exact, strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["124m", "350m"])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--head-dims", nargs="+", type=int, default=None,
                   help="time these head widths at each preset's width (heads = n_head*head_dim/width); "
                        "default: the preset's own")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device("cuda")
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "python": platform.python_version()}), flush=True)
    rows = []
    for preset in args.presets:
        shape = PRESETS[preset]
        for Hd in args.head_dims or [shape["head_dim"]]:
            # Same attention width and GQA ratio at every head width, so the FLOPs stay the same.
            H = shape["n_head"] * shape["head_dim"] // Hd
            K = shape["n_kv_head"] * shape["head_dim"] // Hd
            rows.extend(time_preset(preset, args.batch, args.seq_len, H, K, Hd, device))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def time_preset(preset: str, B: int, T: int, H: int, K: int, Hd: int, device: torch.device) -> list[dict]:
    """One row per backend for ``B`` sequences of ``T`` tokens, ``H`` query and ``K`` key/value heads of ``Hd``."""
    rows = []

    def bthd_view(heads: int) -> torch.Tensor:  # (B, heads, T, Hd) views of (B, T, heads, Hd) memory, as in the model
        x = torch.randn(B, T, heads, Hd, device=device, dtype=torch.bfloat16).transpose(1, 2)
        return x.requires_grad_()

    q, k, v = bthd_view(H), bthd_view(K), bthd_view(K)
    grad = torch.randn(B, T, H, Hd, device=device, dtype=torch.bfloat16).transpose(1, 2)
    fwd_flops = 2 * 2 * B * H * T * T * Hd / 2
    for name, (attend, backend) in attention_fns().items():
        try:
            with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
                fwd_ms, both_ms = time_fn(attend, q, k, v, grad)
                err = relative_error(attend, q[:2], k[:2], v[:2], grad[:2])  # two sequences: the fp32 math is slow
        except (RuntimeError, AssertionError, ValueError) as e:  # a backend that does not take these shapes
            row = {"preset": preset, "head_dim": Hd, "backend": name, "error": str(e).splitlines()[0][:200]}
        else:
            row = {"preset": preset, "head_dim": Hd, "heads": H, "kv_heads": K, "backend": name,
                   "fwd_ms": fwd_ms, "fwd_bwd_ms": both_ms, "fwd_tflops": fwd_flops / fwd_ms / 1e9,
                   "fwd_bwd_tflops": 3.5 * fwd_flops / both_ms / 1e9, "rel_err": err}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
