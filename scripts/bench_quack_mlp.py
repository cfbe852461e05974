"""A block's SwiGLU MLP through quack's fused GEMMs against what the training step runs now.

    python3 scripts/bench_quack_mlp.py --presets 124m 350m --json quack_mlp.json    # on the GPU machine

Why: in the 124m step the MLP's element-wise work (SwiGLU forward and backward) is ~8 ms of
Inductor kernels that run at memory bandwidth (PERFORMANCE.md, "What bounds the step"). Session 14
fused it into hand-written Triton matmuls' epilogues and lost: Triton's mainloop was slower than
cuBLAS by more than the fusion saved. quack (``quack-kernels`` on PyPI, Tri Dao's CuTe-DSL kernels)
has Hopper GEMMs with the same fusions: SwiGLU in the gate/up GEMM's epilogue, and its derivative in
the epilogue of the down projection's input-gradient GEMM. This times them at the preset shapes.

Per block, ``--batch`` x ``--seq-len`` tokens, bf16, medians of ``triton.testing.do_bench``:

* ``compiled``: ``down(silu(gate(x)) * up(x))`` under ``torch.compile`` (cuBLAS matmuls and
  Inductor's SwiGLU kernels), what the step runs;
* ``quack_default`` / ``quack_tuned``: ``quack.mlp.mlp_func`` with the gate and up weights
  concatenated (its ``concat_layout``), with quack's default GEMM configs and autotuned;
* the forward alone and forward + backward (gradients of x and of all three weights);
* each side's relative error ``||got - fp32|| / ||fp32||`` over the output and every gradient,
  against the same MLP evaluated in fp32.

The trainer runs ``quack_tuned`` under ``--fused-mlp`` (model/kernels/swiglu_mlp.py). quack and its
CuTe-DSL compiler are in the lock (Linux x86-64); without them this exits with that message.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_kernels import make_runner, rel_error  # noqa: E402

from model.config import PRESETS  # noqa: E402
from model.decoder import swiglu_mlp_reference as swiglu_mlp  # noqa: E402
from model.kernels.swiglu_mlp import quack_mlp  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["124m", "350m"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--variants", nargs="+", default=["compiled", "quack_default", "quack_tuned"],
                   choices=["compiled", "quack_default", "quack_tuned"])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        raise SystemExit("bench_quack_mlp.py times Hopper GEMMs: it needs a GPU of compute capability 9.0 or newer")
    try:
        import quack
    except ImportError as e:
        raise SystemExit(f"bench_quack_mlp.py needs quack-kernels and nvidia-cutlass-dsl ({e}); "
                         "fix: reinstall the lock with scripts/setup_env.sh") from None
    from triton.testing import do_bench

    dev = torch.device("cuda")
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
              "quack": getattr(quack, "__version__", "?"), "batch": args.batch, "seq_len": args.seq_len, "rows": []}
    for preset in args.presets:
        d, f = PRESETS[preset]["d_model"], PRESETS[preset]["d_ff"]
        gen = torch.Generator(device=dev).manual_seed(0)
        x32 = torch.randn(args.batch * args.seq_len, d, device=dev, generator=gen)
        w32 = [torch.randn(o, i, device=dev, generator=gen) / i ** 0.5 for o, i in ((f, d), (f, d), (d, f))]
        want = make_runner(swiglu_mlp, tuple(t.clone().requires_grad_() for t in (x32, *w32)), backward=True)()
        inputs = tuple(t.to(torch.bfloat16).requires_grad_() for t in (x32, *w32))
        fns = {"compiled": torch.compile(swiglu_mlp), "quack_default": quack_mlp(tuned=False),
               "quack_tuned": quack_mlp(tuned=True)}
        for name in args.variants:
            row = {"preset": preset, "variant": name, "tokens": args.batch * args.seq_len, "d_model": d, "d_ff": f}
            result["rows"].append(row)
            fwd, fwd_bwd = make_runner(fns[name], inputs, backward=False), make_runner(fns[name], inputs, backward=True)
            try:
                got = fwd_bwd()  # compiles (and autotunes) before the timing
            except Exception as e:  # one variant failing (a compiler error, say) leaves the others' figures
                row["error"] = f"{type(e).__name__}: {e}"
                print(f"{preset:5} {name:14} failed: {row['error']}", flush=True)
                continue
            row.update(fwd_ms=do_bench(fwd), fwd_bwd_ms=do_bench(fwd_bwd), rel_error=rel_error(got, want),
                       rel_error_out=rel_error(got[:1], want[:1]))
            print(f"{preset:5} {name:14} fwd {row['fwd_ms']:.3f} ms  fwd+bwd {row['fwd_bwd_ms']:.3f} ms  "
                  f"rel.err {row['rel_error']:.2e} (output {row['rel_error_out']:.2e})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
