"""Muon with batched same-shape orthogonalization.

Same maths and hyper-parameters as ``torch.optim.Muon`` (torch 2.10), per parameter ``W`` with
gradient ``g`` and momentum buffer ``B``:

    B <- lerp(B, g, 1 - momentum)                      (= momentum * B + (1 - momentum) * g)
    U <- lerp(g, B, momentum) if nesterov else B
    O <- NewtonSchulz(U)                               (bf16, 5 quintic steps by default)
    W <- W * (1 - lr * weight_decay)                   (decoupled; uses the *unadjusted* lr)
    W <- W - adjust(lr, shape) * O

``adjust_lr_fn``: ``None``/``"original"`` -> ``lr * sqrt(max(1, rows / cols))`` (Keller Jordan);
``"match_rms_adamw"`` -> ``lr * 0.2 * sqrt(max(rows, cols))`` (Moonshot, "Muon is Scalable for LLM
Training", arXiv:2502.16982), which lets Muon reuse AdamW's lr and weight decay.

What it adds over ``torch.optim.Muon`` (which loops over parameters one matrix at a time):

* **Shape groups.** Parameters of the same (shape, dtype, device) form a bucket whose momentum
  buffers live in one persistent ``(B, m, n)`` tensor; ``state[p]["momentum_buffer"]`` is the row
  view of it, so ``state_dict`` still has one buffer per parameter (old checkpoints load unchanged).
  Per step a bucket costs one ``torch.stack`` of its gradients, one ``lerp`` on the stacked momentum,
  one batched Newton–Schulz call and two ``_foreach`` calls on the parameters: a 12-layer model
  runs 3 launch chains instead of ~70.
* **Sync-free skip** (``step(ok=...)``, see :meth:`Muon.step`): with ``ok`` False on the device the
  step changes nothing, bit for bit, without the host reading ``ok``.

On one device the default path (``ok=None``) equals ``torch.optim.Muon`` bit for bit (tested on CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from training.optim.newton_schulz import (
    DEFAULT_NS_COEFFICIENTS,
    DEFAULT_NS_EPS,
    DEFAULT_NS_STEPS,
    NSCoefficients,
    NSFn,
    coefficient_schedule,
    zeropower_via_newtonschulz,
)

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def adjust_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size | tuple[int, ...]) -> float:
    """Shape-dependent lr scale so the orthogonalized update has a consistent RMS (torch's ``_adjust_lr``)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, rows / cols))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}; got {adjust_lr_fn!r}")
    return lr * ratio


def wide_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """``(m, n)`` with ``m <= n`` of a matrix shape: the orientation Newton–Schulz iterates in.

    Under ``compile=True`` Muon orthogonalizes every bucket with the same wide shape (and dtype and
    device) in one call, the tall ones transposed.
    """
    m, n = shape[-2:]
    return (min(m, n), max(m, n))


@dataclass
class _Bucket:
    """Same-shape parameters of one param group and their stacked momentum ``(B, m, n)``."""

    params: list[Tensor]
    momentum: Tensor


def _fused_momentum(
    grads: list[Tensor], buf: Tensor, ok: Tensor | None, momentum: Tensor, *, nesterov: bool
) -> Tensor:
    """The momentum part of :meth:`Muon.step` for one bucket under ``compile=True``: returns the update.

    The same maths and gates as the eager path, written as arithmetic on explicit fp32 upcasts:
    ``momentum`` is a 0-dim fp32 device tensor (the schedule changes it every step; a Python float
    would recompile), and mixed with bf16 operands type promotion would round it to bf16 first.
    """
    grad = torch.stack(grads)
    if ok is not None:
        grad = torch.where(ok, grad, buf)  # skipped: buf + w * (buf - buf) == buf exactly
    g32, b32 = grad.float(), buf.float()
    b32 = b32 + (1 - momentum) * (g32 - b32)
    buf.copy_(b32)
    update = (g32 + momentum * (b32 - g32)).to(buf.dtype) if nesterov else buf
    if ok is not None:
        update = torch.where(ok, update, 0)
    return update


def _fused_prepare(
    grads: list[list[Tensor]],
    bufs: list[Tensor],
    ok: Tensor | None,
    momentum: Tensor,
    *,
    tall: tuple[bool, ...],
    nesterov: bool,
) -> Tensor:
    """``compile=True``: everything before one Newton–Schulz call, as one graph.

    Per bucket the momentum step (:func:`_fused_momentum`), the update in bf16 (what the kernel
    computes in) and, where ``tall``, transposed; the buckets joined along the batch. Inductor writes
    the joined batch straight from the momentum pass instead of a separate ``cat`` pass.
    """
    wide = []
    for bucket_grads, buf, is_tall in zip(grads, bufs, tall, strict=True):
        update = _fused_momentum(bucket_grads, buf, ok, momentum, nesterov=nesterov).to(torch.bfloat16)
        wide.append(update.mT if is_tall else update)
    return torch.cat(wide) if len(wide) > 1 else wide[0].contiguous()


def _fused_apply(
    params: list[list[Tensor]],
    ortho: Tensor,
    lr: Tensor,
    decay: Tensor,
    *,
    tall: tuple[bool, ...],
    lr_ratios: tuple[float, ...],
) -> None:
    """``compile=True``: ``p <- p * decay - lr * ratio * O`` (fp32 per element) for one Newton–Schulz call's buckets.

    ``ortho`` is the joined ``(B, m, n)`` output; each bucket takes its rows, transposed back where
    ``tall``. ``lr_ratios`` are the buckets' :func:`adjust_lr` factors (shape constants).
    """
    rows = ortho.split([len(p) for p in params])
    targets, new = [], []
    for bucket, part, is_tall, ratio in zip(params, rows, tall, lr_ratios, strict=True):
        alpha = lr * -ratio
        for p, o in zip(bucket, (part.mT if is_tall else part).unbind(0), strict=True):
            targets.append(p)
            new.append(p.float() * decay + o.float() * alpha)
    torch._foreach_copy_(targets, new)


class Muon(torch.optim.Optimizer):
    """Muon (momentum + Newton–Schulz orthogonalized update) for 2-D parameters.

    Args mirror ``torch.optim.Muon`` (same names and defaults): ``lr=1e-3``, ``weight_decay=0.1``,
    ``momentum=0.95``, ``nesterov=True``, ``ns_coefficients=(3.4445, -4.775, 2.0315)``, ``eps=1e-7``,
    ``ns_steps=5``, ``adjust_lr_fn=None`` (= ``"original"``). ``ns_coefficients`` may also be a
    per-step sequence of triples (Polar Express, :func:`~training.optim.newton_schulz.ns_coefficient_set`).
    ``ns_fn``: the orthogonalization kernel, ``fn(G_BMN, steps=, coefficients=, eps=) -> Tensor`` on a
    batch of same-shape matrices; defaults to the bf16 PyTorch reference. Not part of the state dict.
    ``compile``: run the elementwise parts (momentum, parameter update) through ``torch.compile``
    (:func:`_fused_prepare`, :func:`_fused_apply`; for CUDA): fewer passes over the stacked buckets,
    fp32 intermediates, so not bit-identical to ``torch.optim.Muon``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: NSCoefficients = DEFAULT_NS_COEFFICIENTS,
        eps: float = DEFAULT_NS_EPS,
        ns_steps: int = DEFAULT_NS_STEPS,
        adjust_lr_fn: str | None = None,
        *,
        ns_fn: NSFn | None = None,
        compile: bool = False,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Muon lr must be >= 0; got {lr}")
        if momentum < 0.0:
            raise ValueError(f"Muon momentum must be >= 0; got {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Muon weight_decay must be >= 0; got {weight_decay}")
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"Muon adjust_lr_fn must be one of {ADJUST_LR_FNS}; got {adjust_lr_fn!r}")
        if not 0 < ns_steps < 100:
            raise ValueError(f"Muon ns_steps must be in [1, 99]; got {ns_steps}")
        coefficient_schedule(ns_coefficients, ns_steps)  # raises ValueError naming the bad coefficients
        if len(ns_coefficients) == 3 and all(isinstance(x, (int, float)) for x in ns_coefficients):
            ns_coefficients = tuple(ns_coefficients)  # one triple stays a flat triple, like torch.optim.Muon
        else:
            ns_coefficients = tuple(tuple(t) for t in ns_coefficients)
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_coefficients": ns_coefficients,
            "eps": eps,
            "ns_steps": ns_steps,
            "adjust_lr_fn": adjust_lr_fn,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon only takes 2-D parameters; got one of shape {tuple(p.shape)}")
                if torch.is_complex(p):
                    raise ValueError("Muon does not support complex parameters")
        self.ns_fn: NSFn = ns_fn if ns_fn is not None else zeropower_via_newtonschulz
        self._fused = (
            (
                torch.compile(_fused_prepare, fullgraph=True, dynamic=False),
                torch.compile(_fused_apply, fullgraph=True, dynamic=False),
            )
            if compile
            else None
        )
        # param-group index -> (ids of the params that had gradients, their buckets); rebuilt when that
        # set changes or a state dict is loaded.
        self._buckets: dict[int, tuple[tuple[int, ...], list[_Bucket]]] = {}
        # (bucket sizes, lr ratios, device) -> (B,) fp32 ``-ratio`` per matrix (orthogonalize_and_apply)
        self._ratio_tables: dict[tuple, Tensor] = {}

    # ------------------------------------------------------------------ shape buckets

    def _group_buckets(self, index: int, params: list[Tensor]) -> list[_Bucket]:
        """The buckets of ``params`` (the group's params that have gradients), built on first use.

        Building stacks whatever per-parameter momentum exists (a loaded checkpoint, or the previous
        buckets) into fresh ``(B, m, n)`` buffers and points the state at their rows.
        """
        key = tuple(id(p) for p in params)
        cached = self._buckets.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        by_shape: dict[tuple, list[Tensor]] = {}
        for p in params:
            by_shape.setdefault((tuple(p.shape), p.grad.dtype, p.device), []).append(p)
        buckets = []
        for (shape, dtype, device), members in by_shape.items():
            momentum = torch.zeros((len(members), *shape), dtype=dtype, device=device)
            for row, p in zip(momentum, members, strict=True):
                old = self.state[p].get("momentum_buffer")
                if old is not None:
                    row.copy_(old)
                self.state[p]["momentum_buffer"] = row
            buckets.append(_Bucket(members, momentum))
        self._buckets[index] = (key, buckets)
        return buckets

    def load_state_dict(self, state_dict: dict) -> None:
        """Load per-parameter momentum (this or the pre-bucket format); the buckets are rebuilt next step.

        The Newton–Schulz settings (``ns_coefficients``, ``ns_steps``) stay as constructed instead of
        coming back from the checkpoint's param groups: they choose the kernel's arithmetic, not
        training state, so ``--ns-coefficients`` given on resume is the one that runs.
        """
        kernel_settings = [(g["ns_coefficients"], g["ns_steps"]) for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, (coefficients, steps) in zip(self.param_groups, kernel_settings, strict=True):
            group["ns_coefficients"], group["ns_steps"] = coefficients, steps
        self._buckets.clear()

    # ------------------------------------------------------------------ orthogonalization seam

    def orthogonalize(self, update: Tensor, group: dict) -> Tensor:
        """Orthogonalize a ``(B, m, n)`` bucket of same-shape updates with one ``self.ns_fn`` call.

        Distributed seam: this is the only place that needs changing for sharded Muon. With ``W``
        ranks, each rank would orthogonalize a 1/W slice of every bucket (padding the batch to a
        multiple of W) and ``all_gather`` the results into the ``(B, m, n)`` output, so the
        Newton–Schulz work is divided instead of repeated on every rank. The rest of ``step`` stays.
        """
        return self.ns_fn(
            update, steps=group["ns_steps"], coefficients=group["ns_coefficients"], eps=group["eps"]
        )

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None, *, ok: Tensor | None = None) -> float | None:
        """One Muon step for every parameter that has a gradient.

        ``ok``: optional 0-dim bool tensor on the parameters' device. Where it is False the step is a
        no-op, bit for bit (parameters and momentum unchanged), and the gradients may hold NaN/inf; the
        host never reads it. How, per bucket, with only device-side selects:
        the stacked gradient is replaced by the momentum itself (``lerp(B, B, w) == B`` exactly, and no
        NaN reaches the state), the update by zeros (Newton–Schulz maps 0 to 0, and ``p + (-lr) * 0 ==
        p``), and the decay factor by 1. With ``ok`` True every value equals the ``ok=None`` path's.
        Cost: two ``torch.where`` passes over each stacked bucket.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
            buckets = self._group_buckets(index, params)
            if self._fused is not None:
                self._fused_step(buckets, group, ok)
                continue
            for bucket in buckets:
                buf = bucket.momentum
                alpha = -adjust_lr(lr, group["adjust_lr_fn"], bucket.params[0].shape)
                grad = torch.stack([p.grad for p in bucket.params])  # (B, m, n): the one copy per step
                if ok is not None:
                    grad = torch.where(ok, grad, buf)
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                if ok is not None:
                    update = torch.where(ok, update, 0)
                ortho = self.orthogonalize(update, group).unbind(0)
                # The decay factor as a 1-element fp32 tensor, not a Python scalar: _foreach_mul_ with a
                # scalar rounds it to the parameters' dtype on the CPU (bf16: 0.998 -> 0.996, twice the
                # decay), and a 0-dim tensor would be rounded the same way by type promotion. Shape (1,)
                # promotes the product to fp32, which is what ``p.mul_(float)`` computes (bit-identical),
                # and lets ok gate it on the device.
                decay = torch.full((1,), 1 - lr * weight_decay, dtype=torch.float32, device=buf.device)
                if ok is not None:
                    decay = decay.where(ok, 1.0)
                torch._foreach_mul_(bucket.params, [decay] * len(bucket.params))
                torch._foreach_add_(bucket.params, ortho, alpha=alpha)
        return loss

    def _fused_step(self, buckets: list[_Bucket], group: dict, ok: Tensor | None) -> None:
        """One group's step with the compiled elementwise parts; the schedule's scalars as device tensors.

        Buckets whose matrices are transposes of each other (an MLP's ``(F, D)`` gate/up and ``(D, F)``
        down) are orthogonalized in one batched call, the tall ones as their transposes: Newton–Schulz
        commutes with transposition, and one launch series over the larger batch keeps the GPU busier.
        Per call: one compiled pass prepares the joined batch, the kernel orthogonalizes it, one
        compiled pass updates the parameters; with an ``ns_fn`` that offers ``orthogonalize_and_apply``
        (the Triton kernel) and 16-byte aligned parameters, the kernel's last step updates them
        instead. A group's parameters share one device (as ``ok`` does).
        """
        if not buckets:
            return
        prepare_fn, apply_fn = self._fused  # type: ignore[misc]
        by_wide_shape: dict[tuple, list[_Bucket]] = {}
        for bucket in buckets:
            key = (*wide_shape(bucket.momentum.shape), bucket.momentum.dtype, bucket.momentum.device)
            by_wide_shape.setdefault(key, []).append(bucket)
        # The schedule's scalars as 0-dim fp32 device tensors (Python floats would recompile every step).
        device = buckets[0].momentum.device
        momentum, lr, decay = (torch.full((), value, dtype=torch.float32, device=device) for value in
                               (group["momentum"], group["lr"], 1 - group["lr"] * group["weight_decay"]))
        if ok is not None:
            decay = decay.where(ok, 1.0)  # the update is already zero when not ok
        for members in by_wide_shape.values():
            tall = tuple(b.momentum.size(-2) > b.momentum.size(-1) for b in members)
            joined = prepare_fn(
                [[p.grad for p in b.params] for b in members], [b.momentum for b in members], ok, momentum,
                tall=tall, nesterov=group["nesterov"],
            )  # fmt: skip
            ratios = tuple(adjust_lr(1.0, group["adjust_lr_fn"], b.params[0].shape) for b in members)
            fused = getattr(self.ns_fn, "orthogonalize_and_apply", None) is not None
            if fused and all(p.data_ptr() % 16 == 0 for b in members for p in b.params):
                self.orthogonalize_and_apply(joined, members, tall, ratios, lr, decay, group)
                continue
            ortho = self.orthogonalize(joined, group)
            apply_fn([b.params for b in members], ortho, lr, decay, tall=tall, lr_ratios=ratios)

    def orthogonalize_and_apply(
        self, update: Tensor, buckets: list[_Bucket], tall: tuple[bool, ...], ratios: tuple[float, ...],
        lr: Tensor, decay: Tensor, group: dict,
    ) -> None:
        """:meth:`orthogonalize` and the parameter update in one, for an ``ns_fn`` that offers it
        (the Triton kernel's last step writes the parameters instead of an output read back).

        ``update``: the joined wide batch of ``buckets`` (tall ones transposed, as ``tall`` says);
        ``ratios``: each bucket's :func:`adjust_lr` factor; ``lr`` and ``decay`` as 0-dim device
        tensors. Distributed seam, as :meth:`orthogonalize`: each rank would orthogonalize and apply
        its share of the batch, then all-gather the updated parameters.
        """
        params = [p for b in buckets for p in b.params]
        flags = [is_tall for b, is_tall in zip(buckets, tall, strict=True) for _ in b.params]
        key = (tuple(len(b.params) for b in buckets), ratios, update.device)
        if key not in self._ratio_tables:
            self._ratio_tables[key] = torch.tensor(
                [-r for b, r in zip(buckets, ratios, strict=True) for _ in b.params], dtype=torch.float32,
                device=update.device,
            )  # fmt: skip
        self.ns_fn.orthogonalize_and_apply(  # type: ignore[attr-defined]
            update, params, flags, lr * self._ratio_tables[key], decay,
            steps=group["ns_steps"], coefficients=group["ns_coefficients"], eps=group["eps"],
        )  # fmt: skip
