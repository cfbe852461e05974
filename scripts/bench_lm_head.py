"""The LM head + cross-entropy, forward and backward: ours against quack's fused-epilogue pipelines.

    python3 scripts/bench_lm_head.py --presets 124m 350m --json lm_head.json    # on the GPU machine

Why: in the 124m step the head is three matmuls over a 32,768 vocabulary (~23% of the step's matmul
FLOPs) plus our cross-entropy row kernel, which reads each chunk's logits and writes their gradient
back (~3.8 ms a step, PERFORMANCE.md "What bounds the step"). quack (``quack-kernels``, already in
the lock for ``--fused-mlp``) has a head that never runs that pass: its logits GEMM writes
``exp(logit - tile max)`` and per-tile sums from its epilogue, a small glue kernel finishes each row,
and the two gradient GEMMs rescale those values in their mainloop (``scaled_exp_linear_cross_entropy``,
bf16 only). This times, per micro-batch of ``--batch`` x ``--seq-len`` tokens, medians of
``triton.testing.do_bench``:

* ``ours_fp8_grad_w``: ``model.kernels.linear_ce.triton_impl_fp8_grad_w`` compiled, what ``sigma`` runs
  (``--fp8-lm-head auto``, since session 23): all three matmuls in FP8, the weight gradient's from a
  transposed copy of the e5m2 gradient;
* ``ours_fp8``: ``triton_impl_fp8`` compiled: FP8 logits and input gradient, bf16 weight gradient (the FP8
  head before session 23; ``bench_train.py``'s ``sigma_fp8_bf16_grad_w``);
* ``ours_bf16``: ``triton_impl``, the same chunks with bf16 matmuls (``--fp8-lm-head off``);
* ``quack_scaled_exp``: ``quack.linear_cross_entropy.scaled_exp_linear_cross_entropy``;
* ``quack_chunked``: ``quack.linear_cross_entropy.chunked_linear_cross_entropy`` without the scaled-exp
  route (quack's GEMMs, default configs, around its own cross-entropy kernel);

with each one's relative error ``||got - fp32|| / ||fp32||`` over the loss and both gradients, against
the head evaluated in fp32. A variant that fails (quack missing, a compiler error) is reported and the
others still run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_kernels import make_runner, rel_error  # noqa: E402

from model.config import PRESETS  # noqa: E402
from model.decoder import IGNORE_INDEX, linear_cross_entropy_reference  # noqa: E402

VARIANTS = ("ours_fp8_grad_w", "ours_fp8", "ours_bf16", "quack_scaled_exp", "quack_chunked")
OURS = {"ours_fp8": "triton_impl_fp8", "ours_fp8_grad_w": "triton_impl_fp8_grad_w", "ours_bf16": "triton_impl"}


def variant(name: str) -> Callable:
    """``fn(h_ND, weight_VD, targets_N) -> mean loss`` for ``name``."""
    if name in OURS:
        from model.kernels import linear_ce

        # compiled as the model runs it: the FP8 casts fused into their producers
        return torch.compile(getattr(linear_ce, OURS[name]), dynamic=False)
    from quack import linear_cross_entropy as lce

    if name == "quack_scaled_exp":
        return lambda h, w, t: lce.scaled_exp_linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX)
    return lambda h, w, t: lce.chunked_linear_cross_entropy(h, w, t, ignore_index=IGNORE_INDEX, tuned=False,
                                                            use_scaled_exp=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["124m", "350m"], choices=list(PRESETS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        raise SystemExit("bench_lm_head.py times Hopper kernels: it needs a GPU of compute capability 9.0 or newer")
    from triton.testing import do_bench

    dev = torch.device("cuda")
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
              "batch": args.batch, "seq_len": args.seq_len, "vocab": args.vocab, "rows": []}
    try:
        import quack
        result["quack"] = getattr(quack, "__version__", "?")
    except ImportError as e:
        result["quack"] = f"not importable: {e}"
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    N, V = args.batch * args.seq_len, args.vocab
    for preset in args.presets:
        D = PRESETS[preset]["d_model"]
        gen = torch.Generator(device=dev).manual_seed(0)
        h32 = torch.randn(N, D, device=dev, generator=gen)
        w32 = 0.02 * torch.randn(V, D, device=dev, generator=gen)
        targets = torch.randint(0, V, (N,), device=dev, generator=gen)
        targets[::16] = IGNORE_INDEX  # some ignored rows, as prompt masking or padding produce
        h, w = (t.to(torch.bfloat16).requires_grad_() for t in (h32, w32))
        # the fp32 head on the bf16 inputs: what each variant should compute, without its rounding
        want = make_runner(linear_cross_entropy_reference,
                           (h.detach().float().requires_grad_(), w.detach().float().requires_grad_(), targets),
                           backward=True)()
        for name in args.variants:
            row = {"preset": preset, "variant": name, "tokens": N, "d_model": D, "vocab": V}
            result["rows"].append(row)
            try:
                fn = variant(name)
                fwd_bwd = make_runner(fn, (h, w, targets), backward=True)
                fwd_bwd()  # the first call compiles (and quack's JIT builds its kernels) outside the timing
                got = fwd_bwd()
            except Exception as e:  # one variant failing leaves the others' figures
                row["error"] = f"{type(e).__name__}: {e}"[:500]
                print(f"{preset:5} {name:17} failed: {row['error']}", flush=True)
                continue
            row.update(fwd_bwd_ms=do_bench(fwd_bwd), rel_error=rel_error(got, want),
                       rel_error_loss=rel_error(got[:1], want[:1]), loss=float(got[0]), loss_fp32=float(want[0]))
            print(f"{preset:5} {name:17} fwd+bwd {row['fwd_bwd_ms']:.3f} ms  rel.err {row['rel_error']:.2e} "
                  f"(loss {row['rel_error_loss']:.2e})", flush=True)
        del h, w, want
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
