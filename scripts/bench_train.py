"""Training-step throughput of our stack against the two baselines a user would otherwise pick.

    python3 scripts/bench_train.py --presets 124m 350m --seq-len 2048 --tokens-per-step 65536 --json out.json

In one process on one GPU, with the same model dimensions, sequence length and tokens per optimizer
step, and random tokens already on the GPU (no data cost), it times:

* ``hf_qwen3``   stock ``transformers`` ``Qwen3ForCausalLM`` (SDPA attention), fp32 master weights under
                 bf16 autocast, ``torch.compile``, fused ``torch.optim.AdamW``, loss from ``labels=``.
* ``plain``      the same architecture written plainly in PyTorch (nanoGPT style, below), fp32 master
                 weights under bf16 autocast, ``torch.compile``, fused AdamW.
* ``sigma``      our stack as the trainer runs it: ``SigmaLM`` in bf16 with the kernels ``--kernels``
                 selects, ``torch.compile``, Muon + C3O, gradient clipping and the device-side
                 non-finite guard.
* ``sigma_adamw`` the same model and kernels with fused AdamW, to show what Muon + C3O add per step.
* ``sigma_flip``  ``sigma`` with the kernel choice of the ops in ``--flip-ops`` reversed (Triton <-> the
                 compiled reference): the in-step A/B that decides what ``--kernels auto`` picks.
* ``sigma_fp8``   ``sigma`` with the fused linear + CE's FP8 matmuls (the trainer's ``--fp8-lm-head on``).
* ``sigma_fp8_bf16_grad_w`` ``sigma_fp8`` with the head's weight gradient a bf16 matmul
                 (``linear_ce.triton_impl_fp8``, the FP8 head before session 23): the A/B of the FP8 weight
                 gradient. No trainer flag.
* ``sigma_bf16_head`` ``sigma`` with the LM head in bf16 (``--fp8-lm-head off``).
* ``sigma_fp8_linears`` ``sigma`` with every block linear in FP8 through torchao's float8 training
                 (``convert_to_float8_training``, recipe ``--fp8-linears-recipe``): the experiment of
                 FP8 matmuls beyond the LM head. The trainer has no such flag.
* ``sigma_unfused_mlp`` ``sigma`` with the SwiGLU MLPs as three matmuls under ``torch.compile``
                 (``--fused-mlp off``), where ``sigma`` follows ``--fused-mlp`` (default ``auto``: on the
                 H100, each block's MLP in quack's fused GEMMs). The in-step A/B behind that default.
* ``sigma_sdpa``  ``sigma`` with attention through SDPA (cuDNN; ``--flash-attention off``), where ``sigma``
                 follows ``--flash-attention`` (default ``auto``: FlashAttention 4 on compute capability 9.0).
                 The in-step A/B behind that default.

Without ``--contenders`` it times the first four; the last seven are A/B contenders, named when wanted.

``sigma``, ``sigma_adamw`` and ``sigma_flip`` decide the FP8 LM head as the trainer does (``--fp8-lm-head``,
default ``auto``: on where the fused linear + CE runs on FP8 tensor cores), and the fused MLP likewise
(``--fused-mlp``; compiled in the warm-up from the shipped tuned configs, ~50 s more at 124m on the H100,
or autotuned there for minutes where none ship), and FlashAttention 4 (``--flash-attention``); each row says
whether each ran.

All contenders of a preset are built and warmed up first (compilation and warm-up excluded), then
timed in turns: ``--repeats`` rounds, each one window of ``--steps`` steps (CUDA events) per
contender, so clock or thermal drift hits every contender alike. The median window is reported:
tokens/s, MFU against a bf16 matmul peak measured in the same run, peak memory (each contender's
own, above what those built before it hold), the ratio to the faster baseline, and the SM clock
and board power NVML reported during the contender's windows (sampled every 50 ms by the trainer's
``ResourceSampler``, averaged per window, the median window). MFU counts, per token,
6 x (block matrices + LM head, counted even when tied) + 12 x layers x d_model x seq_len FLOPs.
The peak is measured again after the last preset (``peak_bf16_tflops_end``): on a card at its power
limit the two can differ by several percent, and MFU moves with them.

Learning rates: ``--muon-lr`` and ``--c3o-lr`` for Muon + C3O, ``--adamw-lr`` for every contender
trained with AdamW. ``--shared-weights`` starts every SigmaLM contender after the first from the
weights that first one has after its warm-up, so ``sigma`` and ``sigma_adamw`` time the same model
rather than Muon-trained weights against nearly untouched ones. (Both were made to test whether the
weights change how fast the same kernels run; on an H100 they did not: PERFORMANCE.md, "The
optimizer step".)

``--device cpu --presets tiny --seq-len 64 --tokens-per-step 512 --steps 1 --repeats 1 --compile off``
with ``TRITON_INTERPRET=1`` (``sigma_flip`` runs a Triton kernel) is a smoke check that runs on any
machine (tests/test_bench_scripts.py); only GPU figures mean anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import bf16_matmul_peak_tflops  # noqa: E402

from model import kernels  # noqa: E402
from model.config import ModelConfig, from_preset  # noqa: E402
from model.decoder import SigmaLM  # noqa: E402
from model.hf_compat import config_to_hf  # noqa: E402
from training.metrics import ResourceSampler  # noqa: E402
from training.optim import build_optimizers  # noqa: E402

CONTENDERS = ("hf_qwen3", "plain", "sigma", "sigma_adamw", "sigma_flip", "sigma_fp8", "sigma_fp8_bf16_grad_w",
              "sigma_bf16_head", "sigma_fp8_linears", "sigma_unfused_mlp", "sigma_sdpa")
# What a plain run times: the two baselines, our stack, and the same model with fused AdamW. Each contender
# compiles for up to a minute on an H100, so the A/B ones (flip, FP8 / bf16 head) are named when wanted.
DEFAULT_CONTENDERS = ("hf_qwen3", "plain", "sigma", "sigma_adamw")
BASELINES = ("hf_qwen3", "plain")


# ---------------------------------------------------------------------------- the plain baseline


class PlainBlock(nn.Module):
    """Qwen3's block written the way a nanoGPT user would: one module, no abstractions."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.c = c
        self.ln1, self.ln2 = nn.RMSNorm(c.d_model, eps=c.rms_eps), nn.RMSNorm(c.d_model, eps=c.rms_eps)
        self.q_norm, self.k_norm = nn.RMSNorm(c.head_dim, eps=c.rms_eps), nn.RMSNorm(c.head_dim, eps=c.rms_eps)
        self.qkv = nn.Linear(c.d_model, (c.n_head + 2 * c.n_kv_head) * c.head_dim, bias=False)
        self.proj = nn.Linear(c.n_head * c.head_dim, c.d_model, bias=False)
        self.gate_up = nn.Linear(c.d_model, 2 * c.d_ff, bias=False)
        self.down = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c = self.c
        B, T, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(
            [c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_kv_head * c.head_dim], dim=-1)
        q = self.q_norm(q.view(B, T, c.n_head, c.head_dim)).transpose(1, 2)
        k = self.k_norm(k.view(B, T, c.n_kv_head, c.head_dim)).transpose(1, 2)
        v = v.view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=c.n_head != c.n_kv_head)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, -1))
        gate, up = self.gate_up(self.ln2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class PlainLM(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(PlainBlock(c) for _ in range(c.n_layer))
        self.norm = nn.RMSNorm(c.d_model, eps=c.rms_eps)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        inv = 1.0 / c.rope_theta ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim)
        freqs = torch.outer(torch.arange(c.max_seq_len).float(), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=c.init_std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        cos, sin = self.cos[:T].to(torch.bfloat16), self.sin[:T].to(torch.bfloat16)
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(self.norm(x)).float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


# ---------------------------------------------------------------------------- contenders


SIGMA_FAMILY = ("sigma", "sigma_adamw", "sigma_flip", "sigma_fp8", "sigma_fp8_bf16_grad_w", "sigma_bf16_head",
                "sigma_fp8_linears", "sigma_unfused_mlp", "sigma_sdpa")
FP8_LINEARS_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")  # torchao's Float8LinearRecipeName values
FP8_HEAD_FORCED = {"sigma_fp8": "on", "sigma_fp8_bf16_grad_w": "on", "sigma_bf16_head": "off"}  # others: --fp8-lm-head
FUSED_MLP_FORCED = {"sigma_unfused_mlp": "off"}  # the others follow --fused-mlp
FLASH_ATTENTION_FORCED = {"sigma_sdpa": "off"}  # the others follow --flash-attention


def build(
    name: str,
    cfg: ModelConfig,
    device: torch.device,
    args: argparse.Namespace,
    start: dict[str, torch.Tensor] | None = None,
) -> Callable[[], torch.Tensor]:
    """A zero-argument training step for ``name`` (returns the loss tensor without syncing).

    The step's ``model`` and ``optimizer`` attributes are what it trains and with what. ``start``: a
    SigmaLM state dict to begin from instead of a fresh initialisation (SigmaLM contenders only).
    """
    compile_on = args.compile == "on"
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    batches = [torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq_len + 1), device=device)
               for _ in range(4)]
    accum = args.tokens_per_step // (args.micro_batch * args.seq_len)
    counter = [0]

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        b = batches[counter[0] % len(batches)]
        counter[0] += 1
        return b[:, :-1], b[:, 1:]

    if name in BASELINES:
        if name == "hf_qwen3":
            from transformers import Qwen3Config, Qwen3ForCausalLM

            hf_cfg = {k: v for k, v in config_to_hf(cfg).items() if k not in ("architectures", "model_type", "dtype")}
            model = Qwen3ForCausalLM(Qwen3Config(**hf_cfg, attn_implementation="sdpa")).to(device)

            def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return model(input_ids=x, labels=x).loss  # transformers shifts the labels itself
        else:
            model = PlainLM(cfg).to(device)

            def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return model(x, y)
        fused = device.type == "cuda"
        opt = torch.optim.AdamW(model.parameters(), lr=args.adamw_lr, betas=(0.9, 0.95), weight_decay=0.0,
                                fused=fused)
        fwd = torch.compile(loss_of) if compile_on else loss_of

        def step() -> torch.Tensor:
            total = torch.zeros((), device=device)
            for _ in range(accum):
                x, y = next_batch()
                with amp:
                    loss = fwd(x, y)
                (loss / accum).backward()
                total += loss.detach()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return total / accum

        step.model, step.optimizer = model, opt
        return step

    model = SigmaLM(cfg).to(device)
    param_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for p in model.parameters():
        p.data = p.data.to(param_dtype)
    if start is not None:
        model.load_state_dict(start)
    choices = {"sigma_flip": flipped_choices, "sigma_fp8": fp8_choices,
               "sigma_fp8_bf16_grad_w": fp8_choices}.get(name, kernel_choices)(args, device)
    fp8_head = kernels.fp8_lm_head_wanted(FP8_HEAD_FORCED.get(name, args.fp8_lm_head), model, choices)
    fused_mlp, note = kernels.fused_mlp_wanted(FUSED_MLP_FORCED.get(name, args.fused_mlp), model)
    if note:
        print(f"{name}: {note}", flush=True)
    flash_attention, note = kernels.flash_attention_wanted(FLASH_ATTENTION_FORCED.get(name, args.flash_attention),
                                                           model, seq_len=args.seq_len)
    if note:
        print(f"{name}: {note}", flush=True)
    kernels.apply_to_model(model, choices, fp8_lm_head=fp8_head, fused_mlp=fused_mlp,
                           flash_attention=flash_attention)
    if name == "sigma_fp8_bf16_grad_w":
        from model.kernels import linear_ce

        model.use_kernels(linear_ce=linear_ce.triton_impl_fp8)
    if name == "sigma_fp8_linears":
        n = fp8_block_linears(model, args.fp8_linears_recipe)
        print(f"sigma_fp8_linears: {n} block linears in FP8 (torchao, recipe {args.fp8_linears_recipe})", flush=True)
    if name != "sigma_adamw":
        pair = build_optimizers(
            model, lr=args.c3o_lr, muon_lr=args.muon_lr, weight_decay=0.0, betas=(0.9, 0.95),
            c3o_state_dtype=param_dtype, c3o_cautious=True, muon_momentum=0.95, ns_steps=5,
            ns_fn=kernels.ns_fn(choices), compile=compile_on,
        )
    else:
        fused = device.type == "cuda"
        pair = torch.optim.AdamW(model.parameters(), lr=args.adamw_lr, betas=(0.9, 0.95), weight_decay=0.0,
                                 fused=fused)
    fwd = torch.compile(model) if compile_on else model
    params = list(model.parameters())

    def step() -> torch.Tensor:
        total = torch.zeros((), device=device)
        for _ in range(accum):
            x, y = next_batch()
            loss = fwd(x, y)
            (loss / accum).backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        ok = torch.isfinite(total) & torch.isfinite(grad_norm)
        if name != "sigma_adamw":
            pair.step(ok)  # the trainer's device-side guard: no host sync
        else:
            pair.step()
        pair.zero_grad(set_to_none=True)
        return total / accum

    step.model, step.optimizer, step.fp8_lm_head, step.fused_mlp = model, pair, fp8_head, fused_mlp
    step.flash_attention = flash_attention
    return step


