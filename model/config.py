"""Model configuration: one small dataclass, named size presets and parameter counting.

The architecture is Qwen3-compatible (see ``model/decoder.py``), so every field here has a one-to-one
counterpart in a Hugging Face ``Qwen3Config`` (``model/hf_compat.py`` does the translation).
"""

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class ModelConfig:
    """Shape and numerics of the SIGMA decoder."""

    vocab_size: int
    """Number of token ids (rows of the embedding). Pad it to a multiple of 64/128 for fast matmuls."""
    n_layer: int
    """Number of transformer blocks."""
    n_head: int
    """Number of query heads."""
    n_kv_head: int
    """Number of key/value heads (grouped-query attention); must divide ``n_head``."""
    d_model: int
    """Width of the residual stream (Hugging Face ``hidden_size``)."""
    d_ff: int
    """Hidden width of the SwiGLU MLP (Hugging Face ``intermediate_size``)."""
    head_dim: int
    """Width of one attention head; Qwen3 decouples it from ``d_model // n_head``. Must be even (RoPE)."""
    max_seq_len: int
    """Longest context the model is built for; sizes the RoPE tables."""
    rope_theta: float = 10000.0
    """RoPE base frequency. 1e4 is the classic value; raise it (e.g. 1e6) for long contexts."""
    rms_eps: float = 1e-6
    """Epsilon of every RMSNorm."""
    tie_embeddings: bool = True
    """Share the LM head weight with the token embedding (saves ``vocab_size * d_model`` parameters)."""
    init_std: float = 0.02
    """Standard deviation of the normal init of embeddings and matrices."""
    qk_norm: bool = True
    """Per-head RMSNorm on queries and keys before RoPE (Qwen3). False gives the Llama layout."""
    bitnet: bool = False
    """BitNet 1.58: block linears train quantisation-aware (ternary weights, 8-bit activations)."""

    def validate(self) -> "ModelConfig":
        """Check the fields are consistent; raise ``ValueError`` naming the field and the fix.

        Returns ``self`` so it can be chained: ``cfg = ModelConfig(...).validate()``.
        """
        positive_ints = (
            "vocab_size",
            "n_layer",
            "n_head",
            "n_kv_head",
            "d_model",
            "d_ff",
            "head_dim",
            "max_seq_len",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"ModelConfig.n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head}) "
                "for grouped-query attention: choose n_kv_head among the divisors of n_head"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"ModelConfig.head_dim must be even for rotary embeddings, got {self.head_dim}")
        for name in ("rope_theta", "rms_eps", "init_std"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"ModelConfig.{name} must be > 0, got {value!r}")
        for name in ("tie_embeddings", "qk_norm", "bitnet"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")
        return self

    # ------------------------------------------------------------------ parameter counting

    def block_matrix_params(self) -> int:
        """Elements of the 2-D weights inside all blocks (q/k/v/o and gate/up/down): Muon's share."""
        attn = self.d_model * self.head_dim * (2 * self.n_head + 2 * self.n_kv_head)
        mlp = 3 * self.d_model * self.d_ff
        return self.n_layer * (attn + mlp)

    def num_params(self, *, include_embedding: bool = True) -> int:
        """Number of distinct trainable parameters of the model built from this config.

        A tied LM head is counted once (inside the embedding). With ``include_embedding=False`` the
        token embedding is left out (the LM head of an untied model still counts).
        """
        qk_norms = 2 * self.head_dim if self.qk_norm else 0
        norms = self.n_layer * (2 * self.d_model + qk_norms) + self.d_model
        embedding = self.vocab_size * self.d_model
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        total = self.block_matrix_params() + norms + head
        return total + embedding if include_embedding else total

    def num_matmul_params(self) -> int:
        """Parameters that take part in a matmul per token: block matrices plus the LM head.

        The embedding lookup is a gather (no FLOPs) but the head is a ``d_model x vocab`` matmul even
        when its weight is tied, so it is counted here either way. Used for FLOPs/MFU.
        """
        return self.block_matrix_params() + self.vocab_size * self.d_model

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (stored in checkpoints and the run's config.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (they usually mean a version mismatch)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**data).validate()


# Size presets. Numbers without vocab_size/max_seq_len, which come from the tokenizer and the run.
# Approximate sizes with vocab 50304 and tied embeddings: 124m ~124M, 350m ~335M, 1b ~825M (0.93B untied).
PRESETS: dict[str, dict[str, Any]] = {
    # CPU smoke tests: ~1.3M parameters with a 4096-token vocabulary.
    "tiny": dict(n_layer=4, n_head=4, n_kv_head=2, d_model=128, d_ff=384, head_dim=32),
    # GPT-2 small scale; full multi-head attention keeps the count at GPT-2's ~124M. The larger presets
    # use Qwen3's head width of 128 (fewer, wider heads; same attention width and parameter count as
    # 64-wide heads): on the H100 the fused attention kernels run it 1.26x faster per layer at these
    # shapes, forward + backward (PERFORMANCE.md, scripts/bench_attention.py --head-dims 64 128).
    "124m": dict(n_layer=12, n_head=6, n_kv_head=6, d_model=768, d_ff=2048, head_dim=128),
    "350m": dict(n_layer=24, n_head=8, n_kv_head=4, d_model=1024, d_ff=2816, head_dim=128),
    "1b": dict(n_layer=16, n_head=16, n_kv_head=4, d_model=2048, d_ff=5632, head_dim=128),
}


def from_preset(
    name: str, *, vocab_size: int, max_seq_len: int, tie_embeddings: bool | None = None
) -> ModelConfig:
    """Build a validated :class:`ModelConfig` from a named preset in :data:`PRESETS`.

    ``tie_embeddings=None`` keeps the dataclass default (tied).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    fields: dict[str, Any] = dict(PRESETS[name], vocab_size=vocab_size, max_seq_len=max_seq_len)
    if tie_embeddings is not None:
        fields["tie_embeddings"] = tie_embeddings
    return ModelConfig(**fields).validate()


def num_params(cfg: ModelConfig) -> int:
    """Total distinct trainable parameters of a model built from ``cfg`` (tied head counted once)."""
    return cfg.num_params()
