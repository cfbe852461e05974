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

With ``cautious=False`` and fp32 state the update is ``torch.optim.AdamW``'s, in its op order (tested
to 1e-6; the bias corrections come from a device-side step count, in fp64, instead of Python floats).

Layout and speed: the parameters of a param group that share (dtype, device, step count) form a
*bucket*, its tensors ordered largest first (so the many same-size norm gains lie together). A step
runs its maths on whole buckets, a segment at a time (:func:`_segments`): a large tensor (an
embedding) alone, in its own shape and in place, the small ones (norm gains) joined into one flat
fp32 piece. Each segment's moments live in persistent buffers of their own; ``state[p]["exp_avg"]``
etc. are views of them, so ``state_dict`` keeps the per-parameter format (and older checkpoints
load). The update is two functions of tensors, the cautious mask's per-tensor counts
(:func:`_bucket_fractions`) and the update itself (:func:`_bucket_step`), which ``compile=True``
hands to ``torch.compile`` to fuse; eager, each op is one launch over a whole segment rather than a
loop over ~50 parameters.

Stochastic rounding randomness: a counter-based hash of (``seed``, bucket, step count, element
index), computed with integer tensor ops (:func:`_hash32`), so it needs no ``torch.Generator``,
fuses under ``torch.compile``, and is identical eager or compiled, CPU or GPU. The step count it uses
is the bucket's device-side one, so a resumed run draws the same noise as an uninterrupted one from
the saved ``step`` alone, and a step skipped with ``ok=False`` changes nothing, later noise included.

