"""Each Triton kernel against its PyTorch reference compiled with torch.compile, at real model shapes.

    python3 scripts/bench_kernels.py --presets 124m 350m --json kernels.json

For every op in ``model.kernels.KERNELS`` it asks the kernel module for its ``bench_cases(preset)``
(the shapes the 124M and 350M presets run), then times both sides with ``triton.testing.do_bench``
(median of its repetitions; forward + backward where the case says so) and reports the speed-up and
the relative error ``||triton - reference|| / ||reference||`` over every output and input gradient.
A kernel whose speed-up is below 1 at these shapes must not be on under ``--kernels auto``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.kernels import KERNELS  # noqa: E402


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def make_runner(fn: Callable, inputs: tuple, backward: bool) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A zero-argument call of ``fn`` returning its outputs (and input gradients when ``backward``)."""
    if not backward:
        return lambda: _as_tuple(fn(*inputs))
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    cotangents: list[torch.Tensor] = []

    def run() -> tuple[torch.Tensor, ...]:
        outs = [o for o in _as_tuple(fn(*inputs)) if o.requires_grad]
        if not cotangents:  # fixed random upstream gradients, the same for both sides
            gen = torch.Generator(device=outs[0].device).manual_seed(0)
            cotangents.extend(torch.randn(o.shape, device=o.device, generator=gen).to(o.dtype) for o in outs)
        grads = torch.autograd.grad(outs, leaves, cotangents)
        return tuple(o.detach() for o in outs) + tuple(grads)

    return run


def rel_error(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> float:
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        g, w = g.double(), w.double()
        if not torch.isfinite(g).all():
            return float("nan")  # a NaN never passes as "close"
        worst = max(worst, ((g - w).norm() / w.norm().clamp(min=1e-30)).item())
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["124m", "350m"])
    p.add_argument("--ops", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    p.add_argument("--rep-ms", type=int, default=200, help="do_bench repetition time per measurement")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import triton
    from triton.testing import do_bench

    device = torch.device("cuda")
    # One compiled reference per case shape: static shapes (as in training) and room for all of them.
    torch._dynamo.config.cache_size_limit = 64
    rows = []
    print(json.dumps({"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
                      "triton": triton.__version__}), flush=True)
    for op in args.ops:
        module = importlib.import_module(f"model.kernels.{KERNELS[op][0]}")
        for preset in args.presets:
            for case in module.bench_cases(preset):
                torch.manual_seed(0)
                inputs = case["make_inputs"](device)
                backward = case.get("backward", False)
                tri = make_runner(case["triton"], inputs, backward)
                ref = make_runner(torch.compile(case["reference"], dynamic=False), inputs, backward)
                err = rel_error(tri(), ref())
                t_tri = do_bench(tri, rep=args.rep_ms, return_mode="median")
                t_ref = do_bench(ref, rep=args.rep_ms, return_mode="median")
                row = {"op": op, "preset": preset, "case": case["name"], "backward": backward,
                       "triton_ms": t_tri, "compiled_reference_ms": t_ref, "speedup": t_ref / t_tri,
                       "rel_error": err}
                rows.append(row)
                print(json.dumps(row), flush=True)
                del inputs, tri, ref
                torch.cuda.empty_cache()

    print(f"\n{'op':14} {'preset':7} {'case':34} {'fwd+bwd':7} {'triton ms':>10} {'compiled ms':>11} "
          f"{'speed-up':>8} {'rel err':>9}")
    for r in rows:
        print(f"{r['op']:14} {r['preset']:7} {r['case'][:34]:34} {'yes' if r['backward'] else 'no':7} "
              f"{r['triton_ms']:10.3f} {r['compiled_reference_ms']:11.3f} {r['speedup']:8.2f} {r['rel_error']:9.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
