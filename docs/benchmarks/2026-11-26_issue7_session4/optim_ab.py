"""The one-process A/B behind h100_optim_ns_scale_fold_*.json (kept as evidence; not one of the tools).

Times the whole optimizer step (Muon + C3O, Newton-Schulz in Triton, with the guard: what the
trainer runs) on scripts/bench_optim.py's GPU clock. The four variants are built and warmed up
first, then timed in 7 interleaved rounds of 10 steps; the figures are medians.

  old ns, apply         the Newton-Schulz kernel before the scale fold (commit 1cb6208)
  new ns, apply         with the fold (commit 62e5496): what the trainer runs now
  new ns, apply contig  + Muon's update pass copies the tall buckets' output to contiguous first
  new ns, apply each    + one ``p.copy_`` per parameter instead of one ``_foreach_copy_``

Run it from this folder, with ns_old.py beside it:

    git show 1cb6208:training/kernels/newton_schulz.py \\
        | sed 's/eco_train::newton_schulz_iterate"/eco_train::newton_schulz_iterate_old"/' > ns_old.py
    python3 optim_ab.py 124m OUT_DIR

(the rename keeps the two ``torch.library`` ops apart). It also profiles two variants into OUT_DIR.
The kernels have since moved from ``training/kernels/`` to ``model/kernels/``; the imports here
follow the current tree.
"""

import json
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]  # docs/benchmarks/<run>/ -> the repository
sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(HERE)]

import bench_optim  # noqa: E402
import bench_train  # noqa: E402
import ns_old  # noqa: E402

from model.kernels import newton_schulz as ns_new  # noqa: E402
from training.optim import build_optimizers  # noqa: E402
from training.optim import muon as muon_module  # noqa: E402

Tensor = torch.Tensor


def apply_contiguous(
    params: list[list[Tensor]], ortho: Tensor, lr: Tensor, decay: Tensor, *, tall: tuple, lr_ratios: tuple
) -> None:
    rows = ortho.split([len(p) for p in params])
    targets, new = [], []
    for bucket, part, is_tall, ratio in zip(params, rows, tall, lr_ratios, strict=True):
        alpha = lr * -ratio
        source = part.mT.contiguous() if is_tall else part
        for p, o in zip(bucket, source.unbind(0), strict=True):
            targets.append(p)
            new.append(p.float() * decay + o.float() * alpha)
    torch._foreach_copy_(targets, new)


def apply_each(
    params: list[list[Tensor]], ortho: Tensor, lr: Tensor, decay: Tensor, *, tall: tuple, lr_ratios: tuple
) -> None:
    rows = ortho.split([len(p) for p in params])
    for bucket, part, is_tall, ratio in zip(params, rows, tall, lr_ratios, strict=True):
        alpha = lr * -ratio
        for p, o in zip(bucket, (part.mT if is_tall else part).unbind(0), strict=True):
            p.copy_(p.float() * decay + o.float() * alpha)


def main() -> None:
    preset, out = sys.argv[1], Path(sys.argv[2])
    variants = {
        "old ns, apply": (ns_old.triton_impl, muon_module._fused_apply),
        "new ns, apply": (ns_new.triton_impl, muon_module._fused_apply),
        "new ns, apply contig": (ns_new.triton_impl, apply_contiguous),
        "new ns, apply each": (ns_new.triton_impl, apply_each),
    }
    device = torch.device("cuda")
    ok = torch.ones((), dtype=torch.bool, device=device)
    steps = {}
    for name, (ns_fn, apply) in variants.items():
        torch._dynamo.reset()
        muon_module._fused_apply = apply  # Muon compiles it when built
        model = bench_optim.make_model(preset, device)
        pair = build_optimizers(
            model, lr=bench_optim.C3O_LR, muon_lr=bench_optim.MUON_LR, weight_decay=bench_optim.WEIGHT_DECAY,
            betas=bench_optim.BETAS, c3o_state_dtype=torch.bfloat16, c3o_cautious=True, muon_momentum=0.95,
            ns_steps=5, ns_fn=ns_fn, compile=True,
        )  # fmt: skip
        steps[name] = lambda pair=pair: pair.step(ok)
        for _ in range(5):
            steps[name]()
        torch.cuda.synchronize()
        if name in ("old ns, apply", "new ns, apply contig"):
            label = name.replace(",", "").replace(" ", "_")
            bench_train.profile(steps[name], device, out / f"prof_{preset}_{label}.txt", steps=5)
    runs: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(7):
        for name, step in steps.items():
            runs[name].append(statistics.median(bench_optim.time_steps(step, device, 10, queue_ahead=True)))
    medians = {name: statistics.median(times) for name, times in runs.items()}
    for name, times in runs.items():
        print(f"{preset} {name:24} median {medians[name]:.3f} ms  runs {min(times):.3f}-{max(times):.3f}")
    (out / f"optim_ab_{preset}.json").write_text(
        json.dumps({"device": torch.cuda.get_device_name(), "runs": runs, "median": medians})
    )


if __name__ == "__main__":
    main()
