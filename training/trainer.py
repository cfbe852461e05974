"""The training loop: set-up in named steps, then a loop of train_step / evaluate / maybe_* calls.

Pretraining only for now; post-training phases (GRPO, Hydra adapters) will run from the same loop
between steps through `maybe_run_phase`-style hooks on the same live weights, and the TrainState
carries everything a checkpoint will need to resume (step, tokens, data position, EMAs).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.config import ModelConfig, from_preset
from model.decoder import SigmaLM
from model.hf_compat import export_hf, load_hf
from training import console
from training.config import RunConfig
from training.data.pipeline import Batch, DataPipeline
from training.data.prefetch import Prefetcher
from training.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from training.hardware import HardwareProfile, resolve_profile
from training.metrics import Ema, MetricsWriter, StepTimer, git_revision, library_versions
from training.optim import build_optimizers
from training.optim.newton_schulz import (
    DEFAULT_NS_COEFFICIENTS,
    DEFAULT_NS_STEPS,
    check_instant_inversion,
    instant_inversion_selftest,
)
from training.schedules import lr_multiplier, muon_momentum

SAMPLE_PROMPTS = ("The ", "def ", "Question: ")


@dataclass
class TrainState:
    """What changes as the run goes; all of it belongs in a checkpoint."""

    step: int = 0
    tokens: int = 0
    loss_ema: Ema = field(default_factory=lambda: Ema(0.9))
    tokens_per_s_ema: Ema = field(default_factory=lambda: Ema(0.9))
    skipped_steps: int = 0


# ----------------------------------------------------------------------------------------------
# Set-up


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_tokenizer(cfg: RunConfig, pipeline_for_sample: DataPipeline | None, run_dir: Path):
    """Load the configured tokenizer or train byte-level BPE on a sample of the stream; save it in the run."""
    if cfg.tokenizer.path:
        tok = load_tokenizer(cfg.tokenizer.path)
        console.say(f"tokenizer loaded from {cfg.tokenizer.path} (vocab {tok.get_vocab_size()})")
    else:
        t0 = time.perf_counter()
        texts = pipeline_for_sample.sample_texts(cfg.tokenizer.train_chars)
        tok = train_tokenizer(texts, cfg.tokenizer.vocab_size)
        console.say(f"tokenizer trained: vocab {tok.get_vocab_size()} on {sum(map(len, texts)):,} chars "
                    f"in {time.perf_counter() - t0:.1f}s")
    save_tokenizer(tok, run_dir / "tokenizer")
    return tok


def build_model(cfg: RunConfig, vocab_size: int, hw: HardwareProfile) -> SigmaLM:
    if cfg.model.init_from:
        model = load_hf(cfg.model.init_from)
        if model.cfg.vocab_size < vocab_size:
            raise RuntimeError(f"--init-from model has vocab {model.cfg.vocab_size} but the tokenizer has "
                               f"{vocab_size}; fix: pass --tokenizer {cfg.model.init_from}")
    else:
        # Round the embedding up to a multiple of 128 rows: the LM-head matmul then tiles evenly
        # on tensor cores (nanoGPT's 50257 -> 50304). The extra rows are never targets.
        padded = -(-vocab_size // 128) * 128
        mcfg: ModelConfig = from_preset(cfg.model.preset, vocab_size=padded, max_seq_len=cfg.model.seq_len)
        model = SigmaLM(mcfg)
        model.init_weights(seed=cfg.loop.seed)
    model.to(hw.device)
    # Cast parameters only: the rotary tables stay fp32 (bf16 angles lose position information).
    for p in model.parameters():
        p.data = p.data.to(hw.param_dtype)
    return model


def write_run_config(cfg: RunConfig, run_dir: Path, extra: dict) -> dict:
    resolved = {"config": cfg.to_dict(), **extra}
    tmp = run_dir / "config.json.tmp"
    tmp.write_text(json.dumps(resolved, indent=2, default=str))
    os.replace(tmp, run_dir / "config.json")
    return resolved


# ----------------------------------------------------------------------------------------------
# Steps


def to_device(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    non_blocking = device.type == "cuda"
    return (batch.inputs_BT.to(device, non_blocking=non_blocking),
            batch.targets_BT.to(device, non_blocking=non_blocking))


def train_step(forward, model: SigmaLM, opt, pipeline: Prefetcher, cfg: RunConfig, hw: HardwareProfile,
               timer: StepTimer) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """One optimizer step over grad_accum micro-batches. Returns (loss, grad_norm, tokens, data_s).

    loss and grad_norm stay on the device: reading them is a sync, done only at log steps.
    """
    accum = cfg.loop.grad_accum
    data_s = 0.0
    tokens = 0
    loss_sum = torch.zeros((), device=hw.device, dtype=torch.float32)
    batches = []
    for _ in range(accum):
        t0 = time.perf_counter()
        batch = pipeline.next_batch()
        data_s += time.perf_counter() - t0
        batches.append(batch)
    timer.start()
    for batch in batches:
        x_BT, y_BT = to_device(batch, hw.device)
        loss = forward(x_BT, y_BT)
        (loss / accum).backward()
        loss_sum += loss.detach().float()
        tokens += batch.n_tokens
    params = [p for p in model.parameters() if p.grad is not None]
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    timer.stop()
    return loss_sum / accum, grad_norm, tokens, data_s


@torch.no_grad()
def evaluate(forward, model: SigmaLM, heldout: list[Batch], hw: HardwareProfile) -> float:
    """Mean held-out loss over the fixed held-out batches."""
    model.eval()
    total = torch.zeros((), device=hw.device, dtype=torch.float32)
    for batch in heldout:
        x_BT, y_BT = to_device(batch, hw.device)
        total += forward(x_BT, y_BT).float()
    model.train()
    return (total / len(heldout)).item()


@torch.no_grad()
def write_samples(model: SigmaLM, tok, run_dir: Path, step: int, hw: HardwareProfile, seed: int) -> None:
    """Append a few greedy-ish continuations of fixed prompts to samples.jsonl (uncompiled model)."""
    model.eval()
    gen = torch.Generator(device=hw.device).manual_seed(seed + step)
    with open(run_dir / "samples.jsonl", "a", encoding="utf-8") as f:
        for prompt in SAMPLE_PROMPTS:
            ids = torch.tensor([tok.encode(prompt).ids], dtype=torch.long, device=hw.device)
            out = model.generate(ids, max_new_tokens=48, temperature=0.8, top_k=40, generator=gen)
            text = tok.decode(out[0].tolist())
            f.write(json.dumps({"step": step, "prompt": prompt, "text": text}) + "\n")
    model.train()


def save_final(model: SigmaLM, tok_dir: Path, cfg: RunConfig, state: TrainState, extra: dict) -> Path:
    """Write the end-of-run weights as checkpoints/step_<N> (temporary folder, then atomic rename).

    The full resumable checkpoint (optimizer, RNG, data position, manifest, quarantine) is its own
    piece of work; this is the plain weights + tokenizer + config a user can load.
    """
    from safetensors.torch import save_file

    root = Path(cfg.loop.checkpoint_dir)
    final = root / f"step_{state.step}"
    tmp = root / f".tmp_step_{state.step}"
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(_unshare(tensors), str(tmp / "model.safetensors"))
    for name in os.listdir(tok_dir):
        (tmp / name).write_bytes((tok_dir / name).read_bytes())
    (tmp / "run.json").write_text(json.dumps({"step": state.step, "tokens": state.tokens,
                                              "model": model.cfg.to_dict(), **extra}, indent=2, default=str))
    if final.exists():
        import shutil

        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing storage (tied embeddings): keep one name per storage.
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------
# The run


def run(cfg: RunConfig) -> int:
    t_start = time.perf_counter()
    run_dir = Path(cfg.loop.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsWriter(run_dir / "metrics.jsonl")
    try:
        return _run(cfg, run_dir, metrics, t_start)
    finally:
        metrics.close()


def _run(cfg: RunConfig, run_dir: Path, metrics: MetricsWriter, t_start: float) -> int:
    loop = cfg.loop
    provenance = {"versions": library_versions(), "git_revision": git_revision()}
    hw = resolve_profile(device=cfg.hardware.device, profile=cfg.hardware.profile,
                         compile_mode=cfg.hardware.compile, c3o_state_dtype=cfg.optim.c3o_state_dtype)
    console.facts(**hw.startup_fields(), torch=torch.__version__, git_revision=provenance["git_revision"])
    seed_everything(loop.seed)

    # Tokenizer first: the pipeline tokenizes with it, and the model's vocabulary follows it.
    sampler = None if cfg.tokenizer.path else DataPipeline(cfg.data, None, seq_len=cfg.model.seq_len,
                                                           batch_size=loop.batch_size)
    tok = prepare_tokenizer(cfg, sampler, run_dir)
    pipeline = DataPipeline(cfg.data, tok, seq_len=cfg.model.seq_len, batch_size=loop.batch_size)
    heldout = pipeline.heldout_batches(loop.eval_batches)
    batches = Prefetcher(pipeline, pin_memory=hw.device.type == "cuda")
    try:
        return _train(cfg, run_dir, metrics, t_start, hw, tok, batches, heldout, provenance)
    finally:
        batches.close()


def _train(cfg: RunConfig, run_dir: Path, metrics: MetricsWriter, t_start: float, hw: HardwareProfile, tok,
           pipeline: Prefetcher, heldout: list[Batch], provenance: dict) -> int:
    loop = cfg.loop

    model = build_model(cfg, tok.get_vocab_size(), hw)
    opt = build_optimizers(
        model, lr=cfg.optim.lr, muon_lr=cfg.optim.muon_lr, weight_decay=cfg.optim.weight_decay,
        betas=(0.9, 0.95), c3o_state_dtype=hw.c3o_state_dtype, c3o_cautious=cfg.optim.c3o_cautious,
        muon_momentum=muon_momentum(0), ns_steps=DEFAULT_NS_STEPS, seed=loop.seed,
        use_muon=cfg.optim.name == "muon",
    )
    split_summary = opt.split.summary if opt.muon is not None else {
        "muon_params": 0, "c3o_params": len(opt.split.muon) + len(opt.split.c3o),
        "muon_numel": 0, "c3o_numel": opt.split.muon_numel + opt.split.c3o_numel}
    # The self-test runs the very iteration Muon uses: same kernel, steps, coefficients and dtype.
    inversion = instant_inversion_selftest(steps=DEFAULT_NS_STEPS, coefficients=DEFAULT_NS_COEFFICIENTS,
                                           dtype=torch.bfloat16, device=hw.device)
    check_instant_inversion(inversion)
    forward = torch.compile(model) if hw.compile else model

    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.flops_per_token(cfg.model.seq_len)
    resolved = write_run_config(cfg, run_dir, {
        "model": model.cfg.to_dict(), "n_params": n_params, "hardware": hw.startup_fields(), **provenance,
    })
    print(json.dumps(resolved["config"], indent=None, default=str), flush=True)
    startup_init_s = time.perf_counter() - t_start
    console.facts(model_params=n_params, **split_summary, **inversion, startup_init_s=round(startup_init_s, 2))

    state = TrainState()
    eval0 = evaluate(forward, model, heldout, hw)
    metrics.write("eval", step=0, tokens=0, heldout_loss=eval0)
    console.say(f"held-out loss at step 0: {eval0:.4f}")
    startup = {"startup_init_s": startup_init_s, "instant_inversion_iters": inversion["instant_inversion_iters"],
               "instant_inversion_rel_residual": inversion["instant_inversion_rel_residual"],
               "n_params": n_params, "flops_per_token": flops_per_token, **split_summary,
               **hw.startup_fields()}

    timer = StepTimer(hw.device)
    loss_acc = torch.zeros((), device=hw.device)
    t_log = time.perf_counter()
    tokens_at_log = 0
    data_s_acc = 0.0
    for step in range(1, loop.steps + 1):
        mult = lr_multiplier(step - 1, total_steps=loop.steps, warmup_steps=cfg.optim.warmup_steps,
                             schedule=cfg.optim.schedule)
        opt.set_lr_multiplier(mult, momentum=muon_momentum(step - 1))
        if step == 1:
            startup["time_to_first_batch_s"] = time.perf_counter() - t_start
        loss, grad_norm, n_tokens, data_s = train_step(forward, model, opt, pipeline, cfg, hw, timer)
        state.step, state.tokens = step, state.tokens + n_tokens
        loss_acc += loss
        data_s_acc += data_s
        if step == 1:
            startup["time_to_first_step_s"] = time.perf_counter() - t_start
            metrics.write("startup", step=0, tokens=0, **startup)
            console.facts(time_to_first_step_s=round(startup["time_to_first_step_s"], 2))

        if step % loop.log_every == 0 or step == loop.steps:
            step_times = timer.drain()  # the one host-device sync per log interval
            loss_val = (loss_acc / len(step_times)).item()
            loss_acc.zero_()
            now = time.perf_counter()
            interval_tokens = state.tokens - tokens_at_log
            core_s = sum(step_times) / len(step_times)
            eff_s = (now - t_log) / len(step_times)
            core_tps = interval_tokens / max(sum(step_times), 1e-9)
            eff_tps = interval_tokens / max(now - t_log, 1e-9)
            mfu = (flops_per_token * core_tps / (hw.peak_bf16_tflops * 1e12)) if hw.peak_bf16_tflops else None
            if not math.isfinite(loss_val):
                raise FloatingPointError(f"loss became {loss_val} at step {step}; lower --lr / --muon-lr")
            rec = metrics.write(
                "step", step=step, tokens=state.tokens, loss=loss_val, loss_ema=state.loss_ema.update(loss_val),
                lr=cfg.optim.lr * mult, muon_lr=cfg.optim.muon_lr * mult, grad_norm=grad_norm.item(),
                core_step_time_s=core_s, effective_step_time_s=eff_s, core_tokens_per_s=core_tps,
                effective_tokens_per_s=eff_tps, effective_tokens_per_s_ema=state.tokens_per_s_ema.update(eff_tps),
                phase_data_s=data_s_acc / len(step_times), mfu=mfu,
            )
            console.status(step, loop.steps, loss=round(loss_val, 4), lr=rec["lr"],
                           tok_s=int(eff_tps), step_ms=round(eff_s * 1e3, 1))
            t_log, tokens_at_log, data_s_acc = now, state.tokens, 0.0

        if loop.eval_every and step % loop.eval_every == 0 and step != loop.steps:
            h = evaluate(forward, model, heldout, hw)
            metrics.write("eval", step=step, tokens=state.tokens, heldout_loss=h)
            console.say(f"held-out loss at step {step}: {h:.4f}")
        if loop.sample_every and step % loop.sample_every == 0 and step != loop.steps:
            write_samples(model, tok, run_dir, step, hw, loop.seed)

    final_loss = evaluate(forward, model, heldout, hw)
    metrics.write("eval", step=state.step, tokens=state.tokens, heldout_loss=final_loss)
    write_samples(model, tok, run_dir, state.step, hw, loop.seed)
    ckpt = save_final(model, run_dir / "tokenizer", cfg, state, provenance)
    if loop.export_hf:
        export_hf(model, loop.export_hf, tokenizer_dir=str(run_dir / "tokenizer"))
        console.say(f"exported Hugging Face model to {loop.export_hf}")
    drop = 1 - final_loss / eval0 if eval0 > 0 else 0.0
    metrics.write("end", step=state.step, tokens=state.tokens, heldout_loss=final_loss,
                  heldout_loss_step0=eval0, heldout_loss_drop=drop, wall_s=time.perf_counter() - t_start)
    console.say(f"done: {state.step} steps, {state.tokens:,} tokens, held-out loss {eval0:.4f} -> "
                f"{final_loss:.4f} ({drop:.0%} lower), weights in {ckpt}")
    return 0
