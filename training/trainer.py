"""The training loop: set-up in named steps, then a loop of train_step / evaluate / maybe_* calls.

Pretraining only for now; post-training phases (GRPO, Hydra adapters) will run from the same loop
between steps through `maybe_run_phase`-style hooks on the same live weights. Everything that
changes as the run goes lives in `TrainState` and the objects it names, and all of it goes into a
checkpoint, so a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import psutil
import torch

from model import kernels
from model.bitnet import BitLinear
from model.config import PRESETS, ModelConfig, from_preset
from model.decoder import SigmaLM
from model.hf_compat import export_hf, load_hf
from training import console, faults
from training.checkpoint import (
    CheckpointError,
    Snapshot,
    find_resumable,
    quarantine_count,
    read_checkpoint,
    sha256_file,
    verify_checkpoint,
)
from training.compile_cache import CACHE_DIR, CompileCache
from training.compile_cache import COUNTERS as COMPILE_CACHE_COUNTERS
from training.compile_cache import counts as compile_cache_counts
from training.config import RunConfig
from training.crash import write_crash_report
from training.data.pipeline import Batch, DataPipeline
from training.data.prefetch import Prefetcher
from training.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from training.grpo import GRPOStage, trl_grpo_available
from training.hardware import HardwareProfile, resolve_profile
from training.metrics import (
    STAGES,
    Ema,
    MetricsWriter,
    ResourceSampler,
    StageClock,
    bottleneck,
    git_revision,
    library_versions,
)
from training.optim import OptimizerPair, build_optimizers
from training.optim.newton_schulz import (
    DEFAULT_NS_STEPS,
    check_instant_inversion,
    instant_inversion_selftest,
    ns_coefficient_set,
    zeropower_via_newtonschulz,
)
from training.saver import Saver
from training.schedules import lr_multiplier, muon_momentum
from training.toolchain import bootstrap_toolchain
from training.wandb_sink import WandbSink

SAMPLE_PROMPTS = ("The ", "def ", "Question: ")
HF_TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class NonFiniteError(RuntimeError):
    """Non-finite steps kept coming after a rollback: the run stops rather than loop."""


@dataclass
class TrainState:
    """What changes as the run goes, besides weights, optimizer and data position."""

    step: int = 0
    tokens: int = 0
    attempts: int = 0
    """train_step calls, skipped ones included (fault injection counts these)."""
    loss_ema: Ema = field(default_factory=lambda: Ema(0.9))
    tokens_per_s_ema: Ema = field(default_factory=lambda: Ema(0.9))
    core_tokens_per_s_ema: Ema = field(default_factory=lambda: Ema(0.9))
    nonfinite_skips: int = 0
    consecutive_skips: int = 0
    rollbacks: int = 0
    heldout_loss_step0: float | None = None
    loss_sum: float = 0.0
    """training loss summed over the steps since the last log record (so a resume logs the same)."""
    loss_steps: int = 0

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if not isinstance(v, Ema)}
        d["loss_ema"] = self.loss_ema.state_dict()
        d["tokens_per_s_ema"] = self.tokens_per_s_ema.state_dict()
        return d

    def load_dict(self, d: dict) -> None:
        for k, v in d.items():
            if isinstance(getattr(self, k, None), Ema):
                getattr(self, k).load_state_dict(v)
            elif hasattr(self, k):
                setattr(self, k, v)


@dataclass
class Session:
    """The live run: what set-up built and the loop uses."""

    cfg: RunConfig
    run_dir: Path
    metrics: MetricsWriter
    hw: HardwareProfile
    tok: object
    tok_dir: Path
    pipeline: DataPipeline
    batches: Prefetcher | None
    heldout: list[Batch]
    model: SigmaLM
    forward: object
    opt: OptimizerPair
    saver: Saver
    provenance: dict
    state: TrainState = field(default_factory=TrainState)
    features: dict[str, list[int]] = field(default_factory=dict)
    """feature name -> [enabled, effective calls]."""
    startup: dict = field(default_factory=dict)
    grpo: GRPOStage | None = None
    """the GRPO post-training stage, when --grpo on."""
    stop_signal: int | None = None
    rolled_back_since_save: bool = False
    compile_cache: CompileCache | None = None

    def count(self, feature: str, n: int = 1) -> None:
        self.features[feature][1] += n

    def feature_fields(self) -> dict[str, int]:
        out = {}
        for name, (enabled, calls) in self.features.items():
            out[f"feature_{name}_enabled"] = enabled
            out[f"feature_{name}_effective_calls"] = calls
        return out

    def close(self) -> None:
        if self.batches is not None:
            self.batches.close()
        if self.grpo is not None:
            self.grpo.close()
        self.saver.close()


# ----------------------------------------------------------------------------------------------
# Set-up


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_tokenizer(cfg: RunConfig, ckpt_dir: Path | None, run_dir: Path):
    """The checkpoint's tokenizer when resuming, else the configured one, else BPE trained on the stream.

    Saved to RUN_DIR/tokenizer with the source folder's tokenizer_config.json, special_tokens_map.json
    and chat_template.jinja, when it has them.
    """
    if ckpt_dir is not None:
        if cfg.tokenizer.path:
            given = Path(cfg.tokenizer.path)
            given = given / "tokenizer.json" if given.is_dir() else given
            if sha256_file(given) != sha256_file(ckpt_dir / "tokenizer.json"):
                raise CheckpointError(f"checkpoint {ckpt_dir} was trained with another tokenizer than "
                                      f"--tokenizer {cfg.tokenizer.path}; fix: drop --tokenizer to resume, "
                                      "or --resume never to start fresh")
        tok = load_tokenizer(ckpt_dir)
    elif cfg.tokenizer.path:
        tok = load_tokenizer(cfg.tokenizer.path)
        console.say(f"tokenizer loaded from {cfg.tokenizer.path} (vocab {tok.get_vocab_size()})")
    else:
        t0 = time.perf_counter()
        sampler = DataPipeline(cfg.data, None, seq_len=cfg.model.seq_len, batch_size=cfg.loop.batch_size)
        texts = sampler.sample_texts(cfg.tokenizer.train_chars)
        tok = train_tokenizer(texts, cfg.tokenizer.vocab_size)
        console.say(f"tokenizer trained: vocab {tok.get_vocab_size()} on {sum(map(len, texts)):,} chars "
                    f"in {time.perf_counter() - t0:.1f}s")
    save_tokenizer(tok, run_dir / "tokenizer")
    # A pretrained model's tokenizer folder also names its special tokens and chat template; keep them
    # with the run (and so in every checkpoint), so a resume without --tokenizer prompts the same way.
    source = ckpt_dir or (Path(cfg.tokenizer.path) if cfg.tokenizer.path else None)
    if source is not None:
        source = source if source.is_dir() else source.parent
        for name in HF_TOKENIZER_SIDE_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, run_dir / "tokenizer" / name)
    return tok


def preset_as_saved(mcfg: ModelConfig, preset: str, state: dict | None) -> ModelConfig:
    """On resume, ``mcfg`` with the shapes the checkpoint's preset had when its run started.

    A preset names shapes at the time a run starts, and a later eco_train may define it differently
    (124m went from 12 heads of 64 to 6 of 128). Resuming with the same ``--model-preset`` continues
    the checkpoint's model, with a console line naming what differs. What the flags decide
    (vocabulary, ``--seq-len``, BitNet) must still match, which :func:`restore` checks; a checkpoint
    of another preset is left for it to refuse.
    """
    if state is None or state.get("config", {}).get("model", {}).get("preset") != preset:
        return mcfg
    saved = ModelConfig.from_dict(state["model"])
    changed = {k: (getattr(saved, k), getattr(mcfg, k)) for k in PRESETS[preset]
               if getattr(saved, k) != getattr(mcfg, k)}
    if not changed:
        return mcfg
    console.say(f"the {preset} preset has changed since this checkpoint's run started: {changed} "
                "(checkpoint, this version); resuming the checkpoint's model")
    return replace(mcfg, **{k: was for k, (was, _) in changed.items()}).validate()


def build_model(
    cfg: RunConfig, vocab_size: int, hw: HardwareProfile, resume_state: dict | None = None
) -> SigmaLM:
    if cfg.model.init_from:
        model = load_hf(cfg.model.init_from)
        for module in model.modules():
            if isinstance(module, BitLinear):  # a BitNet export: train on from its ternary forward
                module.make_trainable_()
        if model.cfg.vocab_size < vocab_size:
            raise RuntimeError(f"--init-from model has vocab {model.cfg.vocab_size} but the tokenizer has "
                               f"{vocab_size}; fix: pass --tokenizer {cfg.model.init_from}")
        if cfg.model.bitnet and not model.cfg.bitnet:
            # Same parameter names: the full-precision weights become BitNet's latent weights.
            latent = SigmaLM(ModelConfig.from_dict({**model.cfg.to_dict(), "bitnet": True}))
            latent.load_state_dict(model.state_dict())
            model = latent
    else:
        # Round the embedding up to a multiple of 128 rows: the LM-head matmul then tiles evenly
        # on tensor cores (nanoGPT's 50257 -> 50304). The extra rows are never targets.
        padded = -(-vocab_size // 128) * 128
        mcfg: ModelConfig = from_preset(cfg.model.preset, vocab_size=padded, max_seq_len=cfg.model.seq_len)
        mcfg = preset_as_saved(mcfg, cfg.model.preset, resume_state)
        mcfg.bitnet = cfg.model.bitnet
        model = SigmaLM(mcfg)
        model.init_weights(seed=cfg.loop.seed)
    model.to(hw.device)
    # Cast parameters only: the rotary tables stay fp32 (bf16 angles lose position information).
    for p in model.parameters():
        p.data = p.data.to(hw.param_dtype)
    return model


def locate_checkpoint(cfg: RunConfig) -> tuple[Path | None, int]:
    """The checkpoint to resume (or None) and how many checkpoints sit in quarantine."""
    root = Path(cfg.checkpoint.dir)
    if cfg.checkpoint.resume == "never":
        return None, quarantine_count(root)
    if cfg.checkpoint.resume == "auto":
        path, _ = find_resumable(root, log=console.say)
        return path, quarantine_count(root)
    path = Path(cfg.checkpoint.resume)
    if reason := verify_checkpoint(path):
        raise CheckpointError(f"--resume {path} does not verify: {reason}; fix: pick another step_<N> folder "
                              "or use --resume auto")
    return path, quarantine_count(root)


def weight_tensors(model: SigmaLM) -> dict[str, torch.Tensor]:
    """Parameters by name; named_parameters() lists a tied tensor once."""
    return {name: p.detach() for name, p in model.named_parameters()}


def restore(s: Session, ckpt: dict, *, weights_only: bool, data: bool = True) -> None:
    """Load a read checkpoint into the live session (weights always; the rest unless weights_only)."""
    # Through from_dict so fields added since the checkpoint was written compare at their defaults.
    saved_model = ModelConfig.from_dict(ckpt["state"]["model"]).to_dict()
    if saved_model != s.model.cfg.to_dict():
        diff = {k: (saved_model.get(k), v) for k, v in s.model.cfg.to_dict().items() if saved_model.get(k) != v}
        raise CheckpointError(f"the checkpoint holds a different model: {diff} (checkpoint, flags); fix: resume "
                              "with the same --model-preset and --seq-len, or --resume never to start fresh")
    with torch.no_grad():
        for name, p in s.model.named_parameters():
            p.copy_(ckpt["model"][name])
    if weights_only:
        return
    saved_opt = ckpt["state"]["optimizer_name"]
    if saved_opt != s.cfg.optim.name:
        raise CheckpointError(f"the checkpoint was trained with --optimizer {saved_opt}, the flags say "
                              f"{s.cfg.optim.name}; fix: use the same optimizer, or --resume-weights-only")
    s.opt.load_state_dict(ckpt["optimizer"])
    st = ckpt["state"]
    s.state.load_dict(st["train"])
    if data:
        s.pipeline.load_state_dict(st["data"])
    random.setstate((st["rng"]["python"][0], tuple(st["rng"]["python"][1]), st["rng"]["python"][2]))
    np_state = st["rng"]["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(ckpt["rng"]["torch_cpu"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"torch_cuda_{i}" in ckpt["rng"]:
                torch.cuda.set_rng_state(ckpt["rng"][f"torch_cuda_{i}"], i)


def setup(cfg: RunConfig, run_dir: Path, metrics: MetricsWriter, t_start: float) -> Session:
    loop = cfg.loop
    provenance = {"versions": library_versions(), "git_revision": git_revision()}
    hw = resolve_profile(device=cfg.hardware.device, profile=cfg.hardware.profile,
                         compile_mode=cfg.hardware.compile, c3o_state_dtype=cfg.optim.c3o_state_dtype)
    toolchain = bootstrap_toolchain()
    console.facts(**hw.startup_fields(), **toolchain, torch=torch.__version__,
                  git_revision=provenance["git_revision"])
    seed_everything(loop.seed)

    ckpt_path, quarantined = locate_checkpoint(cfg)
    ckpt = read_checkpoint(ckpt_path) if ckpt_path else None
    # Tokenizer first: the pipeline tokenizes with it, and the model's vocabulary follows it.
    tok = prepare_tokenizer(cfg, ckpt_path, run_dir)
    pipeline = DataPipeline(cfg.data, tok, seq_len=cfg.model.seq_len, batch_size=loop.batch_size)
    heldout = pipeline.heldout_batches(loop.eval_batches)
    model = build_model(cfg, tok.get_vocab_size(), hw, ckpt["state"] if ckpt else None)
    kernel_choices = kernels.resolve(cfg.hardware.kernels, hw.device, compile=hw.compile)
    fp8_lm_head = kernels.fp8_lm_head_wanted(cfg.hardware.fp8_lm_head, model, kernel_choices)
    kernel_cache = Path(cfg.checkpoint.dir) / CACHE_DIR if cfg.hardware.compile_cache else None
    quack_cache = kernel_cache / "quack" if kernel_cache else None
    fused_mlp, fused_mlp_note = kernels.fused_mlp_wanted(cfg.hardware.fused_mlp, model, quack_cache,
                                                         micro_batch=(cfg.loop.batch_size, cfg.model.seq_len),
                                                         announce=console.say)
    if fused_mlp_note:
        console.say(f"warning: {fused_mlp_note}")
    flash_attention, flash_attention_note = kernels.flash_attention_wanted(
        cfg.hardware.flash_attention, model, kernel_cache / "flash_attention" if kernel_cache else None,
        seq_len=cfg.model.seq_len, announce=console.say)
    if flash_attention_note:
        console.say(f"warning: {flash_attention_note}")
    kernels.apply_to_model(model, kernel_choices, fp8_lm_head=fp8_lm_head, fused_mlp=fused_mlp,
                           flash_attention=flash_attention)
    # The Triton kernel where chosen, else the PyTorch iteration in the profile's dtype (fp32 on the CPU).
    ns_kernel = kernels.ns_fn(kernel_choices) or partial(zeropower_via_newtonschulz, dtype=hw.ns_dtype)
    opt = build_optimizers(
        model, lr=cfg.optim.lr, muon_lr=cfg.optim.muon_lr, weight_decay=cfg.optim.weight_decay,
        betas=(0.9, 0.95), c3o_state_dtype=hw.c3o_state_dtype, c3o_cautious=cfg.optim.c3o_cautious,
        muon_momentum=muon_momentum(0), ns_steps=DEFAULT_NS_STEPS, seed=loop.seed,
        use_muon=cfg.optim.name == "muon", ns_fn=ns_kernel, ns_coefficients=cfg.optim.ns_coefficients,
        compile=hw.compile,
    )
    saver = Saver(Path(cfg.checkpoint.dir), keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save,
                  protect=ckpt_path)
    s = Session(cfg=cfg, run_dir=run_dir, metrics=metrics, hw=hw, tok=tok, tok_dir=run_dir / "tokenizer",
                pipeline=pipeline, batches=None, heldout=heldout, model=model, forward=model, opt=opt,
                saver=saver, provenance=provenance)
    if cfg.grpo.enabled:  # a missing or broken TRL is a start-up error here, before any training
        s.grpo = GRPOStage(cfg.grpo, tok, device=hw.device, seed=loop.seed, tokenizer_dir=s.tok_dir)
    metrics.run_id = (ckpt["state"].get("run_id") if ckpt and not cfg.checkpoint.weights_only else None) or (
        f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}")
    if ckpt is not None:
        restore(s, ckpt, weights_only=cfg.checkpoint.weights_only)
        if s.grpo is not None and ckpt["state"].get("grpo") and not cfg.checkpoint.weights_only:
            s.grpo.load_state_dict(ckpt["state"]["grpo"])
        saver.last_valid = ckpt_path
        saver.submitted_step = s.state.step  # that step is on disk already: never save it again
        console.say(f"resumed from {ckpt_path} at step {s.state.step}"
                    + (" (weights only)" if cfg.checkpoint.weights_only else ""))
        metrics.write("resume", step=s.state.step, tokens=s.state.tokens, checkpoint=str(ckpt_path),
                      weights_only=cfg.checkpoint.weights_only)
    s.batches = Prefetcher(pipeline, pin_memory=hw.device.type == "cuda")

    split_summary = opt.split.summary if opt.muon is not None else {
        "muon_params": 0, "c3o_params": len(opt.split.muon) + len(opt.split.c3o),
        "muon_numel": 0, "c3o_numel": opt.split.muon_numel + opt.split.c3o_numel}
    # The self-test runs the very iteration Muon uses: same kernel, steps, coefficients and dtype.
    inversion = instant_inversion_selftest(steps=DEFAULT_NS_STEPS,
                                           coefficients=ns_coefficient_set(cfg.optim.ns_coefficients),
                                           dtype=hw.ns_dtype, device=hw.device, ns_fn=ns_kernel)
    check_instant_inversion(inversion)
    if hw.compile:
        # The model, its eval graph and Muon/C3O's per-shape update functions compile in this process.
        # Dynamo's per-function recompile limit (8) counts every optimizer ever built in it, and the
        # optimizers compile with fullgraph=True, where hitting the limit is a hard error.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        s.compile_cache = CompileCache.for_run(cfg, model, hw) if cfg.hardware.compile_cache else None
        compile_cache_loaded = s.compile_cache.load() if s.compile_cache else False
        s.forward = torch.compile(model)
    else:
        compile_cache_loaded = False
    s.features = {
        "muon": [int(opt.muon is not None), 0], "c3o": [int(opt.c3o is not None), 0],
        "compile": [int(hw.compile), 0], "bootstrap_seed": [int(cfg.data.bootstrap_seed_batches > 0), 0],
        "checkpoint": [1, 0], "async_checkpoint": [int(cfg.checkpoint.async_save), 0],
        "nonfinite_guard": [1, 0], "eval": [1, 0], "samples": [1, 0], "grpo": [int(cfg.grpo.enabled), 0],
    }

    if loop.wandb != "off":
        try:
            metrics.sinks.append(WandbSink(mode=loop.wandb, run_dir=run_dir, run_id=metrics.run_id,
                                           config=cfg.to_dict()))
            s.features["wandb"] = [1, 0]
        except Exception as e:  # W&B is a mirror: its failure never stops training
            console.say(f"WARNING: W&B could not start ({e!r}); continuing with metrics.jsonl only")
            s.features["wandb"] = [0, 0]

    n_params = sum(p.numel() for p in model.parameters())
    write_run_config(cfg, run_dir, {"model": model.cfg.to_dict(), "n_params": n_params,
                                    "hardware": hw.startup_fields(), **provenance})
    print(json.dumps(cfg.to_dict(), default=str), flush=True)
    resume_step = s.state.step if ckpt is not None and not cfg.checkpoint.weights_only else None
    s.startup = {
        "startup_init_s": time.perf_counter() - t_start, **inversion, "n_params": n_params,
        "flops_per_token": model.flops_per_token(cfg.model.seq_len), **split_summary, **hw.startup_fields(),
        "checkpoint_resume_step": resume_step, "checkpoint_quarantine_count": quarantined,
        "bitnet_1_58_active": int(model.cfg.bitnet), "trl_grpo_available": int(trl_grpo_available()),
        "fp8_lm_head_active": int(fp8_lm_head),
        "fused_mlp_active": int(fused_mlp),
        "flash_attention_active": int(flash_attention),
        "run_id": metrics.run_id, "kernels": kernel_choices, "ns_coefficients": cfg.optim.ns_coefficients,
        "compile_cache_loaded": int(compile_cache_loaded),
        **{k: v for k, v in s.batches.stats().items() if k.endswith("_up") or k == "data_fallback_seed"},
        **toolchain,
    }
    console.facts(model_params=n_params, **split_summary, **inversion, checkpoint_resume_step=resume_step,
                  checkpoint_quarantine_count=quarantined, bitnet_1_58_active=int(model.cfg.bitnet),
                  fp8_lm_head_active=int(fp8_lm_head),
                  fused_mlp_active=int(fused_mlp), flash_attention_active=int(flash_attention),
                  kernels=",".join(f"{op}={c}" for op, c in kernel_choices.items()),
                  trl_grpo_available=s.startup["trl_grpo_available"], run_id=metrics.run_id,
                  startup_init_s=round(s.startup["startup_init_s"], 2))
    return s


def write_run_config(cfg: RunConfig, run_dir: Path, extra: dict) -> None:
    tmp = run_dir / "config.json.tmp"
    tmp.write_text(json.dumps({"config": cfg.to_dict(), **extra}, indent=2, default=str))
    os.replace(tmp, run_dir / "config.json")


# ----------------------------------------------------------------------------------------------
# Steps


def to_device(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    non_blocking = device.type == "cuda"
    return (batch.inputs_BT.to(device, non_blocking=non_blocking),
            batch.targets_BT.to(device, non_blocking=non_blocking))


class PendingStep:
    """An optimizer step queued on the device whose non-finite verdict the host has not read yet.

    The guard runs on the device: ``ok = isfinite(loss) & isfinite(grad_norm)`` gates the optimizer
    update (a skipped step leaves weights and state bit-identical), so the hot path never waits for
    the GPU. The verdict is copied to pinned host memory without blocking and read one step later,
    after the next step's forward and backward are queued, when it is long finished; log, eval and
    checkpoint steps read it at once, so everything the run writes is exact.
    """

    def __init__(self, ok: torch.Tensor, loss: torch.Tensor, grad_norm: torch.Tensor, n_tokens: int,
                 host_flag: torch.Tensor) -> None:
        self.loss, self.grad_norm, self.n_tokens = loss, grad_norm, n_tokens
        self.ok_host = host_flag
        self.ready = None
        if ok.device.type == "cuda":
            host_flag.copy_(ok, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()
        else:
            self.ok_host = ok

    def applied(self) -> bool:
        if self.ready is not None:
            self.ready.synchronize()  # recorded a step ago: already complete, costs no stall
        return bool(self.ok_host)


def train_step(s: Session, clock: StageClock, before_update) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor] | None:
    """One optimizer step over grad_accum micro-batches: (loss, grad_norm, tokens, ok) as device tensors.

    A non-finite loss or gradient norm never reaches the weights: ``ok`` is False and the optimizer's
    update is gated on it on the device, with no host sync. ``before_update()`` runs between backward
    and the update (the loop settles the previous step and sets the lr there); if it returns False
    the gradients are dropped and None is returned.
    """
    accum = s.cfg.loop.grad_accum
    attempt = s.state.attempts = s.state.attempts + 1
    t0 = time.perf_counter()
    batches = [s.batches.next_batch() for _ in range(accum)]
    faults.delay("slow_data")
    clock.add("data", time.perf_counter() - t0)
    if faults.active("raise", attempt):
        raise RuntimeError(f"failure injected by ECO_TRAIN_FAULTS at step attempt {attempt}")
    if faults.active("oom", attempt):
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected by ECO_TRAIN_FAULTS at attempt {attempt})")
    clock.start("compute")
    loss_sum = torch.zeros((), device=s.hw.device, dtype=torch.float32)
    tokens = 0
    for batch in batches:
        clock.start("h2d")
        x_BT, y_BT = to_device(batch, s.hw.device)
        clock.stop("h2d")
        clock.start("forward")
        loss = s.forward(x_BT, y_BT)
        if faults.active("nan_loss", attempt):
            loss = loss * float("nan")
        clock.stop("forward")
        clock.start("backward")
        (loss / accum).backward()
        clock.stop("backward")
        loss_sum += loss.detach().float()
        tokens += batch.n_tokens
    clock.start("optimizer")
    if faults.active("inf_grad", attempt):
        next(p for p in s.model.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
    params = [p for p in s.model.parameters() if p.grad is not None]
    clip = s.cfg.optim.grad_clip if s.cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    ok = torch.isfinite(loss_sum) & torch.isfinite(grad_norm)
    keep = before_update()
    if keep:
        s.opt.step(ok)
        faults.delay("slow_opt")
    s.opt.zero_grad(set_to_none=True)
    clock.stop("optimizer")
    clock.stop("compute")
    clock.step_done()
    return (loss_sum / accum, grad_norm, tokens, ok) if keep else None


@torch.no_grad()
def evaluate(s: Session) -> float:
    """Mean held-out loss over the fixed held-out batches."""
    s.model.eval()
    total = torch.zeros((), device=s.hw.device, dtype=torch.float32)
    for batch in s.heldout:
        x_BT, y_BT = to_device(batch, s.hw.device)
        total += s.forward(x_BT, y_BT).float()
    s.model.train()
    s.count("eval")
    return (total / len(s.heldout)).item()


@torch.no_grad()
def write_samples(s: Session) -> None:
    """Append continuations of fixed prompts to samples.jsonl (uncompiled model, own generator)."""
    s.model.eval()
    gen = torch.Generator(device=s.hw.device).manual_seed(s.cfg.loop.seed + s.state.step)
    with open(s.run_dir / "samples.jsonl", "a", encoding="utf-8") as f:
        for prompt in SAMPLE_PROMPTS:
            ids = torch.tensor([s.tok.encode(prompt).ids], dtype=torch.long, device=s.hw.device)
            out = s.model.generate(ids, max_new_tokens=48, temperature=0.8, top_k=40, generator=gen)
            f.write(json.dumps({"step": s.state.step, "prompt": prompt, "text": s.tok.decode(out[0].tolist())})
                    + "\n")
    s.model.train()
    s.count("samples")


def snapshot(s: Session) -> Snapshot:
    """Copy everything a checkpoint holds to the CPU (a host-device sync; the stall of a save)."""
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = st
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "step": s.state.step, "tokens": s.state.tokens, "run_id": s.metrics.run_id, "train": s.state.to_dict(),
        "data": s.batches.state_dict(), "optimizer_name": s.cfg.optim.name, "model": s.model.cfg.to_dict(),
        "schedule": {"kind": s.cfg.optim.schedule, "warmup_steps": s.cfg.optim.warmup_steps,
                     "total_steps": s.cfg.loop.steps},
        "rng": {"python": [py[0], list(py[1]), py[2]],
                "numpy": [np_state[0], np_state[1].tolist(), *(x for x in np_state[2:])]},
        "grpo": s.grpo.state_dict() if s.grpo is not None else None,
        "features": s.feature_fields(), "config": s.cfg.to_dict(), **s.provenance,
    }
    weights = {k: v.to("cpu", copy=True) for k, v in weight_tensors(s.model).items()}
    return Snapshot(step=s.state.step, model_tensors=weights,
                    optimizer_state=s.opt.state_dict(), rng_tensors=rng, state=state, tokenizer_dir=s.tok_dir)


def save(s: Session) -> None:
    if s.saver.submitted_step == s.state.step:  # e.g. a signal right after a periodic save
        return
    t0 = time.perf_counter()
    snap = snapshot(s)
    stall = time.perf_counter() - t0
    s.saver.submit(snap, stall_s=stall)
    s.rolled_back_since_save = False
    s.count("checkpoint")
    if s.cfg.checkpoint.async_save:
        s.count("async_checkpoint")
    record_saves(s)


def record_saves(s: Session, *, wait: bool = False) -> None:
    """Write a `checkpoint` record for each save that has finished (all of them with wait=True)."""
    if wait:
        s.saver.wait()
    for rec in s.saver.pop_results():
        s.metrics.write("checkpoint", step=rec.pop("step"), tokens=s.state.tokens, **rec)


def rollback(s: Session) -> None:
    """Reload weights, optimizer and counters from the last valid checkpoint, keeping the data position
    so the batches that produced non-finite values are skipped, not replayed."""
    s.saver.wait()
    path = s.saver.last_valid
    if path is None or s.rolled_back_since_save:
        why = "there is no checkpoint to roll back to" if path is None else "a rollback did not help"
        raise NonFiniteError(f"{s.state.consecutive_skips} consecutive steps had a non-finite loss or gradient "
                             f"and {why}; fix: lower --lr / --muon-lr, raise --warmup-steps, or check the data")
    skips, rollbacks, attempts = s.state.nonfinite_skips, s.state.rollbacks, s.state.attempts
    restore(s, read_checkpoint(path), weights_only=False, data=False)
    s.state.nonfinite_skips, s.state.rollbacks, s.state.attempts = skips, rollbacks + 1, attempts
    s.state.consecutive_skips = 0
    s.rolled_back_since_save = True
    console.say(f"rolled back to {path} (step {s.state.step}) after repeated non-finite steps")
    s.metrics.write("rollback", step=s.state.step, tokens=s.state.tokens, checkpoint=str(path))


# ----------------------------------------------------------------------------------------------
# The loop


def _install_signal_handlers(s: Session) -> dict:
    def handler(signum, _frame):
        # Only a flag: printing here could re-enter a print the main thread is in the middle of.
        if s.stop_signal is not None:  # the second one: leave now (saves are atomic, nothing corrupts)
            raise KeyboardInterrupt
        s.stop_signal = signum

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def timed(s: Session, clock: StageClock, stage: str, fn, *args):
    """Run a host-side stage (eval, checkpoint, samples) and book its wall time."""
    t0 = time.perf_counter()
    out = fn(*args)
    clock.add(stage, time.perf_counter() - t0)
    return out


def log_step(s: Session, clock: StageClock, resources: ResourceSampler, interval: dict, *, mult: float,
             grad_norm: torch.Tensor) -> None:
    """Write the step record and the status line for the interval since the last log step."""
    t_log0 = time.perf_counter()
    state, cfg = s.state, s.cfg
    stage_s, n = clock.drain()  # the one extra host-device sync per log interval
    data_stats = s.batches.stats()  # per-source counts, filter drops, availability, fallback
    loss_val = state.loss_sum / max(state.loss_steps, 1)
    state.loss_sum, state.loss_steps = 0.0, 0
    if not math.isfinite(loss_val):
        raise FloatingPointError(f"loss became {loss_val} at step {state.step}; lower --lr / --muon-lr")
    now = time.perf_counter()
    wall = now - interval["t"]
    n = max(n, 1)
    tokens = state.tokens - interval["tokens"]
    core_tps = tokens / max(stage_s["compute"], 1e-9)
    eff_tps = tokens / max(wall, 1e-9)
    peak = s.hw.peak_bf16_tflops
    full = cfg.loop.metrics_level == "full"
    phases = {}
    stage_id = stage_name = share = None
    if full:
        stage_s["other"] = max(0.0, wall - sum(stage_s[x] for x in STAGES if x != "other"))
        phases = {f"phase_{x}_s": stage_s[x] / n for x in STAGES}
        stage_id, stage_name, share = bottleneck(stage_s, wall)
    rec = s.metrics.write(
        "step", step=state.step, tokens=state.tokens, loss=loss_val, loss_ema=state.loss_ema.update(loss_val),
        lr=cfg.optim.lr * mult, muon_lr=cfg.optim.muon_lr * mult, grad_norm=grad_norm.item(),
        core_step_time_s=stage_s["compute"] / n, effective_step_time_s=wall / n,
        core_tokens_per_s=core_tps, core_tokens_per_s_ema=state.core_tokens_per_s_ema.update(core_tps),
        effective_tokens_per_s=eff_tps, effective_tokens_per_s_ema=state.tokens_per_s_ema.update(eff_tps),
        mfu=s.startup["flops_per_token"] * core_tps / (peak * 1e12) if peak else None,
        **phases, perf_bottleneck_stage_id=stage_id, perf_bottleneck_stage=stage_name,
        perf_bottleneck_share=share, nonfinite_skips=state.nonfinite_skips,
        **(resources.read() if full else {}), **s.feature_fields(), **data_stats,
    )
    eta_s = (cfg.loop.steps - state.step) * rec["effective_step_time_s"]
    console.status(state.step, cfg.loop.steps, loss=round(loss_val, 4), tok_s=int(eff_tps),
                   step_ms=round(rec["effective_step_time_s"] * 1e3, 1), eta=_duration(eta_s),
                   **({"bottleneck": f"{stage_name}:{share:.0%}"} if stage_name else {}),
                   **({"data": "seed-fallback (no remote source reachable)"} if data_stats.get("data_fallback_seed")
                      else {}))
    interval["t"], interval["tokens"] = now, state.tokens
    clock.add("logging", time.perf_counter() - t_log0)


def maybe_run_phase(s: Session, clock: StageClock, step: int) -> None:
    """A post-training phase (GRPO) on the live weights, between pretraining steps."""
    m = timed(s, clock, "post_training", s.grpo.run_phase, s.model, step)
    s.count("grpo")
    s.metrics.write("grpo", step=step, tokens=s.state.tokens, **m)
    console.say(f"GRPO phase {m['grpo_phase']} after step {step}: pass rate {m['grpo_pass_rate']:.0%}, "
                f"{m['grpo_executions']} executions in {m['grpo_phase_s']:.1f}s ({m['grpo_accelerator']})")


def train_post_only(s: Session, t_start: float) -> int:
    """--stages grpo: no pretraining steps; each of --steps runs one GRPO phase on the --init-from model."""
    clock = StageClock(s.hw.device, enabled=False)
    state = s.state
    if state.heldout_loss_step0 is None:
        state.heldout_loss_step0 = evaluate(s)
        s.metrics.write("eval", step=state.step, tokens=state.tokens, heldout_loss=state.heldout_loss_step0)
    s.metrics.write("startup", step=state.step, tokens=state.tokens, **s.startup)
    while state.step < s.cfg.loop.steps and s.stop_signal is None:
        state.step += 1
        maybe_run_phase(s, clock, state.step)
        if s.cfg.checkpoint.save_every and state.step % s.cfg.checkpoint.save_every == 0:
            save(s)
    return finish(s, t_start)


def _duration(seconds: float) -> str:
    m, sec = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def train(s: Session, t_start: float) -> int:
    loop, metrics, state = s.cfg.loop, s.metrics, s.state
    if state.step == 0 and state.heldout_loss_step0 is None:
        state.heldout_loss_step0 = evaluate(s)
        metrics.write("eval", step=0, tokens=0, heldout_loss=state.heldout_loss_step0)
        console.say(f"held-out loss at step 0: {state.heldout_loss_step0:.4f}")
    full = loop.metrics_level == "full"
    clock = StageClock(s.hw.device, enabled=full)
    resources = ResourceSampler(s.hw.device, enabled=full)
    interval = {"t": time.perf_counter(), "tokens": state.tokens}
    loss_acc = torch.zeros((), device=s.hw.device)
    pin = s.hw.device.type == "cuda"
    host_flags = [torch.zeros((), dtype=torch.bool, pin_memory=pin) for _ in range(2)]
    run = {"pending": None, "first": True, "mult": 1.0}

    def settle() -> bool:
        """Book the pending step on the host: count it if applied, else record the skip (and maybe roll
        back). Returns False if a rollback happened (gradients in flight are then stale)."""
        pending, run["pending"] = run["pending"], None
        if pending is None:
            return True
        if pending.applied():
            state.step, state.tokens, state.consecutive_skips = state.step + 1, state.tokens + pending.n_tokens, 0
            loss_acc.add_(pending.loss)
            state.loss_steps += 1
            for feature, acted in (("muon", s.opt.muon is not None), ("c3o", s.opt.c3o is not None),
                                   ("compile", s.hw.compile),
                                   ("bootstrap_seed", state.step <= s.cfg.data.bootstrap_seed_batches)):
                s.count(feature, int(acted))
            if run["first"]:
                run["first"] = False
                s.startup["time_to_first_step_s"] = time.perf_counter() - t_start
                # null where nothing compiled (the CPU)
                s.startup.update(compile_cache_counts() if s.hw.compile else dict.fromkeys(COMPILE_CACHE_COUNTERS))
                metrics.write("startup", step=state.step - 1, tokens=state.tokens - pending.n_tokens, **s.startup)
                console.facts(time_to_first_step_s=round(s.startup["time_to_first_step_s"], 2))
                if s.compile_cache is not None:
                    s.compile_cache.save()
            return True
        state.nonfinite_skips += 1
        state.consecutive_skips += 1
        s.count("nonfinite_guard")
        metrics.write("nonfinite_skip", step=state.step + 1, tokens=state.tokens,
                      nonfinite_skips=state.nonfinite_skips, consecutive=state.consecutive_skips)
        console.say(f"step {state.step + 1}: non-finite loss or gradient, step skipped "
                    f"({state.consecutive_skips} in a row)")
        if state.consecutive_skips >= s.cfg.checkpoint.max_nonfinite_skips:
            rollback(s)
            loss_acc.zero_()
            return False
        return True

    def before_update() -> bool:
        if not settle():
            return False
        step = state.step + 1
        run["mult"] = lr_multiplier(step - 1, total_steps=loop.steps, warmup_steps=s.cfg.optim.warmup_steps,
                                    schedule=s.cfg.optim.schedule)
        s.opt.set_lr_multiplier(run["mult"], momentum=muon_momentum(step - 1))
        return True

    def host_work_at(step: int) -> bool:
        """Whether the host acts after `step` (then its verdict is read at once)."""
        every = (loop.log_every, loop.eval_every, loop.sample_every, s.cfg.checkpoint.save_every)
        return (run["first"] or step == loop.steps or any(n and step % n == 0 for n in every)
                or (s.grpo is not None and s.grpo.should_run(step)))

    try:
        while state.step + (run["pending"] is not None) < loop.steps and s.stop_signal is None:
            if run["first"] and run["pending"] is None:
                s.startup["time_to_first_batch_s"] = time.perf_counter() - t_start
            out = train_step(s, clock, before_update)
            if out is None:  # rolled back: these gradients belonged to the weights before it
                continue
            loss, grad_norm, n_tokens, ok = out
            run["pending"] = PendingStep(ok, loss, grad_norm, n_tokens, host_flags[state.attempts % 2])
            step = state.step + 1
            if not host_work_at(step):
                continue
            if not settle() or state.step != step:  # skipped (or rolled back): nothing to log or save
                continue
            if step % loop.log_every == 0 or step == loop.steps:
                state.loss_sum += loss_acc.item()
                loss_acc.zero_()
                log_step(s, clock, resources, interval, mult=run["mult"], grad_norm=grad_norm)
            if loop.eval_every and step % loop.eval_every == 0 and step != loop.steps:
                h = timed(s, clock, "eval", evaluate, s)
                metrics.write("eval", step=step, tokens=state.tokens, heldout_loss=h)
                console.say(f"held-out loss at step {step}: {h:.4f}")
            if loop.sample_every and step % loop.sample_every == 0 and step != loop.steps:
                timed(s, clock, "eval", write_samples, s)
            if s.grpo is not None and s.grpo.should_run(step):
                maybe_run_phase(s, clock, step)
            if s.cfg.checkpoint.save_every and step % s.cfg.checkpoint.save_every == 0 and step != loop.steps:
                state.loss_sum += loss_acc.item()  # carry the open log interval into the checkpoint
                loss_acc.zero_()
                timed(s, clock, "checkpoint", save, s)
        settle()
    finally:
        resources.close()

    if s.stop_signal is not None:
        console.say(f"got {signal.Signals(s.stop_signal).name}: step {state.step} finished, saving a checkpoint, "
                    "then exiting (press Ctrl-C again to exit at once without saving)")
        state.loss_sum += loss_acc.item()
        save(s)
        record_saves(s, wait=True)
        name = signal.Signals(s.stop_signal).name
        metrics.write("stopped", step=state.step, tokens=state.tokens, signal=name,
                      checkpoint=str(s.saver.last_valid))
        console.say(f"stopped by {name} at step {state.step}; checkpoint {s.saver.last_valid}. "
                    "Run the same command again to resume.")
        return 0
    return finish(s, t_start)


def finish(s: Session, t_start: float) -> int:
    state, metrics = s.state, s.metrics
    final_loss = evaluate(s)
    metrics.write("eval", step=state.step, tokens=state.tokens, heldout_loss=final_loss)
    if s.compile_cache is not None:  # now with the evaluation graphs as well
        s.compile_cache.save()
    write_samples(s)
    save(s)
    record_saves(s, wait=True)
    if s.saver.last_valid_step != state.step:
        raise CheckpointError(f"the final checkpoint could not be written: {s.saver.last_error}")
    if s.cfg.loop.export_hf:
        export_hf(s.model, s.cfg.loop.export_hf, tokenizer_dir=str(s.tok_dir))
        console.say(f"exported Hugging Face model to {s.cfg.loop.export_hf}")
    step0 = state.heldout_loss_step0
    drop = 1 - final_loss / step0 if step0 else None
    metrics.write("end", step=state.step, tokens=state.tokens, heldout_loss=final_loss,
                  heldout_loss_step0=step0, heldout_loss_drop=drop, wall_s=time.perf_counter() - t_start,
                  nonfinite_skips=state.nonfinite_skips, **s.feature_fields())
    change = f"{step0:.4f} -> {final_loss:.4f} ({drop:.0%} lower)" if step0 else f"{final_loss:.4f}"
    console.say(f"done: {state.step} steps, {state.tokens:,} tokens, held-out loss {change}, "
                f"checkpoint {s.saver.last_valid}")
    return 0


def run(cfg: RunConfig) -> int:
    """Set up, train, and turn any failure into a crash report and exit code 1."""
    # Start-up times count from the process's birth, so interpreter start and imports are included.
    t_start = time.perf_counter() - max(0.0, time.time() - psutil.Process().create_time())
    run_dir = Path(cfg.loop.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsWriter(run_dir / "metrics.jsonl")
    s: Session | None = None
    previous_handlers: dict = {}
    try:
        s = setup(cfg, run_dir, metrics, t_start)
        previous_handlers = _install_signal_handlers(s)
        return train_post_only(s, t_start) if cfg.grpo.only else train(s, t_start)
    except KeyboardInterrupt:
        last = s.saver.last_valid if s else None
        print(f"eco_train: interrupted; the last valid checkpoint is {last}", file=sys.stderr)
        return 130
    except Exception as e:
        step = s.state.step if s else 0
        try:
            path = write_crash_report(
                run_dir, e, step=step, tokens=s.state.tokens if s else 0, metrics=metrics.last,
                features=s.feature_fields() if s else {}, config=cfg.to_dict(),
                versions=library_versions(), device=str(s.hw.device) if s else None,
                last_checkpoint=str(s.saver.last_valid) if s and s.saver.last_valid else None,
            )
            where = f"crash report: {path}"
        except Exception as report_error:  # never let the report hide the crash
            where = f"the crash report could not be written either ({report_error!r})"
        print(f"eco_train: failed at step {step}: {type(e).__name__}: {e}\neco_train: {where}", file=sys.stderr)
        return 1
    finally:
        for sig, h in previous_handlers.items():
            signal.signal(sig, h)
        if s is not None:
            s.close()
        metrics.close()
