"""C3O — the Compact Cautious Companion Optimizer (SPEC §3) for the non-Muon parameters.

An AdamW update (decoupled weight decay, bias correction) with two additions:

* **Compact state** (``state_dtype=torch.bfloat16``): ``exp_avg``/``exp_avg_sq`` are stored in bf16,
  halving optimizer memory. Each step loads them to fp32, updates in fp32, and writes back with
  *stochastic rounding* (SR). Round-to-nearest would lose every update smaller than half a bf16 ulp
  (8 mantissa bits: with beta2 = 0.999 the per-step change of ``exp_avg_sq`` is ~0.1% of its value,
  below bf16's ~0.4% resolution, so it would freeze). SR rounds up with probability equal to the
  discarded fraction, so the stored value is unbiased and small updates survive in expectation.
  Parameters stored in bf16 (the GPU bf16 profile) are updated the same way: fp32 maths, SR write-back.
* **Cautious masking** (``cautious=True``): Liang et al. 2024, "Cautious Optimizers: Improving
  Training with One Line of Code", arXiv:2411.16085. Update components whose sign disagrees with the
  current gradient are zeroed and the survivors rescaled by the kept fraction, per tensor:
  ``mask = (u * g > 0); u = u * mask / max(mean(mask), 1e-3)``. The paper's reference code
  (C-AdamW) scales by ``numel / (nnz(mask) + 1)``; we use the ``mean(mask).clamp(min=1e-3)`` form of
  timm's implementation (huggingface.co/rwightman/timm-optim-caution reports it more favourable, and
  copies of the authors' C-AdamW carry it with the original line kept as a comment). The two agree
  up to the "+1", which noticeably shrinks steps of small tensors (norm gains); the clamp only guards
  the all-disagree case.
  Weight decay is decoupled and not masked.
* **Companion**: it shares Muon's lr schedule (see ``OptimizerPair.set_lr_multiplier``).

With ``cautious=False`` and fp32 state the update is op-for-op ``torch.optim.AdamW``'s (tested).

Stochastic rounding randomness: noise for parameter ``i`` (its index across all param groups) at its
step ``t`` comes from a ``torch.Generator`` reseeded with ``(seed, t, i)``. Runs are therefore
reproducible, and a resumed run draws the same noise as an uninterrupted one from the saved ``step``
alone (no generator state to checkpoint). Reseeding is host-side bookkeeping, no device sync.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

_STATE_DTYPES = (torch.float32, torch.bfloat16)
_MOMENT_KEYS = ("exp_avg", "exp_avg_sq")
_SEED_MASK = (1 << 63) - 1


def stochastic_round_to_bf16(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Round fp32 ``x`` to bf16 stochastically: unbiased, ``E[result] == x`` for finite ``x``.

    bf16 is the top 16 bits of the fp32 bit pattern. Adding a uniform random integer in [0, 2^16)
    to the pattern and truncating the low 16 bits carries into the kept bits with probability equal to
    the discarded fraction of an ulp. Because floats are sign-magnitude, this rounds the *magnitude*
    up or down, which is unbiased for negative values too. Non-finite values pass through unchanged
    (adding noise to a NaN/inf pattern could carry into the sign bit). Costs one int32 random tensor.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic_round_to_bf16 expects float32, got {x.dtype}")
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    rounded = ((bits + noise) & -65536).view(torch.float32)  # -65536 == 0xFFFF0000 as int32
    # Low 16 bits are zero now, so the cast to bf16 is exact.
    return torch.where(torch.isfinite(x), rounded, x).to(torch.bfloat16)


def cautious_mask_(update: Tensor, grad: Tensor) -> Tensor:
    """Zero components of ``update`` whose sign disagrees with ``grad``; rescale by the kept fraction.

    In place on ``update`` (returned). Liang et al. 2024 (arXiv:2411.16085); normalisation by
    ``mean(mask).clamp(min=1e-3)`` as in timm (see module doc). No host sync.
    """
    mask = (update * grad > 0).to(update.dtype)
    mask.div_(mask.mean().clamp_(min=1e-3))
    return update.mul_(mask)


class C3O(torch.optim.Optimizer):
    """AdamW with compact (bf16 + stochastic rounding) state and optional cautious masking.

    Args: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=1e-2`` (decoupled, as
    ``torch.optim.AdamW``); ``cautious`` enables the Cautious mask; ``state_dtype`` is
    ``torch.float32`` or ``torch.bfloat16`` for ``exp_avg``/``exp_avg_sq``; ``seed`` seeds stochastic
    rounding. Parameters may be fp32 or bf16 (bf16 parameters are always written back with SR).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        cautious: bool = False,
        state_dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"C3O lr must be >= 0; got {lr}")
        if eps < 0.0:
            raise ValueError(f"C3O eps must be >= 0; got {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"C3O betas must be in [0, 1); got {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"C3O weight_decay must be >= 0; got {weight_decay}")
        if state_dtype not in _STATE_DTYPES:
            raise ValueError(
                f"C3O state_dtype must be torch.float32 or torch.bfloat16 (--c3o-state-dtype fp32|bf16); "
                f"got {state_dtype}"
            )
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "cautious": cautious,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dtype not in (torch.float32, torch.bfloat16):
                    raise ValueError(f"C3O supports fp32 and bf16 parameters; got {p.dtype}")
        self.state_dtype = state_dtype
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    # ------------------------------------------------------------------ helpers

    def _generator(self, device: torch.device, step: int, index: int) -> torch.Generator:
        """The SR generator for one tensor's step, reseeded from (seed, step, index); see module doc."""
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        gen.manual_seed(((self.seed * 1_000_003 + step) * 1_000_033 + index) & _SEED_MASK)
        return gen

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One C3O step for every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        index = -1
        for group in self.param_groups:
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            params, grads, indices = [], [], []
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("C3O does not support sparse gradients")
                state = self.state[p]
                if not state:
                    # Like AdamW (non-capturable): a CPU float tensor, so reading it is not a GPU sync.
                    state["step"] = torch.tensor(0.0)
                    for key in _MOMENT_KEYS:
                        state[key] = torch.zeros_like(
                            p, dtype=self.state_dtype, memory_format=torch.preserve_format
                        )
                params.append(p)
                grads.append(p.grad)
                indices.append(index)
            if not params:
                continue

            states = [self.state[p] for p in params]
            for s in states:
                s["step"] += 1
            steps = [int(s["step"].item()) for s in states]  # CPU tensors: no device sync

            # fp32 working copies only where storage is bf16; otherwise work in place on the real tensors.
            work_p = [p if p.dtype == torch.float32 else p.float() for p in params]
            work_g = [g.to(wp.dtype) for g, wp in zip(grads, work_p, strict=True)]
            work_m = [s["exp_avg"].to(wp.dtype) for s, wp in zip(states, work_p, strict=True)]
            work_v = [s["exp_avg_sq"].to(wp.dtype) for s, wp in zip(states, work_p, strict=True)]

            # --- AdamW, in torch.optim.AdamW's exact op order (single-tensor path) ---
            torch._foreach_mul_(work_p, 1 - lr * weight_decay)
            torch._foreach_lerp_(work_m, work_g, 1 - beta1)
            torch._foreach_mul_(work_v, beta2)
            torch._foreach_addcmul_(work_v, work_g, work_g, value=1 - beta2)
            step_sizes = [lr / (1 - beta1**t) for t in steps]
            bias_correction2_sqrt = [(1 - beta2**t) ** 0.5 for t in steps]  # ** 0.5 as AdamW, not math.sqrt
            denoms = torch._foreach_sqrt(work_v)
            torch._foreach_div_(denoms, bias_correction2_sqrt)
            torch._foreach_add_(denoms, eps)
            if group["cautious"]:
                # u = m_hat / (sqrt(v_hat) + eps) up to the positive step size; mask it against g.
                updates = torch._foreach_div(work_m, denoms)
                for u, g in zip(updates, work_g, strict=True):
                    cautious_mask_(u, g)
                torch._foreach_add_(work_p, torch._foreach_mul(updates, [-s for s in step_sizes]))
            else:
                torch._foreach_addcdiv_(work_p, work_m, denoms, [-s for s in step_sizes])

            # --- write back what lives in bf16, with stochastic rounding ---
            for p, s, wp, wm, wv, t, i in zip(
                params, states, work_p, work_m, work_v, steps, indices, strict=True
            ):
                needs_sr = [(s["exp_avg"], wm), (s["exp_avg_sq"], wv), (p, wp)]
                needs_sr = [(dst, src) for dst, src in needs_sr if dst is not src]
                if not needs_sr:
                    continue
                gen = self._generator(p.device, t, i)
                for dst, src in needs_sr:
                    dst.copy_(stochastic_round_to_bf16(src, gen))
        return loss

    # ------------------------------------------------------------------ checkpointing

    def load_state_dict(self, state_dict: dict) -> None:
        """Load like ``Optimizer.load_state_dict`` but keep moments in ``state_dtype``.

        The base class casts every floating state tensor to its parameter's dtype, which would round
        fp32 moments of bf16 parameters to bf16 (and widen bf16 moments needlessly). We restore the
        moments from the saved tensors directly, so a round trip is bit-identical.
        """
        super().load_state_dict(state_dict)
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(pid)
            if saved is None:
                continue
            for key in _MOMENT_KEYS:
                if key in saved:
                    self.state[p][key] = saved[key].to(device=p.device, dtype=self.state_dtype, copy=True)