def fp8_block_linears(model: SigmaLM, recipe: str) -> int:
    """Swap every ``nn.Linear`` of ``model.layers`` for torchao's ``Float8Linear``; returns how many.

    The weights stay the same parameters (the optimizers built after see no difference); each forward
    casts the input and weight to FP8 with dynamic scales per ``recipe``, and the backward its gradients.
    The LM head is left to the fused linear + CE. Note: torchao patches Inductor's min/max codegen for
    the whole process when it converts (a Triton FP8 store workaround), so contenders compiled in the same
    run compile with that patch too.
    """
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    def fits(module: nn.Module, fqn: str) -> bool:  # FP8 matmuls want both dimensions multiples of 16
        return module.in_features % 16 == 0 and module.out_features % 16 == 0

    convert_to_float8_training(model.layers, module_filter_fn=fits, config=Float8LinearConfig.from_recipe_name(recipe))
    return sum(isinstance(m, Float8Linear) for m in model.layers.modules())


def kernel_choices(args: argparse.Namespace, device: torch.device) -> dict[str, str]:
    """``--kernels`` resolved as the trainer does, or exactly the ops named by ``--triton-ops``."""
    if args.triton_ops is None:
        return kernels.resolve(args.kernels, device, compile=args.compile == "on")
    return {op: "triton" if op in args.triton_ops else "torch" for op in kernels.KERNELS}


