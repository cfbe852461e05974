"""The run's configuration: one small dataclass per subsystem, built once from the parsed flags.

`train_sigma.py` calls `RunConfig.from_args(namespace)` after the CLI has validated the flags and
passes the pieces down explicitly. Model, data and optimizer sections live beside their code
(`model.config.ModelConfig`, `training.data.pipeline.DataConfig`); this file holds the rest and the
assembly. Nothing here rewrites another section.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field

from training.data.pipeline import DEFAULT_MIX, DataConfig
from training.grpo import GRPOStageConfig


@dataclass
class HardwareConfig:
    device: str = "auto"
    """auto | cuda | cpu."""
    profile: str = "auto"
    """auto | bf16 | fp32 (see training.hardware)."""
    compile: str = "auto"
    """auto | on | off: torch.compile of the model."""
    kernels: str = "auto"
    """auto | triton | torch: which kernels run (see model.kernels)."""
    compile_cache: bool = True
    """persist torch.compile's cache next to the checkpoints."""
    fp8_lm_head: str = "auto"
    """auto | on | off: FP8 matmuls in the fused LM head + cross-entropy (model.kernels.fp8_lm_head_wanted)."""
    fused_mlp: str = "auto"
    """auto | on | off: the SwiGLU MLPs in quack's fused GEMMs (model.kernels.fused_mlp_wanted)."""
    flash_attention: str = "auto"
    """auto | on | off: attention through FlashAttention 4 (model.kernels.flash_attention_wanted)."""


@dataclass
class ModelSpec:
    """How to build the model; the vocabulary size comes from the tokenizer at run time."""

    preset: str = "tiny"
    seq_len: int = 256
    init_from: str | None = None
    """Hugging Face folder to start from instead of random weights."""
    bitnet: bool = False
    """BitNet 1.58 quantisation-aware training of the block linears."""


@dataclass
class TokenizerConfig:
    path: str | None = None
    """tokenizer.json or a folder holding one; None trains byte-level BPE on the stream."""
    vocab_size: int = 4096
    train_chars: int = 3_000_000
    """characters of the training stream sampled to train the tokenizer."""


@dataclass
class OptimConfig:
    name: str = "muon"
    """muon: Muon for block matrices + C3O for the rest; c3o: C3O for every parameter."""
    lr: float = 3e-3
    """peak C3O learning rate."""
    muon_lr: float = 0.02
    """peak Muon learning rate."""
    weight_decay: float = 0.0
    schedule: str = "wsd"
    """cosine | wsd (warmup-stable-decay)."""
    warmup_steps: int = 20
    """linear warm-up; the CLI defaults it to a tenth of the steps, at most 100."""
    grad_clip: float = 1.0
    """max global gradient norm; 0 disables clipping."""
    c3o_state_dtype: str = "auto"
    """auto | fp32 | bf16; auto follows the hardware profile."""
    c3o_cautious: bool = True
    ns_coefficients: str = "muon"
    """muon | polar_express: the Newton-Schulz coefficient schedule."""


@dataclass
class CheckpointConfig:
    dir: str = "checkpoints"
    resume: str = "auto"
    """auto | never | a step_<N> folder."""
    weights_only: bool = False
    """take only weights + tokenizer from the checkpoint; optimizer, step and data start fresh."""
    save_every: int = 500
    """steps between saves; 0 saves at the end only."""
    keep: int = 5
    """complete checkpoints kept by retention."""
    async_save: bool = False
    max_nonfinite_skips: int = 3
    """consecutive non-finite steps before rolling back to the last checkpoint."""


@dataclass
class LoopConfig:
    steps: int = 1000
    seed: int = 1337
    batch_size: int = 8
    grad_accum: int = 1
    log_every: int = 10
    eval_every: int = 100
    """0: evaluate at the start and the end only."""
    eval_batches: int = 8
    sample_every: int = 0
    """0: write samples at the end only."""
    output_dir: str = "runs/sigma_main"
    export_hf: str | None = None
    metrics_level: str = "full"
    """full | minimal (no per-stage timings or resource sampling)."""
    wandb: str = "off"
    """off | offline | online."""


