"""Sweep the Newton–Schulz kernels' tile settings at the Muon shape groups, on one GPU.

    python3 scripts/tune_newton_schulz.py --presets 124m --json ns_tuning.json     # on the GPU machine

For each shape group (the batch Muon orthogonalizes in one call, wide orientation, gate/up joined with
the transposed down projection as ``Muon`` does), it times each of the three launches of one
Newton–Schulz step, ``A = X X^T`` and ``b A + c A A`` (``_gram_kernel``) and ``a X + (b A + c A A) X``
(``_gemm_axpy_kernel``), under every setting in the grids below, with ``triton.testing.do_bench``
medians; then the whole ``triton_impl`` (5 steps) with the default settings and with the fastest per
kernel. ``model/kernels/newton_schulz.py:launch_config`` holds the settings that ship, chosen from
this output.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.kernels import newton_schulz as ns  # noqa: E402
from training.optim.muon import wide_shape  # noqa: E402

GRAM_GRID = [
    {"BLOCK": b, "BLOCK_K": k, "num_warps": w, "num_stages": s}
    for b, k, w, s in itertools.product((64, 128), (64, 128), (4, 8), (3, 4))
]
GEMM_GRID = [
    {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": k, "num_warps": w, "num_stages": s}
    for bm, bn, k, w, s in itertools.product((64, 128), (128, 256), (64, 128), (4, 8), (3, 4))
]


def joined_groups(preset: str) -> list[tuple[int, int, int]]:
    """``(batch, m, n)`` per Newton–Schulz call of ``preset``: wide orientation, transposed twins joined."""
    joined: dict[tuple[int, int], int] = {}
    for (rows, cols), count in ns.muon_shape_groups(preset).items():
        key = wide_shape((rows, cols))
        joined[key] = joined.get(key, 0) + count
    return [(count, m, n) for (m, n), count in joined.items()]


def time_launch(kernel: str, X: torch.Tensor, A: torch.Tensor, config: dict, gram_input: str) -> float:
    """Median ms of one launch of ``kernel`` with ``config`` (None if the setting does not fit the card)."""
    from triton.testing import do_bench

    batch, m, n = X.shape
    out_mm = torch.empty_like(A)
    scale = torch.ones(batch, device=X.device)  # read only by the first step's launches; none here
    if kernel == "gram":
        src, k_dim = (X, n) if gram_input == "X" else (A, m)
        tiles = -(-m // config["BLOCK"])

        def launch() -> None:
            ns._gram_kernel[(tiles, tiles, batch)](
                src, A, out_mm, scale, src.stride(0), src.stride(1), A.stride(0), out_mm.stride(0), 1.0, 0.5,
                M=m, K=k_dim, HAS_C=gram_input == "A", UPCAST=False, **config,
            )
    else:
        out = torch.empty_like(X)
        grid = (-(-m // config["BLOCK_M"]), -(-n // config["BLOCK_N"]), batch)

        def launch() -> None:
            ns._gemm_axpy_kernel[grid](
                A, X, out, scale, A.stride(0), X.stride(0), out.stride(0), 1.5, M=m, N=n, SCALED=False,
                UPCAST=False, **config,
            )
    try:
        return do_bench(launch)
    except Exception as e:  # noqa: BLE001 - triton's OutOfResources and friends: the setting does not fit
        print(f"  skip {kernel} {config}: {type(e).__name__}", flush=True)
        return float("inf")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["124m"])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from triton.testing import do_bench

    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    results = []
    for preset in args.presets:
        for batch, m, n in joined_groups(preset):
            X = torch.randn(batch, m, n, device="cuda", dtype=torch.bfloat16)
            X = (X / X.norm(dim=(-2, -1), keepdim=True)).contiguous()
            A = (X @ X.mT).contiguous()
            row: dict = {"preset": preset, "shape": [batch, m, n], "default": {}, "best": {}}
            for kernel, grid, gram_input in (("gram", GRAM_GRID, "X"), ("gram", GRAM_GRID, "A"),
                                             ("gemm", GEMM_GRID, None)):
                label = f"{kernel}_{gram_input}" if gram_input else kernel
                default = ns.launch_config(kernel, m, n)
                timed = [(time_launch(kernel, X, A, c, gram_input), c) for c in grid]
                best_ms, best = min(timed, key=lambda t: t[0])
                row["default"][label] = {"ms": time_launch(kernel, X, A, default, gram_input), "config": default}
                row["best"][label] = {"ms": best_ms, "config": best}
                print(f"{preset} {batch}x({m},{n}) {label:7} default {row['default'][label]['ms']:.3f} ms "
                      f"{default} | best {best_ms:.3f} ms {best}", flush=True)
            G = torch.randn(batch, m, n, device="cuda", dtype=torch.bfloat16)
            ns.LAUNCH_OVERRIDES.clear()
            row["full_default_ms"] = do_bench(lambda G=G: ns.triton_impl(G))
            # One gram setting serves both gram launches: take the one with the lower summed time.
            gram_pick = min(GRAM_GRID, key=lambda c: sum(
                time_launch("gram", X, A, c, src) for src in ("X", "A")))
            ns.LAUNCH_OVERRIDES.update(gram=gram_pick, gemm=row["best"]["gemm"]["config"])
            row["full_tuned_ms"] = do_bench(lambda G=G: ns.triton_impl(G))
            row["gram_pick"] = gram_pick
            ns.LAUNCH_OVERRIDES.clear()
            print(f"{preset} {batch}x({m},{n}) full 5-step NS: default {row['full_default_ms']:.3f} ms, "
                  f"tuned {row['full_tuned_ms']:.3f} ms (gram {gram_pick})", flush=True)
            results.append(row)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
    # Joined vs separate calls for the transposed twins (what Muon's join buys), default settings.
    for preset in args.presets:
        for (rows, cols), count in ns.muon_shape_groups(preset).items():
            G = torch.randn(count, rows, cols, device="cuda", dtype=torch.bfloat16)
            ms = do_bench(lambda G=G: ns.triton_impl(G))
            print(f"{preset} separate call {count}x({rows},{cols}): {ms:.3f} ms", flush=True)
            results.append({"preset": preset, "separate": [count, rows, cols], "ms": ms})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
