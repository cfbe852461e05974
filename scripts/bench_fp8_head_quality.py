"""Does the FP8 LM head (``--fp8-lm-head on``) change what a model learns? Held-out loss, side by side.

    python3 scripts/bench_fp8_head_quality.py --data passages.jsonl --text-field passage
    python3 scripts/bench_fp8_head_quality.py --data code.jsonl --device cuda --preset 124m ...  # an FP8 GPU

Trains the same small SigmaLM on real text with Muon + C3O as the trainer builds them, from the same
initial weights, in three arms:

* ``exact``       the exact loss (``linear_ce.reference``; on CUDA the fused bf16 kernel, ``triton_impl``,
                  as the trainer runs it there);
* ``exact_order`` the exact loss on the same batches in another order: how much the held-out loss moves
                  for a reason that should not matter, the yardstick for the next arm;
* ``fp8``         the FP8 head's arithmetic (``linear_ce.reference_fp8``, which the Triton kernel
                  ``triton_impl_fp8`` matches in tests/test_kernels_fused.py; on CUDA that kernel
                  itself, as ``--fp8-lm-head on`` runs it), same batches as ``exact``;
* ``fp8_grad_w``  (named with ``--arms``) ``fp8`` with the weight gradient in FP8 too
                  (``reference_fp8(fp8_grad_w=True)``; on CUDA ``triton_impl_fp8_grad_w``).

It prints the held-out loss (computed exactly in every arm) every ``--eval-every`` steps, and each arm's
difference from ``exact`` (from the first arm named when ``exact`` is not run). On the CPU the parameters
are fp32 and Newton–Schulz runs in fp32; with ``--device cuda`` both are bf16, as the trainer runs them on
a GPU. Neither changes the FP8 quantisation being measured: h and W in e4m3, the logits' gradient in e5m2.
Small model, short run: evidence about the head's noise, not a substitute for a long GPU run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.config import from_preset  # noqa: E402
from model.decoder import SigmaLM  # noqa: E402
from model.kernels import linear_ce  # noqa: E402
from training.data.local import local_documents  # noqa: E402
from training.data.tokenizer import EOS_TOKEN, train_tokenizer  # noqa: E402
from training.optim import build_optimizers  # noqa: E402
from training.optim.newton_schulz import zeropower_via_newtonschulz  # noqa: E402


def read_texts(paths: list[Path], field: str, limit_chars: int) -> list[str]:
    """The first documents of ``paths`` (read as the trainer's local backend reads them), up to ``limit_chars``."""
    texts, total = [], 0
    for doc in local_documents([str(p) for p in paths], text_field=field, cycle=False):
        texts.append(doc.text)
        total += len(doc.text)
        if total >= limit_chars:
            break
    return texts


def token_stream(texts: list[str], vocab_size: int) -> torch.Tensor:
    """The trainer's byte-level BPE trained on ``texts``, then every text encoded, end-of-text between."""
    tok = train_tokenizer(texts, vocab_size)
    eot = tok.token_to_id(EOS_TOKEN)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def batches(stream: torch.Tensor, n: int, batch: int, seq: int, seed: int) -> list[torch.Tensor]:
    """``n`` fixed batches of ``batch`` windows of ``seq + 1`` tokens from ``stream``, drawn with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq - 1, (n, batch), generator=gen)
    return [torch.stack([stream[s:s + seq + 1] for s in row.tolist()]) for row in starts]


def train(arm: str, seed: int, args: argparse.Namespace, cfg, init: dict, train_batches: list,
          heldout: list) -> list[tuple]:
    """Held-out loss every ``eval_every`` steps: ``[(step, loss), ...]``."""
    device = torch.device(args.device)
    model = SigmaLM(cfg)
    model.load_state_dict(init)
    if device.type == "cuda":
        model.to(device, torch.bfloat16)
        gpu_heads = {"fp8": linear_ce.triton_impl_fp8, "fp8_grad_w": linear_ce.triton_impl_fp8_grad_w}
        model.use_kernels(linear_ce=gpu_heads.get(arm, linear_ce.triton_impl))
        train_batches, heldout = [b.to(device) for b in train_batches], [b.to(device) for b in heldout]
    elif arm in ("fp8", "fp8_grad_w"):
        model.use_kernels(linear_ce=partial(linear_ce.reference_fp8, fp8_grad_w=arm == "fp8_grad_w"))
    if arm == "exact_order":  # the same batches, another order
        order = torch.randperm(len(train_batches), generator=torch.Generator().manual_seed(seed + 2))
        train_batches = [train_batches[i] for i in order.tolist()]
    pair = build_optimizers(model, lr=args.lr, muon_lr=args.muon_lr, weight_decay=0.0, betas=(0.9, 0.95),
                            c3o_state_dtype=torch.float32, c3o_cautious=True, muon_momentum=0.95, ns_steps=5,
                            seed=seed, ns_fn=partial(zeropower_via_newtonschulz, dtype=model.embed_tokens.weight.dtype))
    groups = [g for opt in (pair.muon, pair.c3o) for g in opt.param_groups]
    peaks = [g["lr"] for g in groups]

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            loss = sum(model(b[:, :-1], b[:, 1:]).item() for b in heldout) / len(heldout)
        model.train()
        return loss

    curve = [(0, evaluate())]
    t0 = time.perf_counter()
    for step, b in enumerate(train_batches, start=1):
        # Linear warm-up, constant, linear decay over the last fifth (the trainer's WSD shape).
        decay_from = int(0.8 * args.steps)
        scale = min(step / args.warmup, 1.0) * min(1.0, (args.steps - step + 1) / max(1, args.steps - decay_from))
        for g, peak in zip(groups, peaks, strict=True):
            g["lr"] = peak * scale
        loss = model(b[:, :-1], b[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        pair.step()
        pair.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, evaluate()))
            print(json.dumps({"seed": seed, "arm": arm, "step": step, "train_loss": round(loss.item(), 4),
                              "heldout_loss": round(curve[-1][1], 4),
                              "s_per_step": round((time.perf_counter() - t0) / step, 3)}), flush=True)
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="files or folders the trainer's local backend reads (.jsonl[.gz], .txt, .py, ...)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--chars", type=int, default=6_000_000, help="characters of text to read")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--muon-lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, nargs="+", default=[1337],
                   help="one run of every arm per seed: other initial weights, other batches")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: bf16 weights and the Triton kernels (the FP8 arm needs an FP8 GPU)")
    p.add_argument("--arms", nargs="+", default=["exact", "exact_order", "fp8"],
                   choices=["exact", "exact_order", "fp8", "fp8_grad_w"])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    texts = read_texts(args.data, args.text_field, args.chars)
    stream = token_stream(texts, args.vocab_size)
    split = int(0.95 * len(stream))
    print(json.dumps({"texts": len(texts), "tokens": len(stream), "vocab": args.vocab_size, "preset": args.preset,
                      "tokens_per_step": args.batch_size * args.seq_len, "steps": args.steps,
                      "torch": torch.__version__}), flush=True)
    # One held-out set for every seed, so that the seeds' exact arms can be compared with each other too.
    heldout = batches(stream[split:], args.eval_batches, args.batch_size, args.seq_len, args.seed[0] + 1)
    runs = [{"seed": seed, "curves": run_seed(seed, args, stream[:split], heldout)} for seed in args.seed]
    for run in runs:
        print_table(run["seed"], run["curves"], args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs},
                                        indent=1))


def run_seed(seed: int, args: argparse.Namespace, train_stream: torch.Tensor, heldout: list) -> dict:
    """Every arm from the same ``seed``: its initial weights and training batches."""
    train_batches = batches(train_stream, args.steps, args.batch_size, args.seq_len, seed)
    torch.manual_seed(seed)
    cfg = from_preset(args.preset, vocab_size=args.vocab_size, max_seq_len=args.seq_len)
    init = {k: v.clone() for k, v in SigmaLM(cfg).state_dict().items()}
    curves = {}
    for arm in args.arms:
        torch.manual_seed(seed)
        curves[arm] = train(arm, seed, args, cfg, init, train_batches, heldout)
    return curves


def print_table(seed: int, curves: dict, args: argparse.Namespace) -> None:
    print(f"\nseed {seed}: held-out loss ({args.eval_batches} x {args.batch_size} x {args.seq_len} tokens)")
    base = "exact" if "exact" in curves else args.arms[0]  # each other arm's difference is taken from it
    others = [arm for arm in args.arms if arm != base]
    print(f"{'step':>6} " + " ".join(f"{arm:>12}" for arm in args.arms)
          + "".join(f" {arm + '-' + base:>18}" for arm in others))
    for i, (step, _) in enumerate(curves[args.arms[0]]):
        row = [curves[arm][i][1] for arm in args.arms]
        diffs = [(curves[arm][i][1] - curves[base][i][1]) / curves[base][i][1] for arm in others]
        print(f"{step:6d} " + " ".join(f"{v:12.4f}" for v in row) + "".join(f" {d:+18.2%}" for d in diffs))


if __name__ == "__main__":
    main()
