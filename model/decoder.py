"""SigmaLM: a Qwen3-compatible decoder-only transformer, as plain single-device PyTorch.

Architecture (identical maths to Hugging Face ``Qwen3ForCausalLM``, so ``model/hf_compat.py`` can
export/import weights by renaming only):
    token embedding
    N x [ x + o_proj(SDPA(RoPE(q_norm(q)), RoPE(k_norm(k)), v))   with RMSNorm before attention
          x + down_proj(silu(gate_proj(x)) * up_proj(x))           with RMSNorm before the MLP ]
    final RMSNorm -> LM head (optionally tied to the embedding). No biases anywhere.

Module names follow Hugging Face's (``embed_tokens``, ``layers.{i}.self_attn.q_proj``, ...) so that
exports are a prefix rename and PEFT ``target_modules`` such as ``q_proj`` work unchanged.

This file is pure maths: no device selection, no torch.compile, no kernels. Those are applied from
outside. The forward has no data-dependent Python control flow, so it compiles to one graph.

Shape suffix legend:
    B  batch size
    T  sequence length (current chunk)
    S  max_seq_len (RoPE table rows)
    D  d_model (residual width)
    F  d_ff (MLP hidden width)
    H  number of query heads
    K  number of key/value heads
    Hd head_dim
    V  vocab_size
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.bitnet import BitLinear
from model.config import ModelConfig

IGNORE_INDEX = -100  # target id excluded from the loss (padding, prompt tokens)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in fp32, cast back before the weight multiply (as HF's Qwen3RMSNorm).

    The signature every RMSNorm kernel shares (``model/kernels`` swaps in a Triton one).
    """
    x_f32 = x.float()
    x_f32 = x_f32 * torch.rsqrt(x_f32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x_f32.to(x.dtype)


def linear_cross_entropy_reference(
    h_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor
) -> torch.Tensor:
    """Mean fp32 cross-entropy of ``h @ weight.T`` against ``targets`` (``IGNORE_INDEX`` skipped).

    Materialises the full ``(N, V)`` fp32 logits; a fused kernel with this signature never does.
    """
    logits_NV = F.linear(h_ND, weight_VD).float()
    return F.cross_entropy(logits_NV, targets_N, ignore_index=IGNORE_INDEX)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, normalising in fp32 like Hugging Face's Qwen3RMSNorm.

    The cast back to the input dtype happens *before* the weight multiply, as in HF, so bf16 outputs
    match a stock transformers model bit for bit in the common case. ``fn`` is the kernel
    (:func:`rms_norm_reference` unless :meth:`SigmaLM.use_kernels` swapped it).
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.fn = rms_norm_reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.weight, self.eps)


def rope_tables(
    head_dim: int, max_seq_len: int, theta: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(cos_SHd, sin_SHd)`` tables, Hugging Face layout (frequencies repeated, not interleaved)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim)
    )
    pos_S = torch.arange(max_seq_len, dtype=torch.int64, device=device).float()
    freqs_SHd2 = torch.outer(pos_S, inv_freq)
    emb_SHd = torch.cat((freqs_SHd2, freqs_SHd2), dim=-1)
    return emb_SHd.cos(), emb_SHd.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the last dim: the HF/GPT-NeoX RoPE convention."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x_BTNHd: torch.Tensor, cos_THd: torch.Tensor, sin_THd: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys laid out as (B, T, heads, Hd). cos/sin are cast to x's dtype, as in HF."""
    cos = cos_THd.to(x_BTNHd.dtype)[None, :, None, :]
    sin = sin_THd.to(x_BTNHd.dtype)[None, :, None, :]
    return x_BTNHd * cos + rotate_half(x_BTNHd) * sin


def qk_norm_rope_reference(
    x_BTNHd: torch.Tensor, weight_Hd: torch.Tensor, cos_THd: torch.Tensor, sin_THd: torch.Tensor, eps: float
) -> torch.Tensor:
    """Qwen3's per-head QK RMSNorm, then RoPE: the signature every fused QK-norm + RoPE kernel shares."""
    return apply_rope(rms_norm_reference(x_BTNHd, weight_Hd, eps), cos_THd, sin_THd)