def flipped_choices(args: argparse.Namespace, device: torch.device) -> dict[str, str]:
    """``sigma_flip``'s kernels: :func:`kernel_choices` with the ops in ``--flip-ops`` reversed."""
    return {op: ("torch" if mode == "triton" else "triton") if op in args.flip_ops else mode
            for op, mode in kernel_choices(args, device).items()}


def fp8_choices(args: argparse.Namespace, device: torch.device) -> dict[str, str]:
    """``sigma_fp8``'s kernels: :func:`kernel_choices` with the fused linear + CE, which holds the FP8 head."""
    return {**kernel_choices(args, device), "linear_ce": "triton"}


def check_kernels_can_run(args: argparse.Namespace, device: torch.device) -> None:
    """Exit with the reason and the fix if a contender would run a Triton kernel where none can run.

    ``--triton-ops``, ``sigma_flip`` and the ``sigma_fp8`` pair choose Triton kernels without ``kernels.resolve``'s checks; on
    the CPU they need ``TRITON_INTERPRET=1`` and ``--compile off``.
    """
    try:
        sets = {"--kernels / --triton-ops": (kernel_choices(args, device), "choose other kernels")}
    except RuntimeError as e:  # kernels.resolve's own refusal, which names the fix
        raise SystemExit(str(e)) from None
    if "sigma_flip" in args.contenders:
        sets["sigma_flip"] = (flipped_choices(args, device), "leave sigma_flip out of --contenders")
    for name in ("sigma_fp8", "sigma_fp8_bf16_grad_w"):
        if name in args.contenders:
            sets[name] = (fp8_choices(args, device), f"leave {name} out of --contenders")
    if "sigma_fp8_linears" in args.contenders:  # the CPU runs it (slowly, tensorwise only), as a smoke check
        if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
            raise SystemExit("sigma_fp8_linears runs its block linears on FP8 tensor cores, which need compute "
                             "capability 8.9 or newer; fix: run on such a GPU or leave sigma_fp8_linears out of "
                             "--contenders")
        if device.type == "cpu" and args.fp8_linears_recipe != "tensorwise":
            raise SystemExit(f"sigma_fp8_linears with --fp8-linears-recipe {args.fp8_linears_recipe} needs a GPU: "
                             "torch's CPU _scaled_mm takes only one scale a tensor; fix: --fp8-linears-recipe "
                             "tensorwise on the CPU, or run on a GPU")
    usable, reason = kernels.triton_status(device)
    for who, (choices, other_fix) in sets.items():
        ops = sorted(op for op, mode in choices.items() if mode == "triton")
        if ops and not usable:
            raise SystemExit(f"{who} runs Triton kernels ({', '.join(ops)}), but {reason}; fix: run on a GPU, "
                             f"set TRITON_INTERPRET=1, or {other_fix}")
        if ops and device.type != "cuda" and args.compile == "on":
            raise SystemExit(f"{who} runs Triton kernels ({', '.join(ops)}) in the interpreter, which "
                             "torch.compile cannot trace; fix: --compile off")


