"""BitNet 1.58: quantisation-aware linears with ternary weights and 8-bit activations.

Forward (Ma et al. 2024, "The Era of 1-bit LLMs"):
    weights      W_q = clamp(round(W / s_w), -1, 1) * s_w,   s_w = mean(|W|)  (one scale per matrix)
    activations  x_q = clamp(round(x * s_x), -128, 127) / s_x, s_x = 127 / max(|x|) per token (row)
    y = x_q @ W_q^T
Backward: straight-through, d/dW and d/dx as if no quantisation happened, so the fp32 master weights
keep learning. This file is the PyTorch reference; ``training/kernels/bitnet.py`` holds the fused
Triton quantiser with the same signature.
"""

import torch
import torch.nn.functional as F
from torch import nn

QUANT_EPS = 1e-5  # floor of both scales' denominators: an all-zero row or matrix stays zero


def ternary_weight(w: torch.Tensor) -> torch.Tensor:
    """Absmean ternary quantisation, dequantised: values in ``{-s, 0, s}`` with ``s = mean|w|``."""
    scale = w.abs().mean().clamp(min=QUANT_EPS)
    return (w / scale).round().clamp(-1, 1) * scale


def int8_activation(x: torch.Tensor) -> torch.Tensor:
    """Per-token (last dim) absmax 8-bit quantisation, dequantised, in ``x``'s dtype."""
    x_f32 = x.float()
    scale = 127.0 / x_f32.abs().amax(dim=-1, keepdim=True).clamp(min=QUANT_EPS)
    return ((x_f32 * scale).round().clamp(-128, 127) / scale).to(x.dtype)


def bitnet_quant_reference(x: torch.Tensor, w: torch.Tensor, prequantized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantised ``(x, w)`` for the forward with straight-through gradients for the backward.

    ``prequantized`` skips the weight quantiser (an exported model whose weights are already
    ternary-valued; re-quantising would change the scale).
    """
    x_q = x + (int8_activation(x) - x).detach()
    w_q = w if prequantized else w + (ternary_weight(w) - w).detach()
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
