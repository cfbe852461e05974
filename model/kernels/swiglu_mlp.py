"""The SwiGLU MLP inside quack's fused Hopper GEMMs (``--fused-mlp``).

``reference`` is :func:`model.decoder.swiglu_mlp_reference`: three matmuls, with SiLU and the product
between them (what ``torch.compile`` gives to cuBLAS and one Inductor kernel each way). ``quack_mlp``
runs the same maths in two GEMMs of quack (``quack-kernels``, Tri Dao's CuTe-DSL kernels):

* the gate and up projections are one GEMM against ``cat[W_gate; W_up]`` whose epilogue writes
  ``h = silu(g) * u`` (and keeps ``g, u`` for the backward), so ``h`` never makes a second trip
  through memory;
* the down projection's backward GEMM turns ``dh`` into ``dg, du`` in its epilogue.

Both are warp-specialised persistent GEMMs; their configs are autotuned per shape at the first call,
unless the configs tuned for that shape on this GPU model ship with us (:data:`TUNED_DIR`): then only the
chosen configs compile.
On the H100 at the 124m shapes this makes a block's MLP 1.13x faster than the compiled reference
(forward + backward) and the training step ~5% faster (PERFORMANCE.md, "SwiGLU inside the matmuls").
The gate and up weights stay separate parameters (Muon orthogonalises each); their concatenation is
a bf16 copy of 2 x d_ff x d_model per forward, ~6 MB a block at 124m.

quack compiles each GEMM config with the CuTe-DSL compiler into ``.o`` files and keeps them, and its
autotuning results, under :func:`use_cache_dir` (the trainer: ``<checkpoint dir>/compile_cache/quack``),
so a restart neither recompiles nor re-tunes; that folder starts with the shipped tuned configs.
:func:`startup_check` compiles and runs the training shape's MLP forward and backward against the reference
before a run relies on it (a broken compiler install or a bundle that lost a library is then a start-up
message, not a crash in the first step); training then reuses the kernels it compiled.

Shape suffix legend: M rows (tokens), D d_model, F d_ff.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from model.decoder import swiglu_mlp_reference

reference = swiglu_mlp_reference

MIN_CAPABILITY = (9, 0)  # quack's warp-specialised GEMMs are Hopper's (sm_90) and later
AUTO_CAPABILITIES = ((9, 0),)  # where --fused-mlp auto turns it on: measured there (H100)
# ... and for models this wide or wider (the 124m preset's width and up, where it was measured). Its
# autotuning costs minutes at the first start whatever the width, while the time it saves a step grows
# with the width, so a narrow model would wait for it and gain nearly nothing.
AUTO_MIN_D_MODEL = 768
DIM_MULTIPLE = 16  # d_model and d_ff: TMA wants 16-byte-aligned rows (8 bf16 elements); 16 keeps a margin


def quack_mlp(tuned: bool = True) -> Callable:
    """The SwiGLU MLP through quack's gated GEMMs, with :data:`reference`'s signature.

    ``tuned``: autotune each shape's GEMM configs at its first call (~3 min at 124m on the H100 with
    nothing cached; the result is cached, and the presets' shapes come tuned, see :func:`use_cache_dir`), else
    quack's default configs, which gain little.
    Tuning is per shape, so only training steps (grad enabled: one shape a run) take the fused path;
    evaluation and sampling, under ``no_grad`` with a new length per sampled token, run the reference.
    """
    from quack.mlp import mlp_func

    def swiglu_mlp(x_MD: torch.Tensor, w_gate_FD: torch.Tensor, w_up_FD: torch.Tensor,
                   w_down_DF: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # evaluation and sampling: shapes that vary would each be tuned
            return reference(x_MD, w_gate_FD, w_up_FD, w_down_DF)
        # concat_layout: the gate's rows first, then the up's (quack's layout for a concatenated weight)
        return mlp_func(x_MD, torch.cat([w_gate_FD, w_up_FD]), w_down_DF, activation="swiglu", tuned=tuned,
                        concat_layout=True)

    return swiglu_mlp


# quack's tuned GEMM configs for the shapes our presets train, as its autotuner writes them
# (``<GPU model>/<key>/<function>.autotune.json``), collected on that GPU model by scripts/tune_fused_mlp.py.
# :func:`use_cache_dir` seeds quack's cache with them, so a first start compiles only the chosen configs
# instead of tuning for minutes.
TUNED_DIR = Path(__file__).with_name("quack_tuned")

# The GEMM epilogues of quack's mlp_func with SwiGLU and no bias (quack 0.6.5: gemm_gated's linear_act_mod in
# the forward, gemm_dgated's dgated_mod in the backward), by their function's name: how to build each here.
# An epilogue's tuned configs are filed under a digest of its generated code, which depends on the Python that
# built it (bytecode), so a shipped file names the tuning machine's digest and seeding swaps in this one's.
MLP_EPILOGUES = {
    "linear_act_epi": ("linear_act_mod", dict(gated=True, has_c=False, has_rowvec=False, has_colvec=False, sr=False,
                                              has_alpha=False)),
    "dgated_epi": ("dgated_mod", dict(has_scale=False, has_reduce=False)),
}


def tuned_shapes(gpu: str, source: Path = TUNED_DIR) -> frozenset[str]:
    """The ``PRESET:TOKENS`` shapes whose configs ship for GPU model ``gpu`` (its ``shapes.json``, written by
    scripts/tune_fused_mlp.py); empty where none ship."""
    try:
        return frozenset(json.loads((source / gpu / "shapes.json").read_text()))
    except (OSError, ValueError, TypeError):
        return frozenset()


def gpu_folder_name(device: torch.device) -> str:
    """The GPU model as a folder name (tuned configs are per GPU model): ``NVIDIA_H100_80GB_HBM3``."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", gpu)


