"""Causal attention at the preset shapes: every SDPA backend this torch has, forward and forward+backward.

    python3 scripts/bench_attention.py --presets 124m 350m --json attention.json    # on the GPU machine

Why: attention is the second-largest item in the training step's profile (PERFORMANCE.md). This
shows whether a backend other than the one SDPA picks by itself would be faster, and how far each
is from the card's bf16 matmul peak. FLOPs counted are the causal ones (half the square):
forward 2 x 2 x B x H x T^2 x Hd / 2, backward 2.5 x forward. Medians of ``triton.testing.do_bench``.
"""

import argparse
import contextlib
import json
import platform
import sys
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


def time_backend(backend: SDPBackend | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 grad: torch.Tensor) -> tuple[float, float]:
    """Median ms of the forward and of forward + backward, with SDPA held to ``backend`` (None: its own pick)."""
    from triton.testing import do_bench

    gqa = q.size(1) != k.size(1)

    def fwd() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    def fwd_bwd() -> None:
        torch.autograd.grad(fwd(), (q, k, v), grad)

    with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
        return do_bench(fwd), do_bench(fwd_bwd)


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
    q = torch.randn(B, H, T, Hd, device=device, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, K, T, Hd, device=device, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, K, T, Hd, device=device, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(B, H, T, Hd, device=device, dtype=torch.bfloat16)
    fwd_flops = 2 * 2 * B * H * T * T * Hd / 2
    for name, backend in BACKENDS.items():
        try:
            fwd_ms, both_ms = time_backend(backend, q, k, v, grad)
        except RuntimeError as e:  # a backend that does not take these shapes or this GQA layout
            row = {"preset": preset, "head_dim": Hd, "backend": name, "error": str(e).splitlines()[0][:200]}
        else:
            row = {"preset": preset, "head_dim": Hd, "heads": H, "kv_heads": K, "backend": name,
                   "fwd_ms": fwd_ms, "fwd_bwd_ms": both_ms, "fwd_tflops": fwd_flops / fwd_ms / 1e9,
                   "fwd_bwd_tflops": 3.5 * fwd_flops / both_ms / 1e9}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