class Rotary(nn.Module):
    """Holds the RoPE tables as non-persistent fp32 buffers (never saved, rebuilt on load).

    ``module.to(torch.bfloat16)`` would round the tables to bf16, whose 8-bit mantissa garbles the
    angles at large positions; :meth:`_apply` therefore rebuilds them in fp32 after any conversion
    (each use casts them to the activations' dtype, exactly as Hugging Face does).
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        cos_SHd, sin_SHd = rope_tables(head_dim, max_seq_len, theta)
        self.register_buffer("cos_SHd", cos_SHd, persistent=False)
        self.register_buffer("sin_SHd", sin_SHd, persistent=False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "Rotary":
        # Rebuild after every conversion/move: it costs S*Hd flops and also covers to_empty() from
        # the meta device, which would otherwise leave uninitialised tables.
        super()._apply(fn, recurse)
        device = self.cos_SHd.device
        self.cos_SHd, self.sin_SHd = rope_tables(self.head_dim, self.max_seq_len, self.theta, device)
        return self

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos_SHd[:seq_len], self.sin_SHd[:seq_len]


def block_linear(cfg: ModelConfig, d_in: int, d_out: int) -> nn.Linear:
    """A bias-free linear inside a block: plain, or quantisation-aware under BitNet 1.58."""
    return BitLinear(d_in, d_out) if cfg.bitnet else nn.Linear(d_in, d_out, bias=False)


class Attention(nn.Module):
    """Grouped-query causal self-attention with Qwen3's per-head QK RMSNorm (applied before RoPE).

    ``cfg.qk_norm=False`` drops the QK norm (the Llama layout, for imported models).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_proj = block_linear(cfg, cfg.d_model, cfg.n_head * cfg.head_dim)
        self.k_proj = block_linear(cfg, cfg.d_model, cfg.n_kv_head * cfg.head_dim)
        self.v_proj = block_linear(cfg, cfg.d_model, cfg.n_kv_head * cfg.head_dim)
        self.o_proj = block_linear(cfg, cfg.n_head * cfg.head_dim, cfg.d_model)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_eps) if cfg.qk_norm else nn.Identity()
        self.qk_norm_rope: Callable | None = None  # fused QK norm + RoPE kernel (SigmaLM.use_kernels)
        self.attend: Callable | None = None  # causal attention kernel (SigmaLM.use_kernels); None: SDPA

    def forward(self, x_BTD: torch.Tensor, cos_THd: torch.Tensor, sin_THd: torch.Tensor) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        q_BTHHd = self.q_proj(x_BTD).view(B, T, self.n_head, self.head_dim)
        k_BTKHd = self.k_proj(x_BTD).view(B, T, self.n_kv_head, self.head_dim)
        v_BTKHd = self.v_proj(x_BTD).view(B, T, self.n_kv_head, self.head_dim)
        q_BTHHd = self._norm_rope(self.q_norm, q_BTHHd, cos_THd, sin_THd)
        k_BTKHd = self._norm_rope(self.k_norm, k_BTKHd, cos_THd, sin_THd)
        y_BTHHd = (self.attend or causal_attention_reference)(q_BTHHd, k_BTKHd, v_BTKHd)
        return self.o_proj(y_BTHHd.reshape(B, T, self.n_head * self.head_dim))

    def _norm_rope(self, norm: nn.Module, x_BTNHd: torch.Tensor, cos_THd: torch.Tensor,
                   sin_THd: torch.Tensor) -> torch.Tensor:
        """RoPE(norm(x)): one fused kernel when one is installed and there is a QK norm."""
        if self.qk_norm_rope is not None and isinstance(norm, RMSNorm):
            return self.qk_norm_rope(x_BTNHd, norm.weight, cos_THd, sin_THd, norm.eps)
        return apply_rope(norm(x_BTNHd), cos_THd, sin_THd)


