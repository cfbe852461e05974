"""Tune quack's GEMM configs for the fused MLP at our presets' shapes, and keep them in the repository.

    python3 scripts/tune_fused_mlp.py                       # on the GPU model to tune for (an H100 here)
    python3 scripts/tune_fused_mlp.py --shapes 124m:65536 --into /tmp/tuned

Why: ``--fused-mlp`` (model/kernels/swiglu_mlp.py) pays off only with quack's autotuned GEMM configs,
and tuning them compiles and times every candidate config: ~3 minutes at the 124m shapes on an H100,
more at 350m, on a run's first start unless they ship (PERFORMANCE.md, "SwiGLU inside the matmuls through
quack").
The result is small: for each GEMM of the MLP, a JSON file of each config's timing, under a key that
hashes quack's version, the shapes and the config list (not the machine). Kept in
``model/kernels/quack_tuned/<GPU model>/``, they seed quack's cache at start (``use_cache_dir``), so a
first start compiles only the chosen configs.

Each ``PRESET:TOKENS`` shape runs the MLP of that preset's width, forward and backward, on TOKENS rows
(micro-batch rows x sequence length: what one forward of the trainer sees), through the trainer's own
``quack_mlp``. The defaults are what our runs train: ``bench_train.py`` (32 x 2048 tokens), the main job
``train_sigma_args.txt`` (32 x 1024) and the GPU tests' tiny runs. The cache starts from the shipped
configs, so shapes already shipped are not tuned again; after each shape, every config file in the cache
is copied into ``--into`` (a file already there with other content is replaced: the new timing wins),
except the seeded ones, and the shape is added to ``--into``'s ``shapes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import PRESETS  # noqa: E402
from model.kernels import swiglu_mlp  # noqa: E402

# PRESET:TOKENS, TOKENS = micro-batch rows x seq-len: bench_train.py (32 x 2048); train_sigma_args.txt's main
# job (32 x 1024); tests/test_gpu.py's tiny trainer runs (16 x 128, 8 x 128)
DEFAULT_SHAPES = ("124m:65536", "124m:32768", "350m:65536", "350m:32768", "tiny:2048", "tiny:1024")


def parse_shape(text: str) -> tuple[str, int]:
    preset, _, tokens = text.partition(":")
    if preset not in PRESETS or not tokens.isdigit() or int(tokens) <= 0:
        raise argparse.ArgumentTypeError(f"expected PRESET:TOKENS with PRESET one of {sorted(PRESETS)}; got {text!r}")
    return preset, int(tokens)


def timings(path: Path) -> str | None:
    """A tuned-config file's measured timings, as text (None if it has none): what no other tuning repeats."""
    try:
        return json.dumps(json.loads(path.read_text())["configs_timings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def collect(cache: Path, into: Path) -> int:
    """Copy every tuned-config file of ``cache`` into ``into`` (same layout); returns how many were new or changed.

    A file seeded from ``into`` is not copied back: under another Python its name and folder differ (the
    epilogue digest, see ``seed_tuned_configs``), but its timings are those of a file already there.
    """
    shipped = {timings(f) for f in into.glob("*/*.autotune.json")} - {None}
    changed = 0
    for src in sorted(cache.glob("*/*.autotune.json")):
        dest = into / src.parent.name / src.name
        if dest.exists() and dest.read_bytes() == src.read_bytes() or timings(src) in shipped:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        changed += 1
    return changed


def record_shape(into: Path, preset: str, tokens: int) -> None:
    """Add ``PRESET:TOKENS`` to ``into/shapes.json``, the list of shapes whose configs are there
    (:func:`model.kernels.swiglu_mlp.tuned_shapes` reads it)."""
    shapes = swiglu_mlp.tuned_shapes(into.name, source=into.parent) | {f"{preset}:{tokens}"}
    into.mkdir(parents=True, exist_ok=True)
    (into / "shapes.json").write_text(json.dumps(sorted(shapes)) + "\n")


def tune(preset: str, tokens: int, device: torch.device) -> dict:
    """One forward + backward of the preset's MLP on ``tokens`` rows (tuning what is not cached), then its time."""
    import triton.testing

    d_model, d_ff = PRESETS[preset]["d_model"], PRESETS[preset]["d_ff"]
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = ((tokens, d_model), (d_ff, d_model), (d_ff, d_model), (d_model, d_ff))  # x, w_gate, w_up, w_down
    x, w_gate, w_up, w_down = (
        (torch.randn(*s, device=device, generator=gen) / s[1] ** 0.5).to(torch.bfloat16).requires_grad_()
        for s in shapes)
    dy = torch.randn(tokens, d_model, device=device, generator=gen).to(torch.bfloat16)
    mlp = swiglu_mlp.quack_mlp(tuned=True)

    def step() -> None:
        mlp(x, w_gate, w_up, w_down).backward(dy)

    start = time.perf_counter()
    step()
    torch.cuda.synchronize(device)
    first_s = time.perf_counter() - start
    ms = triton.testing.do_bench(step, warmup=10, rep=50, grad_to_none=[x, w_gate, w_up, w_down])
    return {"preset": preset, "tokens": tokens, "d_model": d_model, "d_ff": d_ff,
            "first_call_s": round(first_s, 1), "fwd_bwd_ms": round(ms, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in DEFAULT_SHAPES],
                   metavar="PRESET:TOKENS")
    p.add_argument("--into", type=Path, default=None,
                   help=f"where the tuned configs go (default: {swiglu_mlp.TUNED_DIR}/<GPU model>)")
    p.add_argument("--cache", type=Path, default=None,
                   help="quack's cache folder for the tuning (default: QUACK_CACHE_DIR if set, else a new temporary "
                        "one); its compiled kernels speed a tuning up, and all its tuned configs are collected")
    p.add_argument("--json", type=Path, default=None, help="write the per-shape results here too")
    args = p.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < swiglu_mlp.MIN_CAPABILITY:
        raise SystemExit("tune_fused_mlp.py tunes quack's Hopper GEMMs: it needs a GPU of compute capability 9.0+")
    device = torch.device("cuda")
    gpu = swiglu_mlp.gpu_folder_name(device)
    into = args.into or swiglu_mlp.TUNED_DIR / gpu
    with tempfile.TemporaryDirectory(prefix="quack_tune_") as tmp:
        if args.cache:
            os.environ["QUACK_CACHE_DIR"] = str(args.cache)
        # seeded with what is shipped, before quack's import (use_cache_dir); a QUACK_CACHE_DIR set wins
        cache = swiglu_mlp.use_cache_dir(Path(tmp), device)
        problem = swiglu_mlp.import_problem()
        if problem:
            raise SystemExit(problem)
        import quack

        print(f"tune_fused_mlp: quack {quack.__version__}, {torch.cuda.get_device_name(device)}, cache {cache}, "
              f"into {into}", flush=True)
        results = []
        for preset, tokens in args.shapes:
            row = tune(preset, tokens, device)
            row["configs_written"] = collect(cache, into)
            record_shape(into, preset, tokens)
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"gpu": torch.cuda.get_device_name(device), "quack": quack.__version__,
                                         "torch": torch.__version__, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
