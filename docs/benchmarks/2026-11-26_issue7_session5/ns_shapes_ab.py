"""The A/B behind h100_ns_shapes_ab.json (kept as evidence; not one of the tools).

After the normalisation fold, scripts/bench_kernels.py timed the 350m 48 x (512, 1024) Newton-Schulz
case at 1.204 ms against 0.811 ms the round before (the other rows got faster). This times, in one
process and interleaved (7 rounds of triton.testing.do_bench medians), at every 124m and 350m
shape group:

  new       the kernel as it is (commit 62e5496 and later: the scale folded into the first step)
  old       the kernel before the fold (commit 1cb6208)
  compiled  the PyTorch reference under torch.compile (what bench_kernels compares against)

Run it from this folder, with ns_old.py beside it:

    git show 1cb6208:training/kernels/newton_schulz.py \\
        | sed 's/eco_train::newton_schulz_iterate"/eco_train::newton_schulz_iterate_old"/' > ns_old.py
    python3 ns_shapes_ab.py OUT.json
"""

import json
import statistics
import sys
from pathlib import Path

import torch
import triton

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2]), str(HERE)]

import ns_old  # noqa: E402

from model.kernels import newton_schulz as ns_new  # noqa: E402

ROUNDS = 7


def main() -> None:
    variants = {
        "new": ns_new.triton_impl,
        "old": ns_old.triton_impl,
        "compiled": torch.compile(ns_new.reference, fullgraph=True, dynamic=False),
    }
    rows = []
    for preset in ("124m", "350m"):
        for case in ns_new.bench_cases(preset):
            (G,) = case["make_inputs"]("cuda")
            for fn in variants.values():
                fn(G)  # compile, autotune
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(ROUNDS):
                for name, fn in variants.items():
                    times[name].append(triton.testing.do_bench(lambda fn=fn, G=G: fn(G), warmup=25, rep=100))
            row = {"case": case["name"], **{f"{n}_ms": statistics.median(t) for n, t in times.items()}}
            rows.append(row)
            print(f"{row['case']:<40}" + "".join(f"  {n} {row[f'{n}_ms']:.3f}" for n in variants), flush=True)
    Path(sys.argv[1]).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
