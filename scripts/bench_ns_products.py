"""Newton–Schulz products: our Triton kernels against cuBLAS, launch by launch, at the Muon shape groups.

    python3 scripts/bench_ns_products.py --presets 124m 350m --json ns_products.json    # on the GPU machine

Per Newton–Schulz call of a preset (wide orientation, transposed twins joined, as ``Muon`` does), it
times each product of one step with ``triton.testing.do_bench`` medians, ours and cuBLAS's
(``torch.bmm`` / ``torch.baddbmm``, as the reference computes them), and the whole 5-step call both
ways (``triton_impl`` and the reference). TFLOP/s count the useful FLOPs: half of each symmetric
product, which is all our Gram kernel computes (plus the diagonal tiles).

Why: it decides whether any product should go to cuBLAS instead. On the H100 none should: at these
batched sizes cuBLAS's fastest kernels run 110-430 TFLOP/s against our 200-565 (PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tune_newton_schulz import joined_groups  # noqa: E402

from model.kernels import newton_schulz as ns  # noqa: E402


def time_group(preset: str, batch: int, m: int, n: int) -> list[dict]:
    """The rows for one Newton–Schulz call of ``batch`` ``(m, n)`` matrices, ``m <= n``."""
    from triton.testing import do_bench

    X = torch.randn(batch, m, n, device="cuda", dtype=torch.bfloat16)
    X = (X / X.norm(dim=(-2, -1), keepdim=True)).contiguous()
    A = (X @ X.mT).contiguous()
    out_mm, out_mn = torch.empty_like(A), torch.empty_like(X)
    scale = torch.ones(batch, device="cuda")  # read only by the first step's launches (none here)
    gram, gemm = ns.launch_config("gram", m, n), ns.launch_config("gemm", m, n)
    tiles = -(-m // gram["BLOCK"])
    gemm_grid = (-(-m // gemm["BLOCK_M"]), -(-n // gemm["BLOCK_N"]), batch)
    useful_flops = {"X X^T": batch * m * m * n, "b A + c A A": batch * m**3, "a X + S X": 2 * batch * m * m * n}
    ours = {
        "X X^T": lambda: ns._gram_kernel[(tiles, tiles, batch)](
            X, X, out_mm, scale, X.stride(0), X.stride(1), 0, out_mm.stride(0), 1.0, 0.0,
            M=m, K=n, HAS_C=False, UPCAST=False, **gram),
        "b A + c A A": lambda: ns._gram_kernel[(tiles, tiles, batch)](
            A, A, out_mm, scale, A.stride(0), A.stride(1), A.stride(0), out_mm.stride(0), 2.0, -4.7,
            M=m, K=m, HAS_C=True, UPCAST=False, **gram),
        "a X + S X": lambda: ns._gemm_axpy_kernel[gemm_grid](
            A, X, out_mn, scale, A.stride(0), X.stride(0), out_mn.stride(0), 3.4, M=m, N=n, SCALED=False,
            UPCAST=False, **gemm),
    }  # fmt: skip
    cublas = {
        "X X^T": lambda: torch.bmm(X, X.mT, out=out_mm),
        "b A + c A A": lambda: torch.baddbmm(A, A, A, beta=-4.7, alpha=2.0),
        "a X + S X": lambda: torch.baddbmm(X, A, X, beta=3.4),
    }
    rows = []
    for product, useful in useful_flops.items():
        ms_ours, ms_cublas = do_bench(ours[product]), do_bench(cublas[product])
        rows.append({"preset": preset, "shape": [batch, m, n], "product": product, "ours_ms": ms_ours,
                     "cublas_ms": ms_cublas, "ours_tflops": useful / ms_ours / 1e9,
                     "cublas_tflops": useful / ms_cublas / 1e9})
    G = torch.randn(batch, m, n, device="cuda", dtype=torch.bfloat16)
    full = {"triton": lambda: ns.triton_impl(G), "reference": lambda: ns.reference(G)}
    rows.append({"preset": preset, "shape": [batch, m, n], "full_5_steps_ms": {k: do_bench(f) for k, f in full.items()}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["124m", "350m"])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    rows = []
    for preset in args.presets:
        for batch, m, n in joined_groups(preset):
            for row in time_group(preset, batch, m, n):
                rows.append(row)
                print(json.dumps(row), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