def causal_attention_reference(q_BTHHd: torch.Tensor, k_BTKHd: torch.Tensor, v_BTKHd: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention, scale 1/sqrt(Hd), K/V heads shared by n_head / n_kv_head query heads each.

    (B, T, heads, Hd) in and out, the layout the projections write; SDPA takes (B, heads, T, Hd), reached by
    transposes (views). ``enable_gqa`` lets the kernel broadcast K/V heads instead of materialising repeat_kv
    copies; it is fixed by the shapes, so compile sees one graph.
    """
    y_BHTHd = F.scaled_dot_product_attention(
        q_BTHHd.transpose(1, 2),
        k_BTKHd.transpose(1, 2),
        v_BTKHd.transpose(1, 2),
        is_causal=True,
        enable_gqa=q_BTHHd.size(2) != k_BTKHd.size(2),
    )
    return y_BHTHd.transpose(1, 2)


def swiglu_mlp_reference(x_BTD: torch.Tensor, w_gate_FD: torch.Tensor, w_up_FD: torch.Tensor,
                         w_down_DF: torch.Tensor) -> torch.Tensor:
    """``down(silu(gate(x)) * up(x))`` from the three weights: the signature every fused MLP shares."""
    return F.linear(F.silu(F.linear(x_BTD, w_gate_FD)) * F.linear(x_BTD, w_up_FD), w_down_DF)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = block_linear(cfg, cfg.d_model, cfg.d_ff)
        self.up_proj = block_linear(cfg, cfg.d_model, cfg.d_ff)
        self.down_proj = block_linear(cfg, cfg.d_ff, cfg.d_model)
        self.fused: Callable | None = None  # the whole MLP in fused GEMMs (SigmaLM.use_kernels)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.fused(x_BTD, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
        return self.down_proj(F.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD))


class Block(nn.Module):
    """Pre-norm transformer block (names match HF's Qwen3DecoderLayer)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x_BTD: torch.Tensor, cos_THd: torch.Tensor, sin_THd: torch.Tensor) -> torch.Tensor:
        x_BTD = x_BTD + self.self_attn(self.input_layernorm(x_BTD), cos_THd, sin_THd)
        return x_BTD + self.mlp(self.post_attention_layernorm(x_BTD))


class SigmaLM(nn.Module):
    """The SIGMA decoder. See the module docstring for the architecture."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # One Parameter object under two names; named_parameters() reports it once, as embed_tokens.
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.linear_ce = linear_cross_entropy_reference
        self.init_weights()

    def use_kernels(
        self,
        *,
        rms_norm: Callable | None = None,
        linear_ce: Callable | None = None,
        bitnet_quant: Callable | None = None,
        qk_norm_rope: Callable | None = None,
        swiglu_mlp: Callable | None = None,
        attention: Callable | None = None,
    ) -> "SigmaLM":
        """Swap in kernels with the reference signatures (None keeps the current one). Returns self.

        ``rms_norm`` like :func:`rms_norm_reference`, ``linear_ce`` like
        :func:`linear_cross_entropy_reference`, ``bitnet_quant`` like
        :func:`model.bitnet.bitnet_quant_reference`, ``qk_norm_rope`` like
        :func:`qk_norm_rope_reference` (it then takes the QK norms' place, ``rms_norm`` the block
        norms'). ``swiglu_mlp`` like :func:`swiglu_mlp_reference` runs each block's whole MLP from its
        three weights; BitNet's quantising linears are refused (their forward is not a plain matmul).
        ``attention`` like :func:`causal_attention_reference`. Weights and state dict are untouched.
        """
        if swiglu_mlp is not None and self.cfg.bitnet:
            raise ValueError("a fused SwiGLU MLP replaces plain matmuls; BitNet's block linears quantise theirs")
        for module in self.modules():
            if rms_norm is not None and isinstance(module, RMSNorm):
                module.fn = rms_norm
            if qk_norm_rope is not None and isinstance(module, Attention):
                module.qk_norm_rope = qk_norm_rope
            if attention is not None and isinstance(module, Attention):
                module.attend = attention
            if bitnet_quant is not None and isinstance(module, BitLinear):
                module.quant = bitnet_quant
            if swiglu_mlp is not None and isinstance(module, MLP):
                module.fused = swiglu_mlp
        if linear_ce is not None:
            self.linear_ce = linear_ce
        return self

    # ------------------------------------------------------------------ initialisation

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Re-initialise every parameter deterministically.

        Embedding, head and block matrices ~ N(0, init_std); the residual-branch outputs (o_proj,
        down_proj) are scaled by 1/sqrt(2 * n_layer) so the residual stream's variance does not grow
        with depth (GPT-2). Norm weights = 1. Values are drawn on the CPU in fp32 from a generator
        seeded with ``seed`` (the global torch RNG when None), in ``named_parameters`` order, so the
        result is identical on every device and dtype. Parameters on the meta device are skipped.
        """
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        out_scale = 1.0 / math.sqrt(2 * self.cfg.n_layer)
        roles = self.param_roles()
        for name, param in self.named_parameters():
            if param.is_meta:
                continue
            if roles[name] == "norm":
                param.fill_(1.0)
                continue
            std = self.cfg.init_std
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                std *= out_scale
            values = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
            param.copy_(values)

    # ------------------------------------------------------------------ optimizer support

    def param_roles(self) -> dict[str, str]:
        """Map every parameter name (as in ``named_parameters()``) to its role.

        Roles: ``"matrix"`` (2-D weight of a Linear inside a block -> Muon), ``"embedding"``,
        ``"head"`` and ``"norm"``. Assigned by module type and position, never by shape. A tied
        head is the embedding's Parameter and appears once, as ``embed_tokens.weight`` /
        ``"embedding"``. Any parameter no rule covers raises ``ValueError`` naming it, so a new
        module cannot slip silently into the wrong optimizer group.
        """
        role_by_id: dict[int, str] = {}

        def claim(param: nn.Parameter, role: str) -> None:
            role_by_id.setdefault(id(param), role)  # the first owner wins: embedding before tied head

        claim(self.embed_tokens.weight, "embedding")
        for block in self.layers:
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    claim(module.weight, "matrix")
                elif isinstance(module, RMSNorm):
                    claim(module.weight, "norm")
        claim(self.norm.weight, "norm")
        claim(self.lm_head.weight, "head")

        roles: dict[str, str] = {}
        for name, param in self.named_parameters():
            if id(param) not in role_by_id:
                raise ValueError(
                    f"parameter {name!r} has no optimizer role; add a rule in SigmaLM.param_roles"
                )
            roles[name] = role_by_id[id(param)]
        return roles

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B style.

        ``6 * N`` for the matmul parameters (block matrices + LM head; the embedding gather is free)
        plus ``12 * L * H * Hd * T`` for the attention score/value matmuls at context length T
        (counted for the full square, as is customary, although causal kernels skip half).
        """
        cfg = self.cfg
        return 6.0 * cfg.num_matmul_params() + 12.0 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len

    # ------------------------------------------------------------------ forward / generate

    def forward(self, idx_BT: torch.Tensor, targets_BT: torch.Tensor | None = None) -> torch.Tensor:
        """Return fp32 logits ``(B, T, V)``, or the mean cross-entropy loss when targets are given.

        The loss is computed in fp32 and ignores targets equal to -100. Sequences longer than
        ``max_seq_len`` are an error (the RoPE tables end there).
        """
        B, T = idx_BT.shape
        if self.cfg.max_seq_len < T:  # a shape check: compile turns it into a guard, not a graph break
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg.max_seq_len}")
        cos_THd, sin_THd = self.rotary(T)
        x_BTD = self.embed_tokens(idx_BT)
        for block in self.layers:
            x_BTD = block(x_BTD, cos_THd, sin_THd)
        h_BTD = self.norm(x_BTD)
        if targets_BT is None:
            # fp32 logits: bf16 log-softmax over a large vocabulary loses visible precision.
            return self.lm_head(h_BTD).float()
        return self.linear_ce(h_BTD.reshape(B * T, -1), self.lm_head.weight, targets_BT.reshape(B * T))

    @torch.no_grad()
    def generate(
        self,
        idx_BT: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``idx_BT``; returns ``(B, T + max_new_tokens)``.

        No KV cache: each step re-runs the last ``max_seq_len`` tokens (fine for samples and tests,
        O(T^2) per token). ``temperature == 0`` is greedy decoding. Pass a seeded ``generator`` (on
        the model's device) for reproducible samples.
        """
        for _ in range(max_new_tokens):
            context_BT = idx_BT[:, -self.cfg.max_seq_len :]
            logits_BV = self(context_BT)[:, -1, :]
            if temperature == 0:
                next_B1 = logits_BV.argmax(dim=-1, keepdim=True)
            else:
                logits_BV = logits_BV / temperature
                if top_k is not None:
                    kth_B1 = torch.topk(logits_BV, min(top_k, logits_BV.size(-1)), dim=-1).values[:, -1:]
                    logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
                probs_BV = torch.softmax(logits_BV, dim=-1)
                next_B1 = torch.multinomial(probs_BV, num_samples=1, generator=generator)
            idx_BT = torch.cat((idx_BT, next_B1.to(idx_BT.dtype)), dim=1)
        return idx_BT