def autotune_folder(version: str, key: str, configs: list[str]) -> str:
    """The folder quack's autotuner files a result under: a hash of its version, tuning key and config list.

    quack.autotuner.Autotuner.check_disk_cache: sha256 of ``"-".join([version, key, *configs])`` in base32,
    ``configs`` in the order the tuner holds them. :func:`seed_tuned_configs` checks this against the shipped
    files' folders before it trusts it.
    """
    digest = hashlib.sha256("-".join([version, key, *configs]).encode()).digest()
    return base64.b32encode(digest).decode().rstrip("=")


def seed_tuned_configs(cache_dir: Path, gpu: str, source: Path = TUNED_DIR) -> int:
    """Write the shipped tuned configs of GPU model ``gpu`` into quack's cache where it has none; returns how many.

    Each shipped file is quack's own result, refiled for this process. Its folder hashes the config list in
    the tuner's order, which the file does not keep (it lists them as they were timed), so the order is taken
    from quack's config space (a pruned tuner keeps its order). Every shipped file must hash back to its own
    folder that way; if one does not (another quack version, or quack files its results differently now),
    nothing is seeded and quack tunes as it would without us. An epilogue GEMM's key and name then get this
    Python's digest of the epilogue (:data:`MLP_EPILOGUES`) and its folder is recomputed. A damaged shipped
    file, or a quack that does not import, also seeds nothing (the latter is :func:`import_problem`'s to
    report). A result already in the cache (tuned here, or seeded before) is kept: this never overwrites. Each
    file appears whole (written beside, then renamed), so a process reading the cache meanwhile never sees
    half of one.
    """
    entries = []
    for src in sorted((source / gpu).glob("*/*.autotune.json")):
        try:
            entry = json.loads(src.read_text())
            entries.append((src, entry, entry["key"], [config for config, _ in entry["configs_timings"]]))
        except (OSError, ValueError, KeyError, TypeError):  # a damaged file: quack would fail on it
            return 0
    if not entries:
        return 0
    try:
        import quack
        from quack.autotuner import AutotuneConfig
        from quack.epilogue import library
        from quack.gemm_config import get_all_configs
    except Exception:  # quack does not import here: import_problem says why, where it matters
        return 0

    def config_order(hint: str | None) -> dict[str, int]:
        return {str(AutotuneConfig(config=c)): i for i, c in enumerate(get_all_configs(epilogue=hint))}

    plain_order = config_order(None)  # quack.gemm_interface.gemm_tuned's list
    plan = []
    for src, entry, key, configs in entries:
        name = src.name
        mod = None
        if name.startswith("mod_"):
            builder = MLP_EPILOGUES.get(name.removeprefix("mod_").rsplit("_", 1)[0])
            if builder is None:
                return 0
            mod = getattr(library, builder[0])("swiglu", **builder[1])
        # quack.gemm_runtime.autotune._config_space: the gated hint for the paired-accumulator modes
        order = plain_order if mod is None else config_order(
            "gated" if mod.mode in ("acc_pair", "packed_cd_b16x2") else None)
        configs.sort(key=lambda c: order.get(c, len(order)))
        if autotune_folder(quack.__version__, key, configs) != src.parent.name:
            return 0
        if mod is not None:
            shipped_digest = re.match(r"\('([0-9a-f]{64})'", key)
            if shipped_digest is None:
                return 0
            entry["key"] = key = key.replace(shipped_digest[1], mod.semantic_digest)
            name = f"mod_{mod._ident}"[:150] + ".autotune.json"  # quack: f"{fn.__name__[:150]}.autotune.json"
        plan.append((cache_dir / autotune_folder(quack.__version__, key, configs) / name, entry))
    copied = 0
    for dest, entry in plan:
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        part.write_text(json.dumps(entry))
        os.replace(part, dest)
        copied += 1
    return copied