def time_steps(step: Callable[[], torch.Tensor], n: int, device: torch.device) -> tuple[float, float]:
    """Seconds per step over ``n`` steps (CUDA events on the GPU) and the last loss."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            loss = step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n, float(loss)
    t0 = time.perf_counter()
    for _ in range(n):
        loss = step()
    return (time.perf_counter() - t0) / n, float(loss)


KERNEL_CATEGORIES = (  # first match wins; the profile summary's rows
    ("newton_schulz", ("_gram_kernel", "_gemm_axpy_kernel", "_gemm_axpy_apply_kernel")),
    ("attention", ("sdpa", "fmha", "flash", "attention", "cudnn")),  # before matmul: FlashAttention 4's are CuTe's
    ("matmul", ("nvjet", "gemm", "cutlass", "xmma", "cublas")),
    ("cross_entropy", ("cross_entropy", "_transpose_bytes")),  # the row kernel, and the FP8 grad_W's transposition
    ("memset", ("memset",)),
    ("memcpy", ("memcpy",)),
    ("inductor_triton", ("triton_",)),
    ("foreach / optimizer", ("multi_tensor", "foreach", "adam")),
)


def kernel_category(name: str) -> str:
    lowered = name.lower()
    for category, needles in KERNEL_CATEGORIES:
        if any(needle in lowered for needle in needles):
            return category
    return "other"


def profile(step: Callable[[], torch.Tensor], device: torch.device, out: Path, steps: int = 3) -> None:
    """Write the evidence behind the figures for ``steps`` steps (torch.profiler).

    ``out``: the top ops and kernels by device time. ``<out>_summary.txt`` (GPU only): every kernel
    grouped by :data:`KERNEL_CATEGORIES`, per step, with the device's idle time (the step's span less
    the union of kernel intervals) and the 40 costliest kernels by name, each with the host ops that
    launched it most often (innermost first), so a kernel ATen runs for some library call can be
    traced to that call.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90))
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type == DeviceType.CUDA and not e.is_user_annotation)  # kernels, not ranges
    if not spans:
        return
    by_category: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}
    for start, end, name in spans:
        category = kernel_category(name)
        by_category[category] = by_category.get(category, 0.0) + (end - start)
        entry = by_name.setdefault(name, [0.0, 0])
        entry[0] += end - start
        entry[1] += 1
    busy, gaps = busy_and_gaps(spans)
    span = spans[-1][1] - spans[0][0]
    lines = [f"{steps} steps; per step, ms of device time (kernels on all streams; us / 1000 / steps)",
             f"{'category':24} {'ms/step':>9} {'share':>7}"]
    total = sum(by_category.values())
    for category, us in sorted(by_category.items(), key=lambda kv: -kv[1]):
        lines.append(f"{category:24} {us / 1e3 / steps:9.2f} {us / total:7.1%}")
    lines += [f"{'sum of kernels':24} {total / 1e3 / steps:9.2f}",
              f"{'span first..last kernel':24} {span / 1e3 / steps:9.2f}",
              f"{'idle (span - busy)':24} {(span - busy) / 1e3 / steps:9.2f}", "",
              f"{'ms/step':>9} {'calls/step':>10} {'category':18} kernel"]
    launchers = kernel_launchers(prof.events())
    for name, (us, calls) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:40]:
        lines.append(f"{us / 1e3 / steps:9.3f} {calls / steps:10.1f} {kernel_category(name):18} {name[:110]}")
        if name in launchers:
            lines.append(f"{'':40} launched by: {launchers[name]}")
    lines += ["", *idle_lines(gaps, steps)]
    out.with_name(out.stem + "_summary.txt").write_text("\n".join(lines) + "\n")


