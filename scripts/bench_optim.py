"""Optimizer-step time: our Muon + C3O against torch.optim.Muon + fused AdamW and fused AdamW alone.

    python3 scripts/bench_optim.py --presets 124m 350m --json optim.json       # on the GPU machine
    python3 scripts/bench_optim.py --device cpu --presets tiny --steps 2        # CPU smoke check

The parameters are the real SigmaLM ones of each preset (vocabulary 32768, tied embedding), built on
the device in the bf16 profile the trainer uses on a bf16 GPU (training/hardware.py: bf16 parameters,
C3O state dtype "auto" = the parameter dtype). Gradients are fixed random tensors, set once. Every
variant gets its own fresh model, is warmed up (bucket building, torch.compile, Triton autotuning),
then timed: ``--repeats`` runs of ``--steps`` consecutive ``step()`` calls, each call bracketed by
CUDA events; the table shows the median over all calls and the spread of the per-run medians.

Two clocks on the GPU, both printed:
  gpu      each run starts behind a sleep kernel long enough for the host to queue every step first
           (per step, twice the host's measured launch time, at least ~25 ms; the JSON's
           queue_ahead_ms_per_step), so the events time the GPU's work alone. This is the step's
           cost in training, where the host queues the optimizer while the GPU still runs the backward.
  launch   no sleep: the events also take in the host's launch time whenever the host is slower than
           the GPU (many small kernels), which is what a loop with nothing else queued would see.

Then ``--sustain-s`` seconds of back-to-back steps (2 on the GPU, none on the CPU by default), with
the trainer's ResourceSampler reading NVML every 50 ms: ms per step over that stretch and the SM
clock and board power it ran at. The timed runs above are too short to sample; this shows whether
the optimizer alone runs at the card's full clock, where in training (at the power limit) it
does not (PERFORMANCE.md, "What bounds the step").

``--profile DIR`` adds a profile of 3 steps per variant: its kernels by device time, each with the host
ops that launched it (``scripts/bench_train.py``'s ``profile``).

Variants:
  ours ns=torch|triton        Muon (stacked buckets, Newton-Schulz reference or Triton kernel) + C3O
                              (bf16 state, cautious); on CUDA the elementwise parts of both through
                              torch.compile (build_optimizers(compile=True))
  ours ns=compiled            the Newton-Schulz reference under torch.compile
  ... +ok                     the same with the sync-free guard: step(ok) with ok a device tensor
  ours ns=torch eager         no torch.compile anywhere in the optimizer (what --compile off runs)
  torch Muon + fused AdamW    torch.optim.Muon (one matrix at a time) on the block matrices,
                              torch.optim.AdamW(fused=True) on the rest
  fused AdamW (all)           torch.optim.AdamW(fused=True) on every parameter
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import profile  # noqa: E402

from model.config import from_preset  # noqa: E402
from model.decoder import SigmaLM  # noqa: E402
from training.metrics import ResourceSampler  # noqa: E402
from training.optim import build_optimizers, split_params, zeropower_via_newtonschulz  # noqa: E402

VOCAB = 32768
MUON_LR, C3O_LR, WEIGHT_DECAY, BETAS = 0.02, 3e-3, 0.1, (0.9, 0.95)


def make_model(preset: str, device: torch.device) -> SigmaLM:
    """The preset's SigmaLM on ``device`` in the bf16 profile (bf16 params on CUDA, fp32 on CPU), grads set."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = SigmaLM(from_preset(preset, vocab_size=VOCAB, max_seq_len=2048))
    gen = torch.Generator(device=device).manual_seed(1)
    for p in model.parameters():
        p.data = p.data.to(dtype)
        p.grad = torch.randn(p.shape, device=device, dtype=dtype, generator=gen)
    return model


