"""The GRPO stage: TRL `GRPOTrainer` on executable-code tasks, run on the live weights between pretraining steps.

Live weights, no disk: `hf_view(model)` builds a stock transformers `Qwen3ForCausalLM` (or
`LlamaForCausalLM` for a model without QK norm, e.g. an imported SmolLM2) whose parameters *are* the
SigmaLM's `nn.Parameter` objects (same storage; only the rotary buffers are new), so TRL's optimizer
updates the pretraining weights in place and nothing is copied back.
With LoRA (`lora_rank > 0`) PEFT wraps that view; after the phase the adapters are merged into the
shared base weights and removed. Measured on the tiny preset (CPU), building the view takes a few
milliseconds (no tensor is copied; see `phase_view_s` in the metrics).

Prompts: with a chat template (an instruct model's tokenizer folder, `tokenizer_dir`) each task goes in
as a conversation (`[{"role": "user", ...}]`, the task's open code fence turned into an instruction;
TRL renders it with the template) and the tokenizer's own eos ends a turn; without one, the plain
prompt that ends inside a ```python block is continued. The held-out evaluation renders prompts the
same way and decodes greedily; the first phase also scores the held-out tasks before training
(`grpo_heldout_pass_rate_before`), so one run shows what GRPO changed.

Rewards: the completion's program runs in the sandbox against the task's hidden tests; all pass ->
`reward_success` (+2.0), anything else -> `reward_fail` (-1.0); a sandbox infrastructure failure ->
`None`, which TRL 1.15 treats as unscorable (excluded from the group baseline, advantage 0).

Each phase builds a fresh `GRPOConfig`/`GRPOTrainer` (fresh AdamW over the trainable weights: no
optimizer state crosses phases), with its seed and task slice fixed by the phase index, and keeps
the global RNG states of the pretraining loop untouched (TRL's `set_seed` is undone after the phase).
So the stage's whole state is a few counters (`state_dict`), and a resumed run replays it exactly.

Start-up: `trl_grpo_available()` is cheap (an import-spec lookup) when GRPO is off; with GRPO on,
`GRPOStage.__init__` imports TRL for real and raises `GRPOUnavailable` with the fix if it fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from training import console
from training.sandbox import SandboxLimits, SandboxPool
from training.tasks import Task, TaskGenerator, chat_prompt, load_humaneval, load_jsonl


class GRPOUnavailable(RuntimeError):
    """GRPO is enabled but TRL (or its dependencies) cannot be imported: a start-up error."""


@dataclass
class GRPOStageConfig:
    """The `grpo` flag group (training/cli.py); validated there."""

    enabled: bool = False
    every: int = 100
    """pretraining steps between GRPO phases (a phase runs after step every, 2*every, ...)."""
    steps: int = 10
    """GRPO optimizer steps per phase."""
    prompts_per_step: int = 2
    """distinct tasks per GRPO step; each gets `generations` completions."""
    generations: int = 4
    max_completion_length: int = 128
    temperature: float = 1.0
    beta: float = 0.0
    """KL coefficient against the phase's starting weights (0 = no reference model, TRL's default)."""
    lr: float = 1e-5
    lora_rank: int = 0
    """0 = full weights; > 0 = LoRA of this rank on the attention and MLP projections, merged after."""
    reward_success: float = 2.0
    reward_fail: float = -1.0
    accelerator: str = "auto"
    """auto | unsloth | none: unsloth's patched GRPO trainer on CUDA when importable."""
    tasks: str = "generated"
    """generated | humaneval | a JSONL file path."""
    difficulties: tuple[int, ...] = (1, 2, 3)
    eval_tasks: int = 16
    """held-out tasks scored (greedy) after each phase, and before the first; 0 = none."""
    sandbox_workers: int = 0
    """0 = one per CPU core."""
    sandbox_timeout_s: float = 5.0
    only: bool = False
    """--stages grpo: no pretraining steps, only GRPO phases (with --init-from)."""


