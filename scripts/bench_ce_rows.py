"""The linear + cross-entropy row kernel alone: one pass or two over each row, and its warps.

    python3 scripts/bench_ce_rows.py --json ce_rows.json    # on the GPU machine

Times :func:`model.kernels.linear_ce.cross_entropy_rows` on one chunk of bf16 logits (the default
chunk: 4096 rows at a 32768 vocabulary) with ``triton.testing.do_bench`` medians, for each variant:
the row read twice (max/sum, then gradient) or held in registers and read once, at 8-32 warps.
It prints the time and the bandwidth counted as one read and one write of the chunk (the least any
variant can move), and each variant's loss error against ``F.cross_entropy``.

Why: the kernel is bandwidth-bound (PERFORMANCE.md, the 124m profile: 4.3 ms a step in 16 chunks),
so reading each row once instead of twice is up to a third less time. The winner is
``cross_entropy_rows``'s default.

With ``--fp8`` it then times what the FP8 weight gradient (``linear_ce.triton_impl_fp8_grad_w``) changes:
the row kernel writing the bf16 gradient and its e5m2 copy (the FP8 head with a bf16 weight gradient)
against the e5m2 copy alone (``keep_logits``), each at the default launch and at three two-pass ones, and
``transpose_fp8`` of that copy into a column slice of a (V, 8 chunks) buffer at several tiles, next to
torch's own strided copy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.decoder import IGNORE_INDEX  # noqa: E402
from model.kernels import linear_ce  # noqa: E402


def variants(vocab: int) -> list[dict]:
    """The launch settings to compare at ``vocab``; one-pass ones only where the row fits registers."""
    out = [{"one_pass": False, "num_warps": w, "block_v": b} for b in (1024, 2048, 4096, 8192) for w in (4, 8, 16)
           if b // (32 * w) >= 4]  # at least 4 values a thread
    if vocab <= linear_ce._ONE_PASS_MAX_V:
        out += [{"one_pass": True, "num_warps": w} for w in (8, 16, 32)]
    return out


def time_launch(logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, n_valid: torch.Tensor,
                settings: dict) -> float:
    """Median ms of one launch over ``logits`` (overwritten in place each time, which changes no timing)."""
    from triton.testing import do_bench

    return do_bench(lambda: linear_ce.cross_entropy_rows(logits, targets, loss, n_valid, write_grad=True,
                                                         **settings), warmup=50, rep=400)


FP8_TWO_PASS = ((2048, 4), (4096, 8), (8192, 8))  # (block_v, warps) of the two-pass kernel, timed with --fp8
TRANSPOSE_TILES = ((64, 64, 4), (64, 128, 4), (128, 64, 4), (128, 128, 8), (32, 256, 8), (256, 32, 8))


def fp8_rows(logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, n_valid: torch.Tensor) -> list[dict]:
    """The ``--fp8`` rows: the row kernel with and without its bf16 gradient, then the transposition."""
    from triton.testing import do_bench

    C, V = logits.shape
    grad8 = torch.empty(C, V, dtype=torch.float8_e5m2, device="cuda")
    out = []
    launches = [{}] + [{"one_pass": False, "block_v": b, "num_warps": w} for b, w in FP8_TWO_PASS]  # {}: the default
    for keep, launch in itertools.product((False, True), launches):
        work = logits.clone()
        ms = do_bench(lambda work=work, keep=keep, launch=launch: linear_ce.cross_entropy_rows(
            work, targets, loss, n_valid, write_grad=True, grad8_CV=grad8, keep_logits=keep, **launch),
            warmup=50, rep=400)
        moved = C * V * (2 + 1 + (0 if keep else 2))  # read bf16, write e5m2, write bf16 unless keep_logits
        out.append({"vocab": V, "rows": C, "case": "rows_fp8_only" if keep else "rows_bf16_and_fp8", **launch,
                    "ms": ms, "GB/s": moved / ms / 1e6})
        print(f"V={V:>6} rows kernel, {'e5m2 copy only ' if keep else 'bf16 + e5m2 copy'} {launch or 'default'} "
              f"{ms * 1e3:8.1f} us  {moved / ms / 1e6:7.0f} GB/s", flush=True)
    buffer = torch.empty(V, 8 * C, dtype=torch.float8_e5m2, device="cuda")
    dst = buffer[:, 3 * C: 4 * C]
    want = grad8.view(torch.uint8).t()
    cases = [(f"transpose {r}x{c} {w} warps", dict(block_r=r, block_c=c, num_warps=w)) for r, c, w in TRANSPOSE_TILES]
    for name, tile in [*cases, ("torch copy_", None)]:
        if tile is None:
            fn = lambda: dst.view(torch.uint8).copy_(grad8.view(torch.uint8).t())  # noqa: E731
        else:
            fn = lambda tile=tile: linear_ce.transpose_fp8(grad8, dst, **tile)  # noqa: E731
        dst.view(torch.uint8).zero_()
        fn()
        ok = torch.equal(dst.view(torch.uint8), want)
        ms = do_bench(fn, warmup=50, rep=400)
        out.append({"vocab": V, "rows": C, "case": name, "ms": ms, "GB/s": 2 * C * V / ms / 1e6, "correct": ok})
        print(f"V={V:>6} {name:26} {ms * 1e3:8.1f} us  {2 * C * V / ms / 1e6:7.0f} GB/s  correct={ok}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--vocabs", type=int, nargs="+", default=[32768, 151936])
    p.add_argument("--fp8", action="store_true", help="also time the FP8 weight gradient's row kernel and transposition")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_ce_rows.py times a GPU kernel; run it on the GPU machine")
    rows = []
    for vocab in args.vocabs:
        logits = torch.randn(args.rows, vocab, device="cuda", dtype=torch.bfloat16)
        targets = torch.randint(0, vocab, (args.rows,), device="cuda")
        targets[::16] = IGNORE_INDEX
        n_valid = (targets != IGNORE_INDEX).sum()
        loss = torch.empty(args.rows, device="cuda")
        want_loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none",
                                                      ignore_index=IGNORE_INDEX)
        for v in variants(vocab):
            work = logits.clone()  # the kernel overwrites its logits with their gradient
            linear_ce.cross_entropy_rows(work, targets, loss, n_valid, write_grad=True, **v)
            err = ((loss - want_loss).abs().max() / want_loss.abs().max()).item()
            ms = time_launch(work, targets, loss, n_valid, v)
            gbps = 2 * work.numel() * work.element_size() / ms / 1e6
            row = {"vocab": vocab, "rows": args.rows, **v, "ms": ms, "GB/s (1 read + 1 write)": gbps,
                   "loss_rel_err": err}
            rows.append(row)
            print(f"V={vocab:>6} one_pass={v['one_pass']!s:5} warps={v['num_warps']:>2} "
                  f"block_v={v.get('block_v', vocab):>6} {ms * 1e3:8.1f} us  "
                  f"{gbps:7.0f} GB/s  loss rel err {err:.1e}", flush=True)
        print(f"V={vocab}: cross_entropy_rows' default is one_pass={vocab <= linear_ce._ONE_PASS_MAX_V}", flush=True)
        if args.fp8:
            rows += fp8_rows(logits, targets, loss, n_valid)
    if args.json:
        env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "argv": sys.argv[1:]}
        Path(args.json).write_text(json.dumps({"env": env, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
