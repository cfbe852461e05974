"""epilogue_probe.py's kernel with TMA tensor descriptors: does the Hopper copy engine close the gap to cuBLAS?

The same maths (gate and up products of a tile from one x tile; the epilogue stores 0, 2 or 3 tiles), but
every operand is loaded, and every tile stored, through a host-side ``TensorDescriptor``; one program per
tile or one persistent program per SM, and optionally Triton's warp specialisation of the k loop.
Self-contained; on the GPU machine: python3 tma_probe.py [--json OUT]
"""

import torch
import triton
import triton.language as tl
from epilogue_probe import run_presets  # the script beside this one (its folder is on sys.path)
from triton.testing import do_bench
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def _tile(x_desc, wg_desc, wu_desc, g_desc, u_desc, h_desc, sums_ptr, tile, M, F, K: tl.constexpr,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
          STORES: tl.constexpr, WS: tl.constexpr):
    tiles_n = tl.cdiv(F, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (tile // per_group) * GROUP_M
    group_m = tl.minimum(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    off_m = (first_m + (tile % per_group) % group_m) * BLOCK_M
    off_n = ((tile % per_group) // group_m) * BLOCK_N
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in tl.range(0, K // BLOCK_K, warp_specialize=WS):
        a = x_desc.load([off_m, k * BLOCK_K])
        acc_g = tl.dot(a, wg_desc.load([off_n, k * BLOCK_K]).T, acc_g)
        acc_u = tl.dot(a, wu_desc.load([off_n, k * BLOCK_K]).T, acc_u)
    g, u = acc_g.to(tl.bfloat16), acc_u.to(tl.bfloat16)
    g32 = g.to(tl.float32)
    h = g32 * tl.sigmoid(g32) * u.to(tl.float32)
    if STORES == 0:
        tl.store(sums_ptr + tile, tl.sum(tl.sum(h, axis=1), axis=0))
    if STORES >= 2:
        g_desc.store([off_m, off_n], g)
        u_desc.store([off_m, off_n], u)
    if STORES == 3:
        h_desc.store([off_m, off_n], h.to(tl.bfloat16))


@triton.jit
def _tma_kernel(x_desc, wg_desc, wu_desc, g_desc, u_desc, h_desc, sums_ptr, M, F, K: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                STORES: tl.constexpr, WS: tl.constexpr, PERSISTENT: tl.constexpr):
    if PERSISTENT:
        tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(F, BLOCK_N)
        for tile in tl.range(tl.program_id(0), tiles, tl.num_programs(0)):
            _tile(x_desc, wg_desc, wu_desc, g_desc, u_desc, h_desc, sums_ptr, tile, M, F, K, BLOCK_M, BLOCK_N,
                  BLOCK_K, GROUP_M, STORES, WS)
    else:
        _tile(x_desc, wg_desc, wu_desc, g_desc, u_desc, h_desc, sums_ptr, tl.program_id(0), M, F, K, BLOCK_M,
              BLOCK_N, BLOCK_K, GROUP_M, STORES, WS)


def measure(D: int, F: int) -> dict:
    """One preset's MLP shapes (32 x 2048 tokens): cuBLAS, then each variant of the TMA kernel."""
    M, BM, BN, BK = 32 * 2048, 128, 128, 64
    x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    wg, wu = (torch.randn(F, D, device="cuda", dtype=torch.bfloat16) * D ** -0.5 for _ in range(2))
    g, u, h = (torch.empty(M, F, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    sums = torch.empty(triton.cdiv(M, BM) * triton.cdiv(F, BN), device="cuda", dtype=torch.float32)
    descs = (TensorDescriptor.from_tensor(x, [BM, BK]), TensorDescriptor.from_tensor(wg, [BN, BK]),
             TensorDescriptor.from_tensor(wu, [BN, BK]), *(TensorDescriptor.from_tensor(t, [BM, BN]) for t in (g, u, h)))
    flops = 2 * 2 * M * D * F
    row = {"cublas_two_matmuls_ms": do_bench(lambda: (x @ wg.t(), x @ wu.t()), rep=200, return_mode="median")}
    row["cublas_two_matmuls_tflops"] = flops / row["cublas_two_matmuls_ms"] / 1e9
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    want_g = (x.float() @ wg.float().t()).to(torch.bfloat16)
    for persistent in (False, True):
        for ws in (False, True):
            for stages in (3, 4):
                for stores in (0, 2, 3):
                    name = f"tma_{'persistent' if persistent else 'tiles'}_ws{int(ws)}_s{stages}_stores{stores}"
                    grid = (sms if persistent else sums.numel(),)

                    def run(stores=stores, ws=ws, persistent=persistent, stages=stages, grid=grid):
                        _tma_kernel[grid](*descs, sums, M, F, D, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, GROUP_M=8,
                                          STORES=stores, WS=ws, PERSISTENT=persistent, num_warps=8,
                                          num_stages=stages)
                    try:
                        run()
                        if stores >= 2:
                            row[f"{name}_g_rel_err"] = ((g.float() - want_g.float()).norm() / want_g.float().norm()).item()
                        ms = do_bench(run, rep=200, return_mode="median")
                        row[f"{name}_ms"], row[f"{name}_tflops"] = ms, flops / ms / 1e9
                    except Exception as e:  # a variant this Triton cannot build: record it, go on
                        row[f"{name}_error"] = repr(e)[:200]
    return row


if __name__ == "__main__":
    run_presets(measure)