Skipping without a sync: ``step(ok=...)`` (see :meth:`C3O.step`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

_STATE_DTYPES = (torch.float32, torch.bfloat16)
_MOMENT_KEYS = ("exp_avg", "exp_avg_sq")
_U32 = 0xFFFFFFFF


def _round_with_noise(x: Tensor, noise: Tensor) -> Tensor:
    """bf16 of fp32 ``x`` after adding ``noise`` (ints in [0, 2^16)) to its bit pattern; see below."""
    bits = x.view(torch.int32)
    rounded = ((bits + noise.to(torch.int32)) & -65536).view(torch.float32)  # -65536 == 0xFFFF0000
    # Low 16 bits are zero now, so the cast to bf16 is exact.
    return torch.where(torch.isfinite(x), rounded, x).to(torch.bfloat16)


def stochastic_round_to_bf16(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Round fp32 ``x`` to bf16 stochastically: unbiased, ``E[result] == x`` for finite ``x``.

    bf16 is the top 16 bits of the fp32 bit pattern. Adding a uniform random integer in [0, 2^16)
    to the pattern and truncating the low 16 bits carries into the kept bits with probability equal to
    the discarded fraction of an ulp. Because floats are sign-magnitude, this rounds the *magnitude*
    up or down, which is unbiased for negative values too. Non-finite values pass through unchanged
    (adding noise to a NaN/inf pattern could carry into the sign bit). Costs one int32 random tensor.
    C3O itself draws its noise from :func:`_hash32` instead of a generator.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic_round_to_bf16 expects float32, got {x.dtype}")
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    return _round_with_noise(x, noise)


def _mul32(x: Tensor | int, c: int) -> Tensor | int:
    """``(x * c) mod 2^32`` for ``0 <= x, c < 2^32`` in int64 without overflow (16-bit halves of ``c``)."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _U32


def _mix32(x: Tensor | int) -> Tensor | int:
    """Chris Wellons' ``lowbias32`` integer hash on 32-bit values held in int64 (a bijection on [0, 2^32))."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _as_int32(x: Tensor) -> Tensor:
    """The low 32 bits of int64 ``x`` as an int32 tensor (two's complement)."""
    return (((x & _U32) ^ 0x80000000) - 0x80000000).to(torch.int32)


def _mix32_int32(x: Tensor) -> Tensor:
    """:func:`_mix32` on int32 lanes: the same 32 bits, at a fraction of the integer work on a GPU.

    int32 products wrap modulo 2^32 (two's complement) in every torch backend, so a product's bits
    are the unsigned product's; right shifts of int32 copy the sign bit, so each is masked to the
    logical shift; the second multiplier is 0x846CA68B written as a signed int32.
    """
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * -0x7B935975
    return x ^ ((x >> 16) & 0xFFFF)


def _hash32(numel: int, key: Tensor, start: int = 0) -> Tensor:
    """``numel`` pseudo-random 32-bit patterns (int32), one per element index from ``start``, from the
    int64 0-dim ``key``.

    ``hash[i] = mix((start + i) ^ key)`` (:func:`_mix32`; indices taken mod 2^32): the key (well
    mixed, 32 bits) permutes the index space, the hash decorrelates neighbours. Plain integer tensor
    ops, so the same numbers come out eager or under ``torch.compile`` and on any device, and a slice
    of a buffer draws what the whole buffer would at those indices. Computed in int32 lanes
    (:func:`_mix32_int32`): in 64-bit lanes the hash was most of C3O's update pass on a GPU.
    """
    if start + numel <= 1 << 31:
        index = torch.arange(start, start + numel, device=key.device, dtype=torch.int32)
    else:
        index = _as_int32(torch.arange(start, start + numel, device=key.device, dtype=torch.int64))
    return _mix32_int32(index ^ _as_int32(key))


def _hash_noise16(numel: int, key: Tensor, start: int = 0) -> Tensor:
    """``numel`` pseudo-random ints in [0, 2^16): the high halves of :func:`_hash32`."""
    return (_hash32(numel, key, start) >> 16) & 0xFFFF


def cautious_mask_(update: Tensor, grad: Tensor) -> Tensor:
    """Zero components of ``update`` whose sign disagrees with ``grad``; rescale by the kept fraction.

    In place on ``update`` (returned). Liang et al. 2024 (arXiv:2411.16085); normalisation by
    ``mean(mask).clamp(min=1e-3)`` as in timm (see module doc). No host sync.
    """
    mask = (update * grad > 0).to(update.dtype)
    mask.div_(mask.mean().clamp_(min=1e-3))
    return update.mul_(mask)


@dataclass
class _Bucket:
    """Parameters of one param group sharing (dtype, device, step count), with per-segment moment buffers."""

    params: list[Tensor]
    numels: list[int]
    exp_avg: list[Tensor]  # per segment (_segments), state_dtype: a lone tensor's shape, else flat
    exp_avg_sq: list[Tensor]
    step: Tensor  # 0-dim fp32 on the params' device: this bucket's Adam step count
    noise_base: int  # (seed, bucket) part of the stochastic-rounding key


def _segment_inputs(
    grads: list[Tensor], exp_avg: Tensor, exp_avg_sq: Tensor, ok: Tensor | None, first: int, stop: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients ``[first, stop)`` in fp32 (one tensor as it is, several joined flat), and the
    segment's moments in fp32 (shaped alike: :meth:`C3O._group_buckets`).

    The moments are the buffers themselves when the state is fp32. A skipped step's gradient is
    zeroed, so its NaN/inf never reach the state.
    """
    gs = grads[first:stop]
    g32 = (gs[0] if len(gs) == 1 else torch.cat([g.reshape(-1) for g in gs])).float()
    if ok is not None:
        g32 = torch.where(ok, g32, 0.0)
    return g32, exp_avg.float(), exp_avg_sq.float()


def _adam(
    g32: Tensor, m32: Tensor, v32: Tensor, m_weight: Tensor, v_keep: Tensor, bias_correction2_sqrt: Tensor,
    *, beta2: float, eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The new moments and the update ``m / (sqrt(v_hat) + eps)`` (before the step size), out of place.

    ``torch.optim.AdamW``'s arithmetic in its op order (single-tensor path).
    """
    m_new = m32.lerp(g32, m_weight)
    v_new = (v32 * v_keep).addcmul(g32, g32, value=1 - beta2)
    return m_new, v_new, m_new / ((v_new.sqrt() / bias_correction2_sqrt) + eps)


def _bias_correction2_sqrt(step: Tensor, beta2: float) -> Tensor:
    """``sqrt(1 - beta2^t)`` in fp64 (like AdamW's Python floats) for the advanced count ``step``.

    A skipped first step leaves the count at 0: the clamp keeps the corrections finite (the step size
    is gated to 0 then anyway).
    """
    return (1 - beta2 ** step.double().clamp(min=1)).sqrt()


def _bucket_fractions(
    grads: list[Tensor],
    exp_avg: list[Tensor],
    exp_avg_sq: list[Tensor],
    step: Tensor,
    ok: Tensor | None,
    m_weight: Tensor,
    v_keep: Tensor,
    *,
    beta2: float,
    eps: float,
    numels: list[int],
) -> Tensor:
    """Cautious masking's kept fraction of each of a bucket's tensors, ``(n,)`` fp32, at count ``step``.

    ``mean(u * g > 0)`` per tensor, clamped to 1e-3 (:func:`cautious_mask_`), read from the gradients
    and moments before :func:`_bucket_step` changes them. A pass of its own: the counts are reductions
    the update needs before it can write anything, and in one graph Inductor kept the update's fp32
    intermediates in memory between the two; apart, the update fuses into one kernel per segment (on
    an H100 this pass is still two kernels for the embedding, PERFORMANCE.md). Each run of equal-size
    tensors is one ``(count, size)`` block, so the counts are one row sum per run.
    """
    bias_correction2_sqrt = _bias_correction2_sqrt(step, beta2)
    fractions = []
    for segment, (first, stop, _) in enumerate(_segments(numels)):
        sizes = numels[first:stop]
        g32, m32, v32 = _segment_inputs(grads, exp_avg[segment], exp_avg_sq[segment], ok, first, stop)
        _, _, update = _adam(g32, m32, v32, m_weight, v_keep, bias_correction2_sqrt, beta2=beta2, eps=eps)
        mask = (update * g32 > 0).float()
        if len(sizes) == 1:  # a lone tensor in its own shape: one full reduction, no flat view
            fractions.append((mask.sum() / sizes[0]).clamp(min=1e-3).reshape(1))
            continue
        start = 0
        for count, size in _runs(sizes):
            kept = mask[start : start + count * size].view(count, size).sum(1)
            fractions.append((kept / size).clamp(min=1e-3))
            start += count * size
    return torch.cat(fractions) if len(fractions) > 1 else fractions[0]


def _bucket_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avg: list[Tensor],
    exp_avg_sq: list[Tensor],
    step: Tensor,
    ok: Tensor | None,
    lr: Tensor,
    decay: Tensor,
    m_weight: Tensor,
    v_keep: Tensor,
    fractions: Tensor | None,
    *,
    beta1: float,
    beta2: float,
    eps: float,
    noise_base: int,
    numels: list[int],
) -> None:
    """One C3O step of a bucket, in place: parameters and moments, at the already advanced count ``step``.

    The values the lr schedule changes every step, ``lr`` (fp64) and the gated factors ``decay``
    (``1 - lr * wd``), ``m_weight`` (``1 - beta1``) and ``v_keep`` (``beta2``) (fp32, the dtype of the
    maths), arrive as 0-dim tensors on the device, so ``torch.compile`` never recompiles for them and
    nothing is copied from the host; constants arrive as Python values. See :meth:`C3O.step` for the
    gates. The maths is ``torch.optim.AdamW``'s, in fp32 working copies. ``fractions``: the cautious
    mask's per-tensor kept fractions (:func:`_bucket_fractions`), or None without cautious masking.

    The bucket is updated in segments (:func:`_segments`): each large tensor alone, read and written
    in place in its own shape, and the small ones joined into one flat piece, so the bytes that matter
    (an embedding) pass through one fused kernel without a flat fp32 copy of parameters and gradients.
    Every element's arithmetic and rounding noise are what one flat pass over the bucket would give.
    Each segment's moments are whole buffers shaped like what they update, and nothing else is written
    (the caller advances ``step``), so Inductor can write every result from the kernel that computes
    it, reading and writing each element at one index.
    """
    bias_correction1 = 1 - beta1 ** step.double().clamp(min=1)
    bias_correction2_sqrt = _bias_correction2_sqrt(step, beta2)
    step_size = -lr / bias_correction1
    if ok is not None:
        step_size = torch.where(ok, step_size, 0.0)
    # Rounding noise: one 32-bit hash per element for both moments (its high half for exp_avg, its
    # low half for exp_avg_sq), one more for the parameters. The hash's integer maths is a large part
    # of this pass's work on a GPU, so the moments share theirs.
    t_int = step.to(torch.int64)
    moments_key, params_key = (_mix32((noise_base ^ (t_int * 4 + stream)) & _U32) for stream in (0, 2))

    for segment, (first, stop, offset) in enumerate(_segments(numels)):
        sizes, total, ps = numels[first:stop], sum(numels[first:stop]), params[first:stop]
        m_buffer, v_buffer = exp_avg[segment], exp_avg_sq[segment]
        g32, m32, v32 = _segment_inputs(grads, m_buffer, v_buffer, ok, first, stop)
        p32 = (ps[0] if len(ps) == 1 else torch.cat([p.reshape(-1) for p in ps])).float()
        p32 = p32 * decay
        m32, v32, update = _adam(g32, m32, v32, m_weight, v_keep, bias_correction2_sqrt, beta2=beta2, eps=eps)
        if fractions is not None:
            # Per tensor: zero the components that disagree with g, rescale by the kept fraction.
            mask = (update * g32 > 0).float()
            if len(ps) == 1:
                update = update * (mask / fractions[first])
            else:
                scaled, start, index = [], 0, first
                for count, size in _runs(sizes):
                    block = mask[start : start + count * size].view(count, size)
                    scaled.append((block / fractions[index : index + count, None]).reshape(-1))
                    start, index = start + count * size, index + count
                update = update * (torch.cat(scaled) if len(scaled) > 1 else scaled[0])
        p32 = p32 + update * step_size

        # --- write back; what lives in bf16 with stochastic rounding ---
        if m_buffer.dtype == torch.bfloat16:
            bits = _hash32(total, moments_key, offset).view(m32.shape)
            m32, v32 = _round_with_noise(m32, (bits >> 16) & 0xFFFF), _round_with_noise(v32, bits & 0xFFFF)
        m_buffer.copy_(m32)
        v_buffer.copy_(v32)
        if ps[0].dtype == torch.bfloat16:
            p32 = _round_with_noise(p32, _hash_noise16(total, params_key, offset).view(p32.shape))
        if len(ps) == 1:
            ps[0].copy_(p32)
        else:
            torch._foreach_copy_(ps, [x.view_as(p) for x, p in zip(p32.split(sizes), ps, strict=True)])


class C3O(torch.optim.Optimizer):
    """AdamW with compact (bf16 + stochastic rounding) state and optional cautious masking.

    Args: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=1e-2`` (decoupled, as
    ``torch.optim.AdamW``); ``cautious`` enables the Cautious mask; ``state_dtype`` is
    ``torch.float32`` or ``torch.bfloat16`` for ``exp_avg``/``exp_avg_sq``; ``seed`` seeds stochastic
    rounding; ``compile`` runs each bucket's update through ``torch.compile`` (for CUDA; the first
    step then compiles, a few seconds). Parameters may be fp32 or bf16 (bf16 parameters are always
    written back with SR).
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
        compile: bool = False,
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
        self._fractions_fn, self._step_fn = (
            (torch.compile(fn, fullgraph=True, dynamic=False) for fn in (_bucket_fractions, _bucket_step))
            if compile
            else (_bucket_fractions, _bucket_step)
        )
        # param-group index -> (ids of the params that had gradients, their buckets); rebuilt when that
        # set changes or a state dict is loaded.
        self._buckets: dict[int, tuple[tuple[int, ...], list[_Bucket]]] = {}

    # ------------------------------------------------------------------ buckets

    def _group_buckets(self, index: int, params: list[Tensor]) -> list[_Bucket]:
        """The buckets of ``params`` (a group's params with gradients), built on first use.

        Parameters go together when dtype, device and step count agree (a loaded checkpoint could
        hold different counts). Building copies whatever per-parameter moments exist into fresh segment
        buffers and points the state at views of them. Reading a count that lives on the GPU syncs,
        which only happens here, once after a load or when the set of parameters with gradients
        changes, never in a steady step.
        """
        key = tuple(id(p) for p in params)
        cached = self._buckets.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        first_index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        members: dict[tuple, list[Tensor]] = {}
        for p in params:
            step = self.state[p].get("step")
            step_key = (
                0.0 if step is None else float(step) if step.device.type == "cpu" else ("shared", id(step))
            )
            members.setdefault((p.dtype, p.device, step_key), []).append(p)
        buckets = []
        for (_, device, _), ps in members.items():
            ps.sort(key=lambda p: -p.numel())  # stable: equal sizes lie together (see _runs)
            numels = [p.numel() for p in ps]
            segments = _segments(numels)
            # One buffer per segment, per moment: a tensor alone keeps its shape, joined ones are flat.
            shapes = [ps[first].shape if stop - first == 1 else (sum(numels[first:stop]),)
                      for first, stop, _ in segments]  # fmt: skip
            buffers = {
                k: [torch.zeros(shape, dtype=self.state_dtype, device=device) for shape in shapes]
                for k in _MOMENT_KEYS
            }
            old_step = self.state[ps[0]].get("step")
            step = (
                torch.zeros((), dtype=torch.float32, device=device)
                if old_step is None
                else old_step.detach().to(device=device, dtype=torch.float32, copy=True)
            )
            for segment, (first, stop, _) in enumerate(segments):
                for p, offset in zip(ps[first:stop], _offsets(numels[first:stop]), strict=True):
                    state = self.state[p]
                    for k in _MOMENT_KEYS:
                        view = buffers[k][segment].view(-1)[offset : offset + p.numel()].view_as(p)
                        if k in state:
                            view.copy_(state[k])
                        state[k] = view
                    state["step"] = step
            noise_base = _mix32((_mix32(self.seed & _U32) ^ first_index[id(ps[0])]) & _U32)
            buckets.append(_Bucket(ps, numels, buffers["exp_avg"], buffers["exp_avg_sq"], step, noise_base))
        self._buckets[index] = (key, buckets)
        return buckets

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None, *, ok: Tensor | None = None) -> float | None:
        """One C3O step for every parameter that has a gradient.

        ``ok``: optional 0-dim bool tensor on the parameters' device. Where it is False the step is a
        no-op, bit for bit (parameters, moments and step counts unchanged), and the gradients may
        hold NaN/inf; the host never reads it. Each gate is a device-side select (gradient -> 0, decay
        factor -> 1, moment weights -> neutral, step size -> 0, step count += ok), so a skipped
        step also leaves the bias correction and the rounding noise of later steps as if it never
        happened.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("C3O does not support sparse gradients")
            if not params:
                continue
            beta1, beta2 = group["betas"]
            lr, weight_decay = group["lr"], group["weight_decay"]
            device = params[0].device
            # The schedule-driven scalars as device tensors: ok -> selects; no ok -> plain fills.
            scalars = [
                (lr, 0.0, torch.float64),
                (1 - lr * weight_decay, 1.0, torch.float32),
                (1 - beta1, 0.0, torch.float32),
                (beta2, 1.0, torch.float32),
            ]
            lr_t, decay, m_weight, v_keep = (
                torch.full((), v, dtype=d, device=device)
                if ok is None
                else torch.full((), v, dtype=d, device=device).where(ok, n)
                for v, n, d in scalars
            )
            for b in self._group_buckets(index, params):
                b.step.add_(1 if ok is None else ok.to(b.step.dtype))
                grads = [p.grad for p in b.params]
                fractions = (
                    self._fractions_fn(grads, b.exp_avg, b.exp_avg_sq, b.step, ok, m_weight, v_keep,
                                       beta2=beta2, eps=group["eps"], numels=b.numels)
                    if group["cautious"]
                    else None
                )  # fmt: skip
                self._step_fn(
                    b.params, grads, b.exp_avg, b.exp_avg_sq, b.step, ok, lr_t, decay, m_weight, v_keep,
                    fractions, beta1=beta1, beta2=beta2, eps=group["eps"], noise_base=b.noise_base,
                    numels=b.numels,
                )  # fmt: skip
        return loss

    # ------------------------------------------------------------------ checkpointing

    def load_state_dict(self, state_dict: dict) -> None:
        """Load like ``Optimizer.load_state_dict`` but keep moments in ``state_dtype``.

        The base class casts every floating state tensor to its parameter's dtype, which would round
        fp32 moments of bf16 parameters to bf16 (and widen bf16 moments needlessly). We restore the
        moments from the saved tensors directly, so a round trip is bit-identical. Buckets are rebuilt
        from the loaded per-parameter state at the next step.
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
        self._buckets.clear()


# Tensors of at least this many elements are a segment of their own in a bucket's step (_segments).
_SEGMENT_MIN_NUMEL = 1 << 16


def _segments(numels: list[int]) -> list[tuple[int, int, int]]:
    """``(first, stop, offset)``: the bucket's tensors ``[first, stop)`` starting at flat ``offset``.

    A tensor of ``_SEGMENT_MIN_NUMEL`` elements or more is a segment alone; consecutive smaller ones
    share one (a bucket lists its tensors largest first, so the small ones are one segment).
    """
    segments: list[tuple[int, int, int]] = []
    offset = 0
    for i, n in enumerate(numels):
        joins = n < _SEGMENT_MIN_NUMEL and segments and numels[segments[-1][1] - 1] < _SEGMENT_MIN_NUMEL
        if joins:
            first, _, start = segments[-1]
            segments[-1] = (first, i + 1, start)
        else:
            segments.append((i, i + 1, offset))
        offset += n
    return segments


def _runs(numels: list[int]) -> list[tuple[int, int]]:
    """``(count, size)`` of each run of consecutive equal sizes in ``numels``.

    A bucket holds its tensors largest first, so a model's many same-size norm gains make a few runs.
    """
    runs: list[tuple[int, int]] = []
    for n in numels:
        if runs and runs[-1][1] == n:
            runs[-1] = (runs[-1][0] + 1, n)
        else:
            runs.append((1, n))
    return runs


def _offsets(numels: list[int]) -> list[int]:
    """Start of each tensor in a flat buffer holding ``numels`` back to back."""
    out, total = [], 0
    for n in numels:
        out.append(total)
        total += n
    return out