def trl_grpo_available() -> bool:
    """Whether TRL's GRPO can be imported, without importing it (cheap; the start-up field)."""
    try:
        return importlib.util.find_spec("trl") is not None and importlib.util.find_spec("peft") is not None
    except (ImportError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------
# A Hugging Face view of the live SigmaLM


def hf_view(model):
    """A transformers Qwen3ForCausalLM (LlamaForCausalLM without QK norm) sharing `model`'s parameter
    objects (no copy)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from model.hf_compat import config_to_hf

    p0 = next(model.parameters())
    hf_cfg = config_to_hf(model.cfg)
    hf_cfg.pop("architectures", None)
    config_cls, model_cls = {"qwen3": (Qwen3Config, Qwen3ForCausalLM),
                             "llama": (LlamaConfig, LlamaForCausalLM)}[hf_cfg.pop("model_type")]
    hf_cfg["dtype"] = str(p0.dtype).removeprefix("torch.")
    # No special-token ids from the config classes' defaults (Llama's say eos=2): TRL would add them
    # to the stop tokens; the run's tokenizer is the only authority.
    hf_cfg.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    config = config_cls(**hf_cfg)
    with torch.device("meta"):
        hf = model_cls(config)
    for name, param in model.named_parameters():
        hf_name = name if name == "lm_head.weight" else f"model.{name}"
        owner, leaf = hf_name.rsplit(".", 1)
        hf.get_submodule(owner)._parameters[leaf] = param
    if model.cfg.tie_embeddings:
        hf.lm_head.weight = hf.model.embed_tokens.weight
    # The rotary buffers were created on meta: rebuild them where the weights live (fp32 tables).
    rotary_cls = type(hf.model.rotary_emb)
    hf.model.rotary_emb = rotary_cls(config=config).to(p0.device)
    leftover = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"hf_view: tensors left on meta: {leftover[:5]}")
    hf.generation_config.bos_token_id = hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = None
    return hf


def hf_tokenizer(tok, folder: str | os.PathLike | None = None):
    """A transformers fast tokenizer over the run's `tokenizers.Tokenizer` (same ids).

    Special tokens default to eco_train's own (`<|endoftext|>` ends a sequence). With `folder` (the
    --tokenizer folder of a pretrained model, or a tokenizer.json in it) the folder's
    tokenizer_config.json names them instead and its chat template (chat_template.jinja, or the
    config's `chat_template`) is attached: an instruct model such as SmolLM2 ends a turn with
    `<|im_end|>`, never `<|endoftext|>`.
    """
    from transformers import PreTrainedTokenizerFast

    from training.data.tokenizer import EOS_TOKEN, PAD_TOKEN

    if isinstance(tok, PreTrainedTokenizerFast):
        return tok
    pad = PAD_TOKEN if tok.token_to_id(PAD_TOKEN) is not None else EOS_TOKEN
    specials = {"eos_token": EOS_TOKEN, "pad_token": pad, "bos_token": EOS_TOKEN}
    template = None
    if folder is not None:
        folder = Path(folder) if Path(folder).is_dir() else Path(folder).parent  # --tokenizer DIR/tokenizer.json
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value  # older AddedToken form
            if value is None:
                continue
            if tok.token_to_id(value) is None:
                raise ValueError(f"{config_file}: {key} {value!r} is not in the tokenizer's vocabulary; "
                                 "fix: point --tokenizer at the folder the tokenizer.json came with")
            specials[key] = value
        if "pad_token" not in config and tok.token_to_id(PAD_TOKEN) is None:
            specials["pad_token"] = specials["eos_token"]
        template_file = folder / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else config.get("chat_template")
        if template is not None and not isinstance(template, str):
            raise ValueError(f"{config_file}: chat_template is not a single template string; eco_train does "
                             "not pick among named templates. fix: save the wanted one as chat_template.jinja")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **specials)
    fast.padding_side = "left"
    fast.chat_template = template
    return fast


# ----------------------------------------------------------------------------------------------
# Rewards


class CodeReward:
    """TRL reward function: run each completion's program in the sandbox against its task's tests."""

    def __init__(self, pool: SandboxPool, tasks: dict[str, Task], *, success: float, fail: float) -> None:
        self.pool, self.tasks, self.success, self.fail = pool, tasks, success, fail
        self.__name__ = "code_reward"
        self.kinds: Counter = Counter()
        self.rewards: list[float] = []
        self.exec_s = 0.0
        self.executions = 0

    def __call__(self, prompts, completions, task_id, **_) -> list[float | None]:
        jobs = [self.tasks[t].job(_text(c)) for c, t in zip(completions, task_id, strict=False)]
        t0 = time.perf_counter()
        results = self.pool.run_many(jobs)
        self.exec_s += time.perf_counter() - t0
        self.executions += len(results)
        out: list[float | None] = []
        for r in results:
            self.kinds[r.kind] += 1
            if r.infra:
                out.append(None)
                continue
            reward = self.success if r.passed else self.fail
            self.rewards.append(reward)
            out.append(reward)
        return out


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(m.get("content", "") for m in completion)
    return completion


# ----------------------------------------------------------------------------------------------
# The stage


@dataclass
class _StageState:
    phases: int = 0
    grpo_steps: int = 0
    executions: int = 0
    passes: int = 0
    infra_failures: int = 0
    kinds: dict = field(default_factory=dict)
    prompt_format: str = "plain"
    """chat | plain: fixed by the tokenizer folder; a resume must not switch it silently."""


class GRPOStage:
    """GRPO phases on the live model. See the module docstring for the contract."""

    def __init__(self, cfg: GRPOStageConfig, tokenizer, *, device, seed: int,
                 tokenizer_dir: str | os.PathLike | None = None) -> None:
        self.cfg, self.device, self.seed = cfg, device, seed
        self.accelerator = _import_trl(cfg.accelerator, device)
        self.tokenizer = hf_tokenizer(tokenizer, tokenizer_dir)
        self.chat = self.tokenizer.chat_template is not None
        self.state = _StageState(prompt_format="chat" if self.chat else "plain")
        self.pool = SandboxPool(cfg.sandbox_workers or None,
                                SandboxLimits(timeout_s=cfg.sandbox_timeout_s, cpu_s=max(1, int(cfg.sandbox_timeout_s))))
        self._fixed: list[Task] | None = None
        if cfg.tasks == "humaneval":
            self._fixed = load_humaneval()
        elif cfg.tasks != "generated":
            self._fixed = load_jsonl(cfg.tasks)

    # -- schedule ---------------------------------------------------------------------------------
    def should_run(self, step: int) -> bool:
        """After pretraining step `step` (1-based): every `every` steps."""
        return self.cfg.enabled and self.cfg.every > 0 and step > 0 and step % self.cfg.every == 0

    # -- tasks --------------------------------------------------------------------------------------
    def _train_tasks(self, phase: int, n: int) -> list[Task]:
        if self._fixed is not None:
            rng = random.Random(f"{self.seed}:grpo:{phase}")
            return [self._fixed[rng.randrange(len(self._fixed))] for _ in range(n)]
        gen = TaskGenerator(self.seed, split="train", difficulties=self.cfg.difficulties)
        gen.position = phase * n
        return gen.take(n)

    def prompt(self, task: Task):
        """What the policy is given for `task`: a conversation with a chat template, else the plain text."""
        return [{"role": "user", "content": chat_prompt(task.prompt)}] if self.chat else task.prompt

    def heldout_tasks(self) -> list[Task]:
        if self._fixed is not None:
            return self._fixed[: self.cfg.eval_tasks]
        return TaskGenerator(self.seed, split="heldout", difficulties=self.cfg.difficulties).take(self.cfg.eval_tasks)

    # -- the phase --------------------------------------------------------------------------------
    def run_phase(self, model, step: int) -> dict:
        """Run `cfg.steps` GRPO steps on `model`'s live weights in place; return flat metrics."""
        import torch

        t_phase = time.perf_counter()
        cfg, phase = self.cfg, self.state.phases
        before = {}
        if phase == 0 and cfg.eval_tasks:
            before = {"grpo_heldout_pass_rate_before": self.evaluate(model)["grpo_heldout_pass_rate"]}
        rng_saved = _get_rng()
        was_training = model.training
        grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        t0 = time.perf_counter()
        hf = hf_view(model)
        view_s = time.perf_counter() - t0
        n_prompts = cfg.steps * cfg.prompts_per_step
        tasks = self._train_tasks(phase, n_prompts)
        by_id = {t.task_id: t for t in tasks}
        reward = CodeReward(self.pool, by_id, success=cfg.reward_success, fail=cfg.reward_fail)
        try:
            trainer = self._build_trainer(hf, tasks, reward, phase)
            trainer.train()
            rollout = _rollout_means(trainer.state.log_history)
            trained = trainer.model
            if cfg.lora_rank > 0:
                trained = trained.merge_and_unload()  # folds the adapters into the shared base weights
            del trainer, trained
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.requires_grad_(grad_flags[n])
                    p.grad = None
            model.train(was_training)
            _set_rng(rng_saved)
        train_s = time.perf_counter() - t0
        heldout = self.evaluate(model) if cfg.eval_tasks else {}
        st = self.state
        st.phases += 1
        st.grpo_steps += cfg.steps
        st.executions += reward.executions
        st.passes += reward.kinds.get("pass", 0)
        st.infra_failures += reward.kinds.get("infra", 0)
        for k, v in reward.kinds.items():
            st.kinds[k] = st.kinds.get(k, 0) + v
        scored = max(1, reward.executions - reward.kinds.get("infra", 0))
        out = {
            "grpo_phase": phase + 1, "grpo_steps": cfg.steps, "grpo_accelerator": self.accelerator,
            "grpo_prompt_format": self.state.prompt_format,
            "grpo_executions": reward.executions, "grpo_pass_rate": reward.kinds.get("pass", 0) / scored,
            "grpo_mean_reward": sum(reward.rewards) / len(reward.rewards) if reward.rewards else None,
            "grpo_timeouts": reward.kinds.get("timeout", 0), "grpo_infra_failures": reward.kinds.get("infra", 0),
            "grpo_executions_per_s": reward.executions / reward.exec_s if reward.exec_s else None,
            "grpo_phase_s": time.perf_counter() - t_phase, "grpo_train_s": train_s, "grpo_view_s": view_s,
            "grpo_sandbox_isolation": self.pool.iso.mode, "grpo_network_cut": int(self.pool.iso.network_cut),
            **{f"grpo_errors_{k}": v for k, v in sorted(reward.kinds.items()) if k != "pass"},
            **rollout, **before, **heldout,
        }
        return out

    def _build_trainer(self, hf, tasks: list[Task], reward: CodeReward, phase: int):
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        cfg = self.cfg
        on_cpu = self.device.type != "cuda"
        bf16 = (not on_cpu) and next(hf.parameters()).dtype.is_floating_point and \
            next(hf.parameters()).dtype.itemsize == 2
        args = GRPOConfig(
            output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "eco_train_grpo_unused"),
            max_steps=cfg.steps, per_device_train_batch_size=cfg.prompts_per_step * cfg.generations,
            gradient_accumulation_steps=1, num_generations=cfg.generations,
            max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, beta=cfg.beta,
            learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            seed=self.seed + phase, data_seed=self.seed + phase, shuffle_dataset=False,
            bf16=bf16, fp16=False, use_cpu=on_cpu, save_strategy="no", report_to="none",
            logging_steps=max(1, cfg.steps), gradient_checkpointing=False, disable_tqdm=True,
            dataloader_num_workers=0, log_completions=False, remove_unused_columns=False,
        )
        if cfg.lora_rank == 0 and bf16:
            console.say(f"WARNING: full-weight GRPO on bf16 weights: AdamW steps smaller than ~1/256 of a weight "
                        f"round away (--grpo-lr {cfg.lr:g}); fix: --hardware-profile fp32 or --grpo-lora-rank R")
        ds = Dataset.from_list([{"prompt": self.prompt(t), "task_id": t.task_id} for t in tasks])
        peft_config = None
        if cfg.lora_rank > 0:
            from peft import LoraConfig

            peft_config = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0,
                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"])
        return GRPOTrainer(model=hf, reward_funcs=[reward], args=args, train_dataset=ds,
                           processing_class=self.tokenizer, peft_config=peft_config)

    def evaluate(self, model, *, batch: int = 64) -> dict:
        """Greedy completions of the held-out tasks (through the HF view: KV cache, stops at EOS),
        prompted as in training, scored in the sandbox: `grpo_heldout_pass_rate`."""
        import torch

        tasks, tok = self.heldout_tasks(), self.tokenizer
        hf = hf_view(model)
        was_training = model.training
        hf.eval()
        completions: list[str] = []
        room = model.cfg.max_seq_len
        with torch.no_grad():
            for i in range(0, len(tasks), batch):
                chunk = tasks[i:i + batch]
                # A template writes the special tokens itself, as TRL's rendering of the training prompts does.
                texts = [tok.apply_chat_template(self.prompt(t), tokenize=False, add_generation_prompt=True)
                         for t in chunk] if self.chat else [t.prompt for t in chunk]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not self.chat)
                n_new = max(1, min(self.cfg.max_completion_length, room - enc["input_ids"].shape[1]))
                enc = {k: v[:, -(room - n_new):].to(next(model.parameters()).device) for k, v in enc.items()}
                out = hf.generate(**enc, do_sample=False, max_new_tokens=n_new, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id)
                completions += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        model.train(was_training)
        results = self.pool.run_many([t.job(c) for t, c in zip(tasks, completions, strict=False)])
        scored = [r for r in results if not r.infra]
        return {"grpo_heldout_pass_rate": sum(r.passed for r in scored) / max(1, len(scored)),
                "grpo_heldout_tasks": len(tasks)}

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, d: dict) -> None:
        saved = _StageState(**d)
        if saved.prompt_format != self.state.prompt_format:
            raise ValueError(f"the checkpoint's GRPO phases prompted the model in {saved.prompt_format} format, this "
                             f"run would use {self.state.prompt_format}; fix: resume with the same --tokenizer "
                             "folder (its chat template decides the format)")
        self.state = saved

    def close(self) -> None:
        self.pool.close()


