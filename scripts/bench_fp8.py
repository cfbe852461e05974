"""FP8 (tensorwise) vs bf16 linear layers at the 124m/350m training shapes, compiled, on one GPU.

    python3 scripts/bench_fp8.py --json fp8.json                 # H100/H200: about 1-2 minutes
    python3 scripts/bench_fp8.py --device cpu --tiny             # CPU smoke check of the script itself

For every weight shape of the 124m and 350m presets (K -> N; q/k/v and gate/up fused as a fused
implementation would run them) and M = 65,536 tokens, it times ``torch.compile``d (static shapes,
fullgraph) bf16 ``F.linear`` against ``torch.compile``d :func:`model.fp8.fp8_linear`: the forward alone
(with autograd recording, as in training) and forward + backward (grad_x and grad_W). The fp8 times
include quantising x, W and the output gradient on every call; in a compiled model the cast of x could
fuse into the producer (RMSNorm, SiLU-mul), so these numbers are slightly pessimistic for fp8. A raw
``torch._scaled_mm`` against ``torch.mm`` on ready-made operands (forward shape only, plain and with
``use_fast_accum``) separates the matmul speed-up from the quantisation overhead. ``rel err`` is
``||y_fp8 - y_bf16|| / ||y_bf16||`` of the forward outputs.

Timing: ``triton.testing.do_bench`` (median, L2 flushed between calls) on CUDA; on CPU the median of a
few ``time.perf_counter`` runs. The ``weighted`` lines sum fwd+bwd time over one training step's
linears (block shapes times n_layer, plus the LM head once), which is the most fp8 could save on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import PRESETS  # noqa: E402
from model.fp8 import E4M3, fp8_linear, fp8_qualifies  # noqa: E402

VOCAB = 32768
# (name, K, N, times per step): the matmuls of one block (fused where a fused layer would run them once)
# and the LM head. 350m qkv: 16 query heads + 2 x 8 kv heads of 64 = 2048.
SHAPES = {
    "124m": [("qkv", 768, 2304), ("o_proj", 768, 768), ("gate_up", 768, 4096), ("down", 2048, 768),
             ("lm_head", 768, VOCAB)],
    "350m": [("qkv", 1024, 2048), ("o_proj", 1024, 1024), ("gate_up", 1024, 5632), ("down", 2816, 1024),
             ("lm_head", 1024, VOCAB)],
}
TINY_DIVISOR = 8  # --tiny: every K and N divided by this (all stay multiples of 16)
TINY_SHAPES_PER_PRESET = 2


def bf16_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Plain ``F.linear`` (a Python function, so that ``torch.compile`` has a frame to trace)."""
    return F.linear(x, weight)