def variants(device: torch.device) -> dict[str, Callable[[SigmaLM], Callable[[], None]]]:
    """name -> (model -> a zero-argument optimizer step)."""
    on_cuda = device.type == "cuda"
    ok = torch.ones((), dtype=torch.bool, device=device)

    def ours(ns: str, guard: bool, compile: bool) -> Callable[[SigmaLM], Callable[[], None]]:
        def build(model: SigmaLM) -> Callable[[], None]:
            ns_fn = None
            if ns == "triton":
                from model.kernels import newton_schulz

                ns_fn = newton_schulz.triton_impl
            elif ns == "compiled":
                ns_fn = torch.compile(zeropower_via_newtonschulz, fullgraph=True, dynamic=False)
            pair = build_optimizers(
                model, lr=C3O_LR, muon_lr=MUON_LR, weight_decay=WEIGHT_DECAY, betas=BETAS,
                c3o_state_dtype=next(model.parameters()).dtype, c3o_cautious=True, muon_momentum=0.95,
                ns_steps=5, ns_fn=ns_fn, compile=compile,
            )  # fmt: skip
            return (lambda: pair.step(ok)) if guard else pair.step

        return build

    def torch_muon_adamw(model: SigmaLM) -> Callable[[], None]:
        split = split_params(model)
        muon = torch.optim.Muon([p for _, p in split.muon], lr=MUON_LR, weight_decay=WEIGHT_DECAY)
        adamw = torch.optim.AdamW([p for _, p in split.c3o], lr=C3O_LR, betas=BETAS, fused=on_cuda)

        def step() -> None:
            muon.step()
            adamw.step()

        return step

    def fused_adamw(model: SigmaLM) -> Callable[[], None]:
        return torch.optim.AdamW(model.parameters(), lr=C3O_LR, betas=BETAS, fused=on_cuda).step

    table: dict[str, Callable[[SigmaLM], Callable[[], None]]] = {}
    for ns in ("torch", "triton") if on_cuda else ("torch",):
        table[f"ours ns={ns}"] = ours(ns, guard=False, compile=on_cuda)
        table[f"ours ns={ns} +ok"] = ours(ns, guard=True, compile=on_cuda)
    if on_cuda:
        table["ours ns=compiled"] = ours("compiled", guard=False, compile=True)
        table["ours ns=torch eager"] = ours("torch", guard=False, compile=False)
    table["torch Muon + fused AdamW"] = torch_muon_adamw
    table["fused AdamW (all)"] = fused_adamw
    return table


# GPU clock cycles to sleep per queued step, at least: ~25 ms at 2 GHz. A variant whose host needs
# longer to launch a step (torch.optim.Muon's per-matrix loop, ~35 ms on an H100 machine) gets twice
# its measured launch time (queue_ahead_cycles), so the GPU still finds every step queued.
QUEUE_AHEAD_CYCLES_PER_STEP = 50_000_000
SLEEP_CYCLES_PER_S = 2.0e9  # the sleep counts SM cycles; an H100 runs at most 1.98 GHz


def queue_ahead_cycles(step: Callable[[], None], steps: int = 3) -> int:
    """Sleep cycles per step that cover the host's launch time of ``step`` twice over (GPU only)."""
    torch.cuda._sleep(QUEUE_AHEAD_CYCLES_PER_STEP * steps)  # the GPU is busy: launches never wait on it
    start = time.perf_counter()
    for _ in range(steps):
        step()
    host_s = (time.perf_counter() - start) / steps
    torch.cuda.synchronize()
    return max(QUEUE_AHEAD_CYCLES_PER_STEP, int(2 * host_s * SLEEP_CYCLES_PER_S))


def time_steps(step: Callable[[], None], device: torch.device, steps: int, queue_ahead: int = 0) -> list[float]:
    """Milliseconds of each of ``steps`` consecutive calls (CUDA events on the GPU, wall clock on CPU).

    ``queue_ahead``: sleep cycles per step to start behind (:func:`queue_ahead_cycles`), so the GPU
    finds every step queued and the events time its work alone; 0: no sleep.
    """
    if device.type != "cuda":
        out = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)
    ]
    if queue_ahead:
        torch.cuda._sleep(queue_ahead * steps)
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


# Sustained runs: the host waits for the GPU every this many steps, so it never queues more than that.
SUSTAIN_SYNC_EVERY = 20