def use_cache_dir(root: Path | None, device: torch.device) -> Path:
    """Keep quack's compiled kernels and autotuning results under ``root/<GPU name>``; returns the folder used.

    A ``QUACK_CACHE_DIR`` already set (by the user, or the tests sharing one) wins over ``root``; with neither,
    quack's own default folder is used. Autotuning results are kept there (``QUACK_CACHE_AUTOTUNING=1`` unless
    the user set it), and the folder is seeded with the tuned configs shipped for this GPU model
    (:func:`seed_tuned_configs`). Call it before quack is first imported: its autotuners read
    ``QUACK_CACHE_AUTOTUNING`` when they are built (at import).
    """
    gpu = gpu_folder_name(device)
    if os.environ.get("QUACK_CACHE_DIR"):
        path = Path(os.environ["QUACK_CACHE_DIR"])
    elif root is not None:
        path = root / gpu
    else:  # quack's default (quack.autotuner.default_cache_dir, not imported here: see above)
        path = Path(os.environ.get("QUACK_HOME") or Path.home()) / ".quack" / "cache"
    path.mkdir(parents=True, exist_ok=True)
    os.environ["QUACK_CACHE_DIR"] = str(path)
    os.environ.setdefault("QUACK_CACHE_AUTOTUNING", "1")
    if "quack.cache" in sys.modules:  # imported already: its compiled-kernel cache reads this at each compile
        sys.modules["quack.cache"].CACHE_DIR = str(path)
    if os.environ["QUACK_CACHE_AUTOTUNING"] == "1":
        seed_tuned_configs(path, gpu)
    return path


def auto_applies(capability: tuple[int, int], d_model: int) -> bool:
    """Whether ``--fused-mlp auto`` wants it for this GPU and model width (before :func:`problem`'s checks)."""
    return capability in AUTO_CAPABILITIES and d_model >= AUTO_MIN_D_MODEL


def problem(model: torch.nn.Module) -> str | None:
    """Why this model cannot run its MLPs through quack where its weights are (the fix is named), or None.

    Whether quack imports is :func:`import_problem`'s question; whether it computes right, :func:`startup_check`'s.
    """
    weight = next(model.parameters())
    cfg = model.cfg
    if weight.device.type != "cuda":
        return f"--fused-mlp on runs quack's GPU GEMMs; this run is on {weight.device.type}. Use --fused-mlp off."
    capability = torch.cuda.get_device_capability(weight.device)
    if capability < MIN_CAPABILITY:
        return (f"--fused-mlp on needs a GPU of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or "
                f"later (Hopper); {torch.cuda.get_device_name(weight.device)} has {capability}. Use --fused-mlp off.")
    if weight.dtype != torch.bfloat16:
        return f"--fused-mlp on runs bf16 GEMMs; this run's weights are {weight.dtype}. Use --fused-mlp off."
    if cfg.bitnet:
        return ("--fused-mlp on replaces the MLP's plain matmuls, but BitNet's block linears quantise theirs. "
                "Use --fused-mlp off with --bitnet-1-58 on.")
    if cfg.d_model % DIM_MULTIPLE or cfg.d_ff % DIM_MULTIPLE:
        return (f"--fused-mlp on needs d_model and d_ff to be multiples of {DIM_MULTIPLE}; this model has "
                f"{cfg.d_model} and {cfg.d_ff}. Use --fused-mlp off.")
    return None


def import_problem() -> str | None:
    """Why quack cannot be imported here (the fix is named), or None."""
    from model.kernels import cute_dsl_import_problem

    return cute_dsl_import_problem("quack.mlp", "the fused MLP needs quack-kernels", "--fused-mlp")


@torch.enable_grad()  # the fused path is the training one (see quack_mlp)
def startup_check(device: torch.device, tolerance: float = 2e-2,
                  shape: tuple[int, int, int, int] | None = None) -> str | None:
    """Compile and run a fused MLP forward and backward; None if it matches the reference, else why not.

    ``shape``: ``(rows, seq_len, d_model, d_ff)``, the training micro-batch and model. The check then runs
    the very GEMMs training runs, with their tuned configs (shipped, cached or tuned here), so the first
    training step finds them compiled. Without it: a small MLP (256 tokens, d_model 128, d_ff 256) with
    quack's default configs, which costs only their compiles. ``tolerance`` bounds the relative error of the
    output and of each gradient against the fp32 reference (bf16 inputs give ~5e-3).
    """
    from model.kernels import relative_error_problem

    rows, seq_len, d_model, d_ff = shape or (1, 256, 128, 256)
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = ((rows, seq_len, d_model), (d_ff, d_model), (d_ff, d_model), (d_model, d_ff))  # x, gate, up, down
    fp32 = [torch.randn(*s, device=device, generator=gen) / s[-1] ** 0.5 for s in shapes]
    try:
        bf16 = [t.to(torch.bfloat16).requires_grad_() for t in fp32]
        out = quack_mlp(tuned=shape is not None)(*bf16)
        out.float().square().sum().backward()
        got = [out, *(t.grad for t in bf16)]
        fp32 = [t.clone().requires_grad_() for t in fp32]
        want_out = reference(*fp32)
        want_out.square().sum().backward()
        want = [want_out, *(t.grad for t in fp32)]
        off = relative_error_problem(("output", "dx", "dW_gate", "dW_up", "dW_down"), got, want, tolerance)
        if off is not None:
            return f"quack's fused MLP is off from the reference: {off}"
    except Exception as e:
        return f"quack's fused MLP failed its start-up check: {type(e).__name__}: {e}"
    return None
