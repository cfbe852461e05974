"""The fused SwiGLU kernels' launch shapes swept on the GPU, each against what the compiled step runs.

    python3 scripts/bench_swiglu.py --presets 124m 350m --json swiglu.json

At each preset's MLP shapes (32 x 2048 tokens, bf16) it times with ``triton.testing.do_bench`` (medians):
    forward   cuBLAS gate and up matmuls alone; those plus Inductor's SwiGLU kernel (compiled, g, u
              and h written, as in training); ``model.kernels.swiglu``'s forward kernel, per launch shape
    backward  cuBLAS ``dh = dy Wd`` alone; that plus Inductor's SwiGLU backward (dg and du written);
              the fused backward kernel, per launch shape
and the relative error of each kernel's outputs against an fp32 evaluation of the same maths next to
the compiled bf16 reference's. A launch shape whose time is ``null`` failed to compile or run (e.g.
out of shared memory); its error is recorded instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.kernels import swiglu  # noqa: E402


def shape(block_m: int, block_n: int, block_k: int, warps: int, stages: int, **extra) -> dict:
    """A launch shape; ``extra``: PROGRAMS_PER_SM (persistent programs, 0 = one per tile), FLATTEN (let the
    pipeliner run the next tile's loads under this tile's epilogue), PREFETCH (backward: load g and u
    before the products), GROUP_M."""
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages, **extra)


PERSISTENT = dict(PROGRAMS_PER_SM=1, FLATTEN=True)
PERSISTENT2 = dict(PROGRAMS_PER_SM=2, FLATTEN=True)
FWD_SHAPES = [shape(128, 128, 64, 8, 4), shape(128, 128, 64, 8, 3, **PERSISTENT), shape(128, 128, 64, 8, 4, **PERSISTENT),
              shape(128, 128, 64, 8, 3, PROGRAMS_PER_SM=1), shape(128, 64, 64, 4, 3, **PERSISTENT2),
              shape(64, 64, 64, 4, 4, **PERSISTENT2), shape(64, 64, 64, 4, 4), shape(128, 64, 64, 4, 3)]
BWD_SHAPES = [shape(64, 128, 64, 4, 4), shape(64, 128, 64, 4, 4, PREFETCH=True), shape(64, 128, 64, 4, 4, **PERSISTENT2),
              shape(64, 128, 64, 4, 4, PREFETCH=True, **PERSISTENT2), shape(128, 128, 64, 8, 4, **PERSISTENT),
              shape(128, 128, 64, 8, 4, PREFETCH=True), shape(128, 64, 64, 4, 4, **PERSISTENT2),
              shape(64, 64, 64, 4, 4, PROGRAMS_PER_SM=3, FLATTEN=True),
              shape(64, 128, 64, 4, 3, PREFETCH=True, **PERSISTENT2)]


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    if not torch.isfinite(got).all():
        return float("nan")
    return ((got - want).norm() / want.norm()).item()


def ref_forward(x, wg, wu):
    g, u = F.linear(x, wg), F.linear(x, wu)
    return g, u, F.silu(g) * u


def ref_backward(dy, wd, g, u):
    dh = dy @ wd
    g32, u32, dh32 = g.float(), u.float(), dh.float()
    sig = torch.sigmoid(g32)
    return (dh32 * u32 * sig * (1 + g32 * (1 - sig))).to(g.dtype), (dh32 * g32 * sig).to(g.dtype)


def measure(preset: str, device: torch.device, bench, fwd_compiled, bwd_compiled) -> dict:
    """One preset: the references' times and errors, then every launch shape of both kernels."""
    torch.manual_seed(0)
    x, wg, wu, wd, dy = swiglu.sweep_inputs(preset, device)()
    # fp32 truth of the same maths from the bf16 operands.
    g32, u32 = x.float() @ wg.float().t(), x.float() @ wu.float().t()
    h32 = F.silu(g32) * u32
    dh32 = dy.float() @ wd.float()
    sig = torch.sigmoid(g32)
    dg32, du32 = dh32 * u32 * sig * (1 + g32 * (1 - sig)), dh32 * g32 * sig
    g, u, h = fwd_compiled(x, wg, wu)
    dg, du = bwd_compiled(dy, wd, g, u)
    row = {
        "cublas_gate_up_ms": bench(lambda: (x @ wg.t(), x @ wu.t())),
        "compiled_forward_ms": bench(lambda: fwd_compiled(x, wg, wu)),
        "cublas_dh_ms": bench(lambda: dy @ wd),
        "compiled_backward_ms": bench(lambda: bwd_compiled(dy, wd, g, u)),
        "compiled_forward_rel_err": {"g": rel(g, g32), "u": rel(u, u32), "h": rel(h, h32)},
        "compiled_backward_rel_err": {"dg": rel(dg, dg32), "du": rel(du, du32)},
        "forward": [], "backward": [],
    }
    F_ = wg.shape[0]
    for config in FWD_SHAPES:
        entry = {"config": config}
        try:
            g_t, u_t, h_t = swiglu.swiglu_forward(x, wg, wu, config)
            entry["rel_err"] = {"g": rel(g_t, g32), "u": rel(u_t, u32), "h": rel(h_t, h32)}
            entry["ms"] = bench(lambda config=config: swiglu.swiglu_forward(x, wg, wu, config))
        except Exception as e:  # a launch shape that does not fit the card: record it, go on
            entry["ms"], entry["error"] = None, repr(e)[:300]
        row["forward"].append(entry)
        print(json.dumps({"preset": preset, "part": "forward", **entry}), flush=True)
    for config in BWD_SHAPES:
        entry = {"config": config}
        try:
            dgu = swiglu.swiglu_backward_dgu(dy, wd, g, u, config)
            entry["rel_err"] = {"dg": rel(dgu[:, :F_], dg32), "du": rel(dgu[:, F_:], du32)}
            entry["ms"] = bench(lambda config=config: swiglu.swiglu_backward_dgu(dy, wd, g, u, config))
        except Exception as e:
            entry["ms"], entry["error"] = None, repr(e)[:300]
        row["backward"].append(entry)
        print(json.dumps({"preset": preset, "part": "backward", **entry}), flush=True)
    for part, ref_key in (("forward", "compiled_forward_ms"), ("backward", "compiled_backward_ms")):
        timed = [e for e in row[part] if e["ms"] is not None]
        if timed:
            best = min(timed, key=lambda e: e["ms"])
            row[f"best_{part}"] = best | {"speedup_vs_compiled": row[ref_key] / best["ms"]}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["124m", "350m"])
    p.add_argument("--rep-ms", type=int, default=200)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import triton
    from triton.testing import do_bench

    device = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "triton": triton.__version__, "presets": {}}
    print(json.dumps({k: report[k] for k in ("device", "torch", "triton")}), flush=True)
    fwd_compiled, bwd_compiled = torch.compile(ref_forward), torch.compile(ref_backward)

    def bench(fn) -> float:
        return do_bench(fn, rep=args.rep_ms, return_mode="median")

    for preset in args.presets:
        row = measure(preset, device, bench, fwd_compiled, bwd_compiled)
        report["presets"][preset] = row
        summary = {k: v for k, v in row.items() if k not in ("forward", "backward")}
        print(json.dumps({"preset": preset, **summary}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