def sustained(step: Callable[[], None], device: torch.device, seconds: float) -> dict[str, float | None]:
    """Back-to-back steps for ``seconds``: ms per step, and NVML's SM clock and power (None without them)."""
    sampler = ResourceSampler(device, interval_s=0.05)
    sampler.read()  # drop anything sampled before the first step
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
        if device.type == "cuda" and count % SUSTAIN_SYNC_EVERY == 0:
            torch.cuda.synchronize()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    reading = sampler.read()
    sampler.close()
    return {"sustained_ms": elapsed * 1e3 / count, "sustained_steps": count,
            "sm_clock_mhz": reading["gpu_sm_clock_mhz"], "power_w": reading["gpu_power_w"]}


def bench(
    preset: str,
    device: torch.device,
    *,
    steps: int,
    repeats: int,
    warmup: int,
    sustain_s: float = 0.0,
    only: list[str] | None = None,
    profile_dir: Path | None = None,
) -> list[dict]:
    rows = []
    for name, build in variants(device).items():
        if only is not None and name not in only:
            continue
        # Every variant compiles the same optimizer functions for its own shapes: start each from an
        # empty Dynamo cache so the per-function recompile limit counts one variant, as in training.
        torch._dynamo.reset()
        model = make_model(preset, device)
        step = build(model)
        for _ in range(warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        row = {"preset": preset, "variant": name, "steps": steps, "repeats": repeats}
        clocks = ("gpu", "launch") if device.type == "cuda" else ("launch",)
        for clock in clocks:
            sleep = queue_ahead_cycles(step) if clock == "gpu" else 0
            if sleep:
                row["queue_ahead_ms_per_step"] = sleep / SLEEP_CYCLES_PER_S * 1e3
            runs = [time_steps(step, device, steps, queue_ahead=sleep) for _ in range(repeats)]
            medians = [statistics.median(r) for r in runs]
            row[f"{clock}_median_ms"] = statistics.median([t for r in runs for t in r])
            row[f"{clock}_run_medians_ms"] = medians
        row["median_ms"] = row[f"{clocks[0]}_median_ms"]
        if sustain_s > 0:
            row.update(sustained(step, device, sustain_s))
        if profile_dir is not None:
            slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
            profile(step, device, profile_dir / f"optim_{preset}_{slug}.txt")
        rows.append(row)
        line = f"{preset:>5}  {name:<28} " + "   ".join(
            f"{clock} {row[f'{clock}_median_ms']:8.3f} ms (runs {min(row[f'{clock}_run_medians_ms']):.3f}-"
            f"{max(row[f'{clock}_run_medians_ms']):.3f})" for clock in clocks)
        if sustain_s > 0:
            clock_mhz, power = row["sm_clock_mhz"], row["power_w"]
            line += (f"   sustained {row['sustained_ms']:8.3f} ms"
                     + (f" at {clock_mhz:.0f} MHz, {power:.0f} W" if clock_mhz is not None and power is not None else ""))
        print(line)
        del step, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["124m", "350m"], help="model presets (model/config.py)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per run (median taken)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 5; 2 on cpu)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps first: compile, autotune, buckets (default 5; 1 on cpu)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--variants", nargs="+", default=None, help="time only these variants (names as printed)")
    ap.add_argument("--sustain-s", type=float, default=None,
                    help="seconds of back-to-back steps with NVML clock and power sampled (default 2; 0 on cpu)")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="also profile 3 steps of each variant: kernel tables (with their host ops) under DIR")
    args = ap.parse_args()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    repeats = args.repeats if args.repeats is not None else 5 if on_cuda else 2
    warmup = args.warmup if args.warmup is not None else 5 if on_cuda else 1
    sustain_s = args.sustain_s if args.sustain_s is not None else 2.0 if on_cuda else 0.0
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "command": " ".join(sys.argv),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    rows = []
    for preset in args.presets:
        rows += bench(preset, device, steps=args.steps, repeats=repeats, warmup=warmup, sustain_s=sustain_s,
                      only=args.variants, profile_dir=args.profile)
        if args.json is not None:  # as it goes: a run cut short still leaves what it measured
            args.json.write_text(json.dumps({"env": env, "results": rows}, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({"env": env, "results": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
