"""Where the fused SwiGLU forward's time goes: its Triton matmul with 0, 2 or 3 tiles stored, against cuBLAS.

The kernel is the one of swiglu_epilogue_fusion.patch (gate and up products of a tile together from one
x tile), with what its epilogue writes chosen by STORES: 0 writes one fp32 value a program (the sum of
h, so nothing is optimised away), 2 writes g and u, 3 writes g, u and h (the fused kernel). Self-contained;
on the GPU machine: python3 epilogue_probe.py [--json OUT]
"""

import argparse
import json
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.testing import do_bench


@triton.jit
def _probe_kernel(x_ptr, wg_ptr, wu_ptr, g_ptr, u_ptr, h_ptr, sums_ptr, M, F, K: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                  STORES: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(F, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m, pid_n = first_m + (pid % per_group) % group_m, (pid % per_group) // group_m
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + (rows % M)[:, None].to(tl.int64) * K + ks[None, :]
    w_offsets = (cols % F)[None, :].to(tl.int64) * K + ks[:, None]
    wg_ptrs, wu_ptrs = wg_ptr + w_offsets, wu_ptr + w_offsets
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K // BLOCK_K):
        a = tl.load(x_ptrs)
        acc_g = tl.dot(a, tl.load(wg_ptrs), acc_g)
        acc_u = tl.dot(a, tl.load(wu_ptrs), acc_u)
        x_ptrs += BLOCK_K
        wg_ptrs += BLOCK_K
        wu_ptrs += BLOCK_K
    g, u = acc_g.to(tl.bfloat16), acc_u.to(tl.bfloat16)
    g32 = g.to(tl.float32)
    h = g32 * tl.sigmoid(g32) * u.to(tl.float32)
    offsets = rows[:, None].to(tl.int64) * F + cols[None, :]
    mask = (rows < M)[:, None] & (cols < F)[None, :]
    if STORES == 0:
        tl.store(sums_ptr + pid, tl.sum(tl.sum(h, axis=1), axis=0))
    if STORES >= 2:
        tl.store(g_ptr + offsets, g, mask=mask)
        tl.store(u_ptr + offsets, u, mask=mask)
    if STORES == 3:
        tl.store(h_ptr + offsets, h.to(tl.bfloat16), mask=mask)


def measure(D: int, F: int) -> dict:
    """One preset's MLP shapes (32 x 2048 tokens): cuBLAS, then the kernel at two launch shapes, three epilogues."""
    M = 32 * 2048
    x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    wg, wu = (torch.randn(F, D, device="cuda", dtype=torch.bfloat16) * D ** -0.5 for _ in range(2))
    g, u, h = (torch.empty(M, F, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    row = {"cublas_two_matmuls_ms": do_bench(lambda: (x @ wg.t(), x @ wu.t()), rep=200, return_mode="median"),
           "cublas_one_matmul_2F_ms": do_bench(lambda: x @ torch.cat((wg, wu)).t(), rep=200, return_mode="median")}
    flops = 2 * 2 * M * D * F
    row["cublas_two_matmuls_tflops"] = flops / row["cublas_two_matmuls_ms"] / 1e9
    for block_m, block_n, warps, stages in ((128, 128, 8, 4), (128, 128, 8, 3)):
        grid = (triton.cdiv(M, block_m) * triton.cdiv(F, block_n),)
        sums = torch.empty(grid[0], device="cuda", dtype=torch.float32)
        for stores in (0, 2, 3):
            def run(stores=stores, block_m=block_m, block_n=block_n, warps=warps, stages=stages, grid=grid,
                    sums=sums):
                _probe_kernel[grid](x, wg, wu, g, u, h, sums, M, F, D, BLOCK_M=block_m, BLOCK_N=block_n,
                                    BLOCK_K=64, GROUP_M=8, STORES=stores, num_warps=warps, num_stages=stages)
            ms = do_bench(run, rep=200, return_mode="median")
            name = f"triton_{block_m}x{block_n}_w{warps}_s{stages}_stores{stores}"
            row[f"{name}_ms"], row[f"{name}_tflops"] = ms, flops / ms / 1e9
    return row


def run_presets(measure_preset) -> None:
    """Both presets' MLP shapes through ``measure_preset(D, F)``, printed and optionally written as JSON
    (``--json OUT``); ``tma_probe.py`` shares it."""
    p = argparse.ArgumentParser()
    p.add_argument("--json", default=None)
    args = p.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    for preset, (D, F) in {"124m": (768, 2048), "350m": (1024, 2816)}.items():
        results[preset] = measure_preset(D, F)
        print(json.dumps({preset: results[preset]}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    run_presets(measure)