# TRL's per-step rollout statistics worth keeping per phase: how long the answers are, how many hit
# the length limit (a cut-off answer rarely passes), and how many groups had no reward spread (no
# advantage, nothing learnt from them).
_ROLLOUT_KEYS = {"completions/mean_length": "grpo_completion_mean_length",
                 "completions/clipped_ratio": "grpo_completion_clipped_ratio",
                 "frac_reward_zero_std": "grpo_frac_reward_zero_std"}


def _rollout_means(log_history: list[dict]) -> dict:
    """Means over the phase of `_ROLLOUT_KEYS` in TRL's log history (absent keys are skipped).

    TRL averages its metrics over each logging window; with `logging_steps` = the phase's steps there
    is one window, so this is that window's value (or the mean of windows if TRL logs more often).
    """
    out = {}
    for trl_key, key in _ROLLOUT_KEYS.items():
        values = [float(h[trl_key]) for h in log_history if trl_key in h]
        if values:
            out[key] = sum(values) / len(values)
    return out


def _import_trl(accelerator: str, device) -> str:
    """Import TRL (unsloth first where it must be) and return the accelerator that will run."""
    cuda = getattr(device, "type", str(device)) == "cuda"
    use_unsloth = accelerator == "unsloth" or (accelerator == "auto" and cuda
                                                and importlib.util.find_spec("unsloth") is not None)
    if accelerator == "unsloth" and not cuda:
        raise GRPOUnavailable("--grpo-accelerator unsloth needs a CUDA GPU; fix: use --grpo-accelerator auto or none")
    try:
        if use_unsloth or not cuda:
            # TRL 1.15's GRPO calls a Triton log-prob kernel that fails without a GPU driver unless
            # unsloth is imported first (it then falls back to CPU code); unsloth must precede trl.
            import unsloth  # noqa: F401
        import trl  # noqa: F401
        from trl import GRPOConfig, GRPOTrainer  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure is the same start-up error
        raise GRPOUnavailable(f"GRPO is on but TRL cannot be imported ({type(e).__name__}: {e}); fix: "
                              "run scripts/setup_env.sh (installs trl/peft/unsloth from the lock) or --grpo off") from e
    return "unsloth" if use_unsloth else "none"


def _get_rng() -> dict:
    import numpy as np
    import torch

    d = {"py": random.getstate(), "np": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        d["cuda"] = torch.cuda.get_rng_state_all()
    return d


def _set_rng(d: dict) -> None:
    import numpy as np
    import torch

    random.setstate(d["py"])
    np.random.set_state(d["np"])
    torch.set_rng_state(d["torch"])
    if "cuda" in d:
        torch.cuda.set_rng_state_all(d["cuda"])