def busy_and_gaps(spans: list[tuple[float, float, str]]) -> tuple[float, list[tuple[float, str, str]]]:
    """Kernel intervals ``(start, end, name)`` sorted by start -> the time some kernel ran (overlapping kernels,
    e.g. on other streams, count once) and every gap where none ran: (length, the kernel that ended last
    before it, the one that started it)."""
    busy, cursor, last = 0.0, spans[0][0], spans[0][2]
    gaps = []
    for start, end, name in spans:
        if start > cursor:
            gaps.append((start - cursor, last, name))
        if end > cursor:
            busy += end - max(start, cursor)
            cursor, last = end, name
    return busy, gaps


def idle_lines(gaps: list[tuple[float, str, str]], steps: int, top: int = 15) -> list[str]:
    """Where the device waited: the idle time by gap length, then the longest gaps between which kernels."""
    bounds = (5.0, 20.0, 100.0, 1000.0, math.inf)  # us
    lines = ["idle gaps by length, per step", f"{'up to us':>9} {'gaps/step':>10} {'ms/step':>8}"]
    low = 0.0
    for high in bounds:
        inside = [g for g, _, _ in gaps if low < g <= high]
        lines.append(f"{high:9.0f} {len(inside) / steps:10.1f} {sum(inside) / 1e3 / steps:8.3f}")
        low = high
    lines += ["", f"the {top} longest gaps (us, the kernel before -> the kernel after)"]
    for gap, before, after in sorted(gaps, reverse=True)[:top]:
        lines.append(f"{gap:9.1f}  {before[:70]} -> {after[:70]}")
    return lines


