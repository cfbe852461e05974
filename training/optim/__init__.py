"""Optimizers: Muon for block matrices, C3O for everything else, sharing one lr schedule.

``build_optimizers(model, ...)`` is the one entry point the training loop needs: it applies the strict
role split (:mod:`training.optim.split`), builds both optimizers and returns an :class:`OptimizerPair`
that steps, zeroes, checkpoints and schedules them together.

Weight decay (decoupled, ``weight_decay`` is the same knob for both):
  * Muon matrices: decayed (``W *= 1 - lr * weight_decay``, as ``torch.optim.Muon``).
  * C3O ``"head"`` (an untied LM head): decayed. It is a dense linear map that receives a gradient
    every step, like the block matrices.
  * C3O ``"embedding"`` (and a head tied to it): not decayed. Decay acts on every row every step,
    but a rare token's row only gets gradient when the token appears, so decay would erode
    rare-token embeddings toward zero between their updates.
  * C3O ``"norm"``: not decayed; gains are scale parameters whose natural value is 1, not 0.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from training.optim.c3o import C3O, stochastic_round_to_bf16
from training.optim.muon import Muon
from training.optim.newton_schulz import (
    INSTANT_INVERSION_MAX_RESIDUAL,
    POLAR_EXPRESS_COEFFICIENTS,
    NSFn,
    check_instant_inversion,
    instant_inversion_selftest,
    ns_coefficient_set,
    zeropower_via_newtonschulz,
)
from training.optim.split import ParamSplit, split_params

__all__ = [
    "C3O",
    "INSTANT_INVERSION_MAX_RESIDUAL",
    "Muon",
    "OptimizerPair",
    "POLAR_EXPRESS_COEFFICIENTS",
    "ParamSplit",
    "build_optimizers",
    "check_instant_inversion",
    "instant_inversion_selftest",
    "ns_coefficient_set",
    "split_params",
    "stochastic_round_to_bf16",
    "zeropower_via_newtonschulz",
]

_DECAYED_C3O_ROLES = frozenset({"head"})


class OptimizerPair:
    """Muon + C3O driven as one optimizer. Either may be ``None`` when its group is empty.

    Every param group carries ``"initial_lr"`` (its base lr); :meth:`set_lr_multiplier` sets
    ``lr = initial_lr * mult`` on all groups of both optimizers, so one schedule drives both.
    """

    def __init__(self, muon: Muon | None, c3o: C3O | None, split: ParamSplit) -> None:
        self.muon = muon
        self.c3o = c3o
        self.split = split

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [opt for opt in (self.muon, self.c3o) if opt is not None]

    def _groups(self) -> Iterator[dict]:
        for opt in self.optimizers:
            yield from opt.param_groups

    def step(self, ok: torch.Tensor | None = None) -> None:
        """Step both optimizers; with ``ok`` (0-dim bool on the device) False, change nothing.

        ``ok`` is meant to be ``isfinite(loss) & isfinite(grad_norm)`` computed on the device: the
        skip needs no host-device sync (gradients may hold NaN/inf then; they never reach the state).
        ``ok=None`` steps unconditionally.
        """
        for opt in self.optimizers:
            opt.step(ok=ok)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def set_lr_multiplier(self, mult: float, momentum: float | None = None) -> None:
        """Scale every group's ``initial_lr`` by the shared schedule ``mult``; optionally set Muon momentum."""
        for group in self._groups():
            group["lr"] = group["initial_lr"] * mult
        if momentum is not None and self.muon is not None:
            for group in self.muon.param_groups:
                group["momentum"] = momentum

    def lrs(self) -> dict[str, float]:
        """Current lr per named group, for logging."""
        return {group["name"]: group["lr"] for group in self._groups()}

    def state_dict(self) -> dict[str, dict | None]:
        return {
            "muon": self.muon.state_dict() if self.muon is not None else None,
            "c3o": self.c3o.state_dict() if self.c3o is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, dict | None]) -> None:
        for key, opt in (("muon", self.muon), ("c3o", self.c3o)):
            saved = state_dict.get(key)
            if (opt is None) != (saved is None):
                raise ValueError(
                    f"Optimizer state mismatch for {key!r}: the checkpoint has "
                    f"{'no' if saved is None else 'a'} {key} state but this model "
                    f"{'has' if opt is not None else 'has no'} {key} parameters. Resume with the same model config."
                )
            if opt is not None:
                opt.load_state_dict(saved)


def build_optimizers(
    model: nn.Module,
    *,
    lr: float,
    muon_lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    c3o_state_dtype: torch.dtype,
    c3o_cautious: bool,
    muon_momentum: float,
    ns_steps: int,
    ns_coefficients: str = "muon",
    eps: float = 1e-8,
    adjust_lr_fn: str | None = None,
    ns_fn: NSFn | None = None,
    seed: int = 0,
    use_muon: bool = True,
    compile: bool = False,
) -> OptimizerPair:
    """Split ``model`` by role and build Muon (``muon_lr``) + C3O (``lr``) sharing one schedule.

    ``lr``/``betas``/``eps``/``c3o_*`` configure C3O; ``muon_*``/``ns_steps``/``ns_coefficients``
    (``"muon"`` | ``"polar_express"``, :func:`ns_coefficient_set`)/``adjust_lr_fn``/``ns_fn`` (the
    orthogonalization kernel, e.g. the Triton one) configure Muon; ``seed`` seeds C3O's stochastic
    rounding; ``compile`` runs the elementwise parts of both optimizers through ``torch.compile``
    (use it on CUDA; on the CPU the eager path is the tested one).
    Weight decay per the module docstring. The split summary is ``pair.split.summary`` (log it at
    start-up). ``use_muon=False`` (``--optimizer c3o``) sends the block matrices to C3O as well,
    decayed like the head.
    """
    split = split_params(model)

    muon = None
    if split.muon and use_muon:
        muon = Muon(
            [{"params": [p for _, p in split.muon], "name": "muon", "initial_lr": muon_lr}],
            lr=muon_lr,
            weight_decay=weight_decay,
            momentum=muon_momentum,
            ns_steps=ns_steps,
            ns_coefficients=ns_coefficient_set(ns_coefficients),
            adjust_lr_fn=adjust_lr_fn,
            ns_fn=ns_fn,
            compile=compile,
        )

    decay = [p for name, p in split.c3o if split.roles[name] in _DECAYED_C3O_ROLES]
    if not use_muon:
        decay = [p for _, p in split.muon] + decay
    no_decay = [p for name, p in split.c3o if split.roles[name] not in _DECAYED_C3O_ROLES]
    groups = [
        {"params": params, "name": name, "weight_decay": wd, "initial_lr": lr}
        for name, params, wd in (("c3o_decay", decay, weight_decay), ("c3o_no_decay", no_decay, 0.0))
        if params
    ]
    c3o = None
    if groups:
        c3o = C3O(
            groups,
            lr=lr,
            betas=betas,
            eps=eps,
            cautious=c3o_cautious,
            state_dtype=c3o_state_dtype,
            seed=seed,
            compile=compile,
        )
    return OptimizerPair(muon, c3o, split)