def make_timer(device: torch.device, rep_ms: int) -> Callable[[Callable[[], object]], float]:
    """``time(fn) -> median milliseconds``: do_bench on CUDA, perf_counter on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")

    def time_cpu(fn: Callable[[], object]) -> float:
        fn()
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)

    return time_cpu


def rel_error_chunked(y_MN: torch.Tensor, y_ref_MN: torch.Tensor, rows: int = 4096) -> float:
    """``||y - y_ref|| / ||y_ref||`` accumulated in fp64 over row chunks (an fp64 copy of a 65536 x 32768
    output would need 17 GB); NaN if ``y`` has a non-finite entry."""
    err_sq = ref_sq = 0.0
    for start in range(0, y_MN.shape[0], rows):
        y = y_MN[start : start + rows].double()
        y_ref = y_ref_MN[start : start + rows].double()
        if not torch.isfinite(y).all():
            return float("nan")
        err_sq += (y - y_ref).pow(2).sum().item()
        ref_sq += y_ref.pow(2).sum().item()
    return (err_sq / max(ref_sq, 1e-300)) ** 0.5


def bench_shape(preset: str, name: str, M: int, K: int, N: int, device: torch.device, timer) -> dict:
    """All timings and the output error of one ``(M, K) x (N, K)^T`` linear."""
    gen = torch.Generator(device=device).manual_seed(0)
    x_MK = torch.randn(M, K, device=device, generator=gen).to(torch.bfloat16).requires_grad_()
    w_NK = (torch.randn(N, K, device=device, generator=gen) * K**-0.5).to(torch.bfloat16).requires_grad_()
    g_MN = torch.randn(M, N, device=device, generator=gen).to(torch.bfloat16)
    if not fp8_qualifies(x_MK, w_NK):
        raise SystemExit(f"{preset} {name} ({M}x{K} -> {N}) would fall back to bf16: not a fp8 shape")

    compile_start = time.perf_counter()
    impls = {
        "bf16": torch.compile(bf16_linear, dynamic=False, fullgraph=True),
        "fp8": torch.compile(fp8_linear, dynamic=False, fullgraph=True),
    }
    outputs = {}
    for impl, fn in impls.items():  # compile forward and backward once, outside the timed region
        y_MN = fn(x_MK, w_NK)
        torch.autograd.grad(y_MN, (x_MK, w_NK), g_MN)
        outputs[impl] = y_MN.detach()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    compile_s = time.perf_counter() - compile_start
    rel_err = rel_error_chunked(outputs["fp8"], outputs["bf16"])
    del outputs

    row: dict = {"preset": preset, "name": name, "M": M, "K": K, "N": N, "compile_s": compile_s}
    for impl, fn in impls.items():
        row[f"{impl}_fwd_ms"] = timer(lambda fn=fn: fn(x_MK, w_NK))
        row[f"{impl}_fwd_bwd_ms"] = timer(
            lambda fn=fn: torch.autograd.grad(fn(x_MK, w_NK), (x_MK, w_NK), g_MN)
        )

    # Raw matmuls on ready operands: what the tensor cores give without any quantisation cost.
    with torch.no_grad():
        x_fp8_MK = x_MK.detach().to(E4M3)  # |x| < 448: randn needs no scale
        w_fp8_NK = (w_NK.detach() * K**0.5).to(E4M3)
        one = torch.ones((), device=device, dtype=torch.float32)
        x_bf16_MK, w_bf16_NK = x_MK.detach(), w_NK.detach()
        row["raw_bf16_mm_ms"] = timer(lambda: torch.mm(x_bf16_MK, w_bf16_NK.t()))
        row["raw_fp8_mm_ms"] = timer(
            lambda: torch._scaled_mm(x_fp8_MK, w_fp8_NK.t(), one, one, out_dtype=torch.bfloat16)
        )
        row["raw_fp8_mm_fast_accum_ms"] = timer(
            lambda: torch._scaled_mm(
                x_fp8_MK, w_fp8_NK.t(), one, one, out_dtype=torch.bfloat16, use_fast_accum=True
            )
        )

    row["fwd_speedup"] = row["bf16_fwd_ms"] / row["fp8_fwd_ms"]
    row["fwd_bwd_speedup"] = row["bf16_fwd_bwd_ms"] / row["fp8_fwd_bwd_ms"]
    row["raw_mm_speedup"] = row["raw_bf16_mm_ms"] / row["raw_fp8_mm_ms"]
    row["raw_mm_fast_accum_speedup"] = row["raw_bf16_mm_ms"] / row["raw_fp8_mm_fast_accum_ms"]
    row["bf16_fwd_bwd_tflops"] = 6 * M * K * N / (row["bf16_fwd_bwd_ms"] * 1e-3) / 1e12
    row["fp8_rel_error"] = rel_err
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke check only)")
    p.add_argument("--presets", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--tokens", type=int, default=65536, help="M: rows of x (batch x sequence)")
    p.add_argument("--tiny", action="store_true",
                   help=f"M=256, K and N / {TINY_DIVISOR}, {TINY_SHAPES_PER_PRESET} shapes per preset")
    p.add_argument("--rep-ms", type=int, default=100, help="do_bench repetition time per measurement")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        import triton

        header = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                  "triton": triton.__version__, "capability": list(torch.cuda.get_device_capability(device))}
    else:
        header = {"device": f"cpu ({platform.processor() or platform.machine()})", "torch": torch.__version__}
    print(json.dumps(header), flush=True)

    torch._dynamo.config.cache_size_limit = 64  # one static-shape graph per shape and implementation
    timer = make_timer(device, args.rep_ms)
    M = 256 if args.tiny else args.tokens
    rows = []
    start = time.perf_counter()
    for preset in args.presets:
        shapes = SHAPES[preset]
        if args.tiny:
            shapes = shapes[:TINY_SHAPES_PER_PRESET]
            shapes = [(n, k // TINY_DIVISOR, v // TINY_DIVISOR) for n, k, v in shapes]
        for name, K, N in shapes:
            row = bench_shape(preset, name, M, K, N, device, timer)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print(f"\n{'preset':6} {'shape':8} {'K->N':>11} {'fwd bf16':>9} {'fwd fp8':>8} {'x':>5} {'f+b bf16':>9} "
          f"{'f+b fp8':>8} {'x':>5} {'raw mm x':>8} {'fast x':>6} {'bf16 TF/s':>9} {'rel err':>8}")
    for r in rows:
        print(f"{r['preset']:6} {r['name']:8} {str(r['K']) + '->' + str(r['N']):>11} {r['bf16_fwd_ms']:9.3f} "
              f"{r['fp8_fwd_ms']:8.3f} {r['fwd_speedup']:5.2f} {r['bf16_fwd_bwd_ms']:9.3f} "
              f"{r['fp8_fwd_bwd_ms']:8.3f} {r['fwd_bwd_speedup']:5.2f} {r['raw_mm_speedup']:8.2f} "
              f"{r['raw_mm_fast_accum_speedup']:6.2f} {r['bf16_fwd_bwd_tflops']:9.1f} "
              f"{r['fp8_rel_error']:8.2e}")
    for preset in args.presets:
        preset_rows = [r for r in rows if r["preset"] == preset]
        n_layer = PRESETS[preset]["n_layer"]
        weight = {r["name"]: (1 if r["name"] == "lm_head" else n_layer) for r in preset_rows}
        bf16 = sum(weight[r["name"]] * r["bf16_fwd_bwd_ms"] for r in preset_rows)
        fp8 = sum(weight[r["name"]] * r["fp8_fwd_bwd_ms"] for r in preset_rows)
        print(f"weighted {preset} ({n_layer} layers + LM head, {M} tokens): fwd+bwd bf16 {bf16:.2f} ms, "
              f"fp8 {fp8:.2f} ms, speed-up {bf16 / fp8:.2f}")
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({**header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