@dataclass
class RunConfig:
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> RunConfig:
        """Build from flags already validated by training.cli."""
        return cls(
            hardware=HardwareConfig(device=ns.device, profile=ns.hardware_profile, compile=ns.compile,
                                    kernels=ns.kernels, compile_cache=ns.compile_cache,
                                    fp8_lm_head=ns.fp8_lm_head, fused_mlp=ns.fused_mlp,
                                    flash_attention=ns.flash_attention),
            model=ModelSpec(preset=ns.model_preset, seq_len=ns.seq_len, init_from=ns.init_from,
                            bitnet=ns.bitnet_1_58),
            tokenizer=TokenizerConfig(path=ns.tokenizer, vocab_size=ns.vocab_size,
                                      train_chars=ns.tokenizer_train_chars),
            data=DataConfig(
                backend=ns.data_backend,
                paths=list(ns.data_path or []),
                text_field=ns.text_field,
                bootstrap_seed_batches=ns.bootstrap_seed_batches,
                seed=ns.seed,
                workers=ns.data_workers,
                **({"mix": {**dict.fromkeys(DEFAULT_MIX, 0.0), **ns.mix}} if ns.mix else {}),
                fineweb_path=ns.fineweb_path,
                fineweb_config=ns.fineweb_config,
                fineweb_min_score=ns.fineweb_min_score,
                cosmopedia_path=ns.cosmopedia_path,
                **({"cosmopedia_subsets": ns.cosmopedia_subsets} if ns.cosmopedia_subsets else {}),
                cc_crawl=ns.cc_crawl or None,
                cc_wet_paths=ns.cc_wet_paths,
                source_timeout=ns.source_timeout,
                on_source_failure=ns.on_source_failure,
            ),
            optim=OptimConfig(
                name=ns.optimizer, lr=ns.lr, muon_lr=ns.muon_lr, weight_decay=ns.weight_decay,
                schedule=ns.lr_schedule, warmup_steps=ns.warmup_steps, grad_clip=ns.grad_clip,
                c3o_state_dtype=ns.c3o_state_dtype, c3o_cautious=ns.c3o_cautious,
                ns_coefficients=ns.ns_coefficients,
            ),
            loop=LoopConfig(
                steps=ns.steps, seed=ns.seed, batch_size=ns.batch_size, grad_accum=ns.grad_accum,
                log_every=ns.log_every, eval_every=ns.eval_every, eval_batches=ns.eval_batches,
                sample_every=ns.sample_every, output_dir=ns.output_dir, export_hf=ns.export_hf,
                metrics_level=ns.metrics_level, wandb=ns.wandb,
            ),
            checkpoint=CheckpointConfig(
                dir=ns.checkpoint_dir, resume=ns.resume, weights_only=ns.resume_weights_only,
                save_every=ns.save_every, keep=ns.max_checkpoints, async_save=ns.async_checkpoint,
                max_nonfinite_skips=ns.max_nonfinite_skips,
            ),
            grpo=GRPOStageConfig(
                enabled=ns.grpo, every=ns.grpo_every, steps=ns.grpo_steps, prompts_per_step=ns.grpo_prompts,
                generations=ns.grpo_generations, max_completion_length=ns.grpo_completion_length,
                temperature=ns.grpo_temperature, beta=ns.grpo_beta, lr=ns.grpo_lr, lora_rank=ns.grpo_lora_rank,
                reward_success=ns.reward_success, reward_fail=ns.reward_fail, accelerator=ns.grpo_accelerator,
                tasks=ns.grpo_tasks, difficulties=tuple(ns.grpo_difficulty), eval_tasks=ns.grpo_eval_tasks,
                sandbox_workers=ns.sandbox_workers, sandbox_timeout_s=ns.sandbox_timeout,
                only=ns.stages == "grpo",
            ),
        )

    def to_dict(self) -> dict:
        return asdict(self)