def kernel_launchers(events: list) -> dict[str, str]:
    """Kernel name -> the chain of host ops (innermost first, up to 4) that launched it most often."""
    chains: dict[str, dict[str, int]] = {}
    for event in events:
        if not getattr(event, "kernels", None):
            continue
        names, parent = [], event
        while parent is not None and len(names) < 4:
            if not names or names[-1] != parent.name:
                names.append(parent.name)
            parent = parent.cpu_parent
        chain = " < ".join(n[:60] for n in names)
        for kernel in event.kernels:
            counts = chains.setdefault(kernel.name, {})
            counts[chain] = counts.get(chain, 0) + 1
    return {name: max(counts, key=counts.get) for name, counts in chains.items()}


def median_or_none(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def parse_setting(item: str) -> tuple[str, int | float | bool | str]:
    """``"n_head=6"`` -> ``("n_head", 6)``: ints, floats and true/false are converted, the rest stays text."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"expected FIELD=VALUE, got {item!r}")
    if text.lower() in ("true", "false"):
        return key, text.lower() == "true"
    for kind in (int, float):
        try:
            return key, kind(text)
        except ValueError:
            pass
    return key, text


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    return 6.0 * cfg.num_matmul_params() + 12.0 * cfg.n_layer * cfg.d_model * seq_len


def prepare_contender(
    name: str,
    cfg: ModelConfig,
    device: torch.device,
    args: argparse.Namespace,
    start: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Build ``name``'s step (from ``start``'s weights if given) and run its warm-up; its own peak
    memory is measured here, above what the contenders built before it hold."""
    held = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    step = build(name, cfg, device, args, start)
    t0 = time.perf_counter()
    time_steps(step, args.warmup, device)  # compile + autotune + allocator warm-up
    return {
        "step": step, "warmup_s": time.perf_counter() - t0,
        "peak_mem_gb": (torch.cuda.max_memory_allocated() - held) / 2**30 if device.type == "cuda" else None,
    }


def run_preset(cfg: ModelConfig, device: torch.device, args: argparse.Namespace, peak: float | None) -> list[dict]:
    """One result row per contender: all built first, then timed in interleaved windows."""
    prepared, start, start_from = {}, None, {}
    for name in args.contenders:
        prepared[name] = prepare_contender(name, cfg, device, args, start if name in SIGMA_FAMILY else None)
        if name in SIGMA_FAMILY and args.shared_weights:
            if start is None:  # the first SigmaLM contender: the others start where its warm-up left it
                start_name = name
                start = {k: v.detach().clone() for k, v in prepared[name]["step"].model.state_dict().items()}
            else:
                start_from[name] = start_name
    start = None
    windows: dict[str, list[float]] = {name: [] for name in args.contenders}
    # NVML's SM clock and board power every 50 ms, averaged per timed window (nothing on the CPU).
    resources = ResourceSampler(device, interval_s=0.05)
    readings: dict[str, list[dict]] = {name: [] for name in args.contenders}
    losses = dict.fromkeys(args.contenders, math.nan)
    for _ in range(args.repeats):
        for name in args.contenders:
            resources.read()  # drop what was sampled between windows
            seconds, losses[name] = time_steps(prepared[name]["step"], args.steps, device)
            readings[name].append(resources.read())
            windows[name].append(seconds)
    resources.close()
    rows = []
    fpt = flops_per_token(cfg, args.seq_len)
    for name in args.contenders:
        if args.profile and name in args.profile_contenders:
            profile(prepared[name]["step"], device, Path(args.profile) / f"profile_{cfg.n_layer}L_{name}.txt")
        step_s = statistics.median(windows[name])
        tokens_per_s = args.tokens_per_step / step_s
        rows.append({
            "contender": name, "step_ms": step_s * 1e3, "step_ms_runs": [s * 1e3 for s in windows[name]],
            "tokens_per_s": tokens_per_s, "mfu": fpt * tokens_per_s / (peak * 1e12) if peak else None,
            "peak_mem_gb": prepared[name]["peak_mem_gb"], "warmup_s": prepared[name]["warmup_s"],
            "loss": losses[name], "start_weights": start_from.get(name, "init"),
            "fp8_lm_head": getattr(prepared[name]["step"], "fp8_lm_head", None),
            "fused_mlp": getattr(prepared[name]["step"], "fused_mlp", None),
            "flash_attention": getattr(prepared[name]["step"], "flash_attention", None),
            "sm_clock_mhz": median_or_none([r["gpu_sm_clock_mhz"] for r in readings[name]]),
            "power_w": median_or_none([r["gpu_power_w"] for r in readings[name]]),
        })
    prepared.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--micro-batch`` defaulted to one micro-batch per step."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["124m", "350m"])
    p.add_argument("--contenders", nargs="+", default=list(DEFAULT_CONTENDERS), choices=CONTENDERS)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--tokens-per-step", type=int, default=65536)
    p.add_argument("--micro-batch", type=int, default=None, help="rows per micro-batch (default: one micro-batch)")
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per contender (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, autotune)")
    p.add_argument("--kernels", choices=kernels.KERNEL_MODES, default="auto")
    p.add_argument("--triton-ops", nargs="*", default=None, choices=list(kernels.KERNELS),
                   help="use the Triton kernel for exactly these ops (overrides --kernels)")
    p.add_argument("--compile", choices=("on", "off"), default="on")
    p.add_argument("--fp8-lm-head", choices=kernels.FP8_LM_HEAD_MODES, default="auto",
                   help="the trainer's flag, for sigma, sigma_adamw and sigma_flip")
    p.add_argument("--fp8-linears-recipe", choices=FP8_LINEARS_RECIPES, default="tensorwise",
                   help="torchao's float8 training recipe for sigma_fp8_linears")
    p.add_argument("--fused-mlp", choices=kernels.FUSED_MLP_MODES, default="auto",
                   help="the trainer's flag, for the sigma contenders but sigma_unfused_mlp (always off)")
    p.add_argument("--flash-attention", choices=kernels.FLASH_ATTENTION_MODES, default="auto",
                   help="the trainer's flag, for the sigma contenders but sigma_sdpa (always off)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--profile", default=None, metavar="DIR", help="write a torch.profiler kernel table per contender")
    p.add_argument("--profile-contenders", nargs="+", default=["sigma"], choices=CONTENDERS)
    p.add_argument("--flip-ops", nargs="+", default=["linear_ce"], choices=list(kernels.KERNELS),
                   help="the ops whose kernel choice sigma_flip reverses")
    p.add_argument("--override", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="change ModelConfig fields of every preset for every contender, e.g. n_head=6 head_dim=128")
    p.add_argument("--inductor", nargs="+", default=[], metavar="KEY=VALUE",
                   help="set torch._inductor.config options for every contender, e.g. coordinate_descent_tuning=1")
    p.add_argument("--muon-lr", type=float, default=0.02, help="Muon's learning rate (sigma, sigma_flip)")
    p.add_argument("--c3o-lr", type=float, default=3e-3, help="C3O's learning rate (sigma, sigma_flip)")
    p.add_argument("--adamw-lr", type=float, default=3e-4, help="AdamW's (hf_qwen3, plain, sigma_adamw)")
    p.add_argument("--shared-weights", action="store_true",
                   help="SigmaLM contenders after the first start from its weights after its warm-up")
    args = p.parse_args(argv)
    args.micro_batch = args.micro_batch or args.tokens_per_step // args.seq_len
    if args.tokens_per_step % (args.micro_batch * args.seq_len):
        raise SystemExit("--tokens-per-step must be a multiple of --micro-batch x --seq-len")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    overrides = dict(parse_setting(item) for item in args.override)
    check_kernels_can_run(args, device)
    if args.inductor:
        import torch._inductor.config as inductor_config

        for key, value in map(parse_setting, args.inductor):
            setattr(inductor_config, key, value)

    peak = bf16_matmul_peak_tflops() if device.type == "cuda" else None  # bf16 8192^3, same card
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "peak_bf16_tflops": peak,
        "kernels": kernel_choices(args, device), "flip_ops": args.flip_ops, "argv": sys.argv[1:],
        "fp8_linears_recipe": args.fp8_linears_recipe if "sigma_fp8_linears" in args.contenders else None,
    }
    try:
        import transformers
        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    print(json.dumps(meta), flush=True)
    results = []
    for preset in args.presets:
        cfg = from_preset(preset, vocab_size=args.vocab_size, max_seq_len=args.seq_len)
        cfg = dataclasses.replace(cfg, **overrides).validate()
        rows = [{"preset": preset, **row} for row in run_preset(cfg, device, args, peak)]
        for row in rows:
            print(json.dumps(row), flush=True)
        best = max((r["tokens_per_s"] for r in rows if r["contender"] in BASELINES), default=None)
        for r in rows:
            r["vs_best_baseline"] = r["tokens_per_s"] / best if best else None
        results.extend(rows)
        if args.json:  # after each preset: a run cut short still leaves what it measured
            Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    if device.type == "cuda":  # the same measurement after the work: how far the card's peak moved meanwhile
        meta["peak_bf16_tflops_end"] = bf16_matmul_peak_tflops()

    print(f"\n{meta['device']}, torch {meta['torch']}, peak bf16 {peak or float('nan'):.0f} TFLOP/s "
          f"(after the runs: {meta.get('peak_bf16_tflops_end') or float('nan'):.0f}; MFU uses the first), "
          f"seq {args.seq_len}, {args.tokens_per_step} tokens/step, micro-batch {args.micro_batch}")
    print(f"{'preset':7} {'contender':17} {'tokens/s':>11} {'MFU':>6} {'step ms':>8} {'peak GB':>8} {'x best base':>11}"
          f" {'SM MHz':>7} {'power W':>7}")
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "-"
        ratio = f"{r['vs_best_baseline']:.3f}" if r["vs_best_baseline"] else "-"
        clock = f"{r['sm_clock_mhz']:.0f}" if r["sm_clock_mhz"] is not None else "-"
        power = f"{r['power_w']:.0f}" if r["power_w"] is not None else "-"
        print(f"{r['preset']:7} {r['contender']:17} {r['tokens_per_s']:11,.0f} {mfu:>6} {r['step_ms']:8.1f} "
              f"{mem:>8} {ratio:>11} {clock:>7} {power:>7}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
