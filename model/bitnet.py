"""BitNet 1.58: quantisation-aware linears with ternary weights and 8-bit activations.

Forward (Ma et al. 2024, "The Era of 1-bit LLMs"):
    weights      W_q = clamp(round(W / s_w), -1, 1) * s_w,   s_w = mean(|W|)  (one scale per matrix)
    activations  x_q = clamp(round(x * s_x), -128, 127) / s_x, s_x = 127 / max(|x|) per token (row)
                 (computed as ``* max(|x|) / 127``: a multiply per element is cheaper than a division)
    y = x_q @ W_q^T
Backward: straight-through, d/dW and d/dx as if no quantisation happened, so the master weights keep
learning. Embedding, LM head and norms stay full precision (``model/decoder.py`` builds a BitLinear
only for the linears inside the blocks).

Numerics, shared with the fused Triton quantiser in ``model/kernels/bitnet.py`` so that the two agree
bit for bit: both quantisers compute in fp32 whatever the input dtype (bf16 rounding of ``W / s_w``
would move values across the 0.5 decision boundary) and return the input's dtype; ``round`` is
round-half-to-even; divisions are IEEE-rounded. The weight absmean is accumulated in fp64 and then
rounded to fp32: an fp32 sum depends on the summation order (torch's and the kernel's differ), while
two fp64 sums of N fp32 magnitudes differ by at most N * 2**-53 relative (3e-10 for the 2.9M entries of
a 350m MLP matrix, ~1e-13 typically), so both round to the same fp32 scale unless they straddle an
fp32 rounding boundary: probability ~1e-5 per matrix, and then the scales are one ulp apart.
"""

import torch
import torch.nn.functional as F
from torch import nn

QUANT_EPS = 1e-5  # floor of both scales' denominators: an all-zero row or matrix stays zero


def absmean_scale(w: torch.Tensor) -> torch.Tensor:
    """fp32 scalar ``max(mean|w|, QUANT_EPS)``, the sum accumulated in fp64 (see module docstring)."""
    return (w.float().abs().sum(dtype=torch.float64) / w.numel()).float().clamp(min=QUANT_EPS)


def ternary_weight(w: torch.Tensor) -> torch.Tensor:
    """Absmean ternary quantisation, dequantised, in ``w``'s dtype: values in ``{-s, 0, s}``."""
    scale = absmean_scale(w)
    return ((w.float() / scale).round().clamp(-1, 1) * scale).to(w.dtype)


def int8_activation(x: torch.Tensor) -> torch.Tensor:
    """Per-token (last dim) absmax 8-bit quantisation, dequantised, in ``x``'s dtype."""
    x_f32 = x.float()
    amax = x_f32.abs().amax(dim=-1, keepdim=True).clamp(min=QUANT_EPS)
    # Each operation below is one IEEE-rounded fp32 op that the Triton kernel repeats exactly. Spelled
    # out because ``127.0 / amax`` and ``amax / 127.0`` run as reciprocal-and-multiply on some devices
    # and as a true division on others. ``step`` (the dequantisation) is not exactly ``1 / scale``;
    # the two differ in the last bit at most.
    scale = amax.reciprocal() * 127.0
    step = amax * (1.0 / 127.0)
    return ((x_f32 * scale).round().clamp(-128, 127) * step).to(x.dtype)


def straight_through(x: torch.Tensor, x_quantized: torch.Tensor) -> torch.Tensor:
    """``x_quantized``'s values with ``x``'s gradient (identity backward).

    Written as ``(x - x.detach()) + q`` rather than the usual ``x + (q - x).detach()``: the first term
    is exactly zero, so the forward value is exactly ``q`` (up to the sign of a zero), whereas
    ``x + (q - x)`` rounds twice and in bf16 misses ``q`` by an ulp wherever ``q`` and ``x`` are far
    apart (small entries quantised to zero).
    """
    return (x - x.detach()) + x_quantized.detach()


def bitnet_quant_reference(
    x: torch.Tensor, w: torch.Tensor, prequantized: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantised ``(x, w)`` for the forward with straight-through gradients for the backward.

    ``prequantized`` skips the weight quantiser (an exported model whose weights are already
    ternary-valued; re-quantising would change the scale).
    """
    x_q = straight_through(x, int8_activation(x.detach()))
    w_q = w if prequantized else straight_through(w, ternary_weight(w.detach()))
    return x_q, w_q


class BitLinear(nn.Linear):
    """A bias-free ``nn.Linear`` whose forward runs BitNet 1.58 quantisation (see module docstring).

    Subclassing ``nn.Linear`` keeps optimizer roles (Muon "matrix"), state-dict names and PEFT
    targeting unchanged. ``quant`` is the kernel; ``prequantized`` marks ternary-valued weights.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.quant = bitnet_quant_reference
        self.prequantized = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q, w_q = self.quant(x, self.weight, self.prequantized)
        return F.linear(x_q, w_q)

    @torch.no_grad()
    def export_weight(self) -> torch.Tensor:
        """The weight the forward multiplies by: ternary-valued (``{-s, 0, s}``)."""
        return self.weight if self.prequantized else ternary_weight(self.weight)

    @torch.no_grad()
    def make_trainable_(self) -> "BitLinear":
        """Turn prequantized (exported, ternary-valued) weights back into latent weights, in place.

        Training a prequantized layer would update weights that the forward no longer quantises, and
        simply clearing ``prequantized`` re-quantises ``{-s, 0, s}`` to ``{-s * p, 0, s * p}`` (``p``
        the fraction of nonzeros, since the absmean of ternary values is ``s * p``). Dividing by ``p``
        first makes the absmean ``s`` again, so the quantised forward is unchanged up to the last bit
        of the scale (which can flip a rare int8 activation tie downstream: logits move ~1e-4
        relative) and training continues from the exported model. Returns ``self``.
        """
        if self.prequantized:
            nonzero = (self.weight != 0).float().mean()  # a host sync: this runs once, at load time
            if nonzero > 0:  # an all-zero matrix stays zero either way
                self.weight.copy_(self.weight.float() / nonzero)
            self.prequantized = False
        return self
