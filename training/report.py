"""`eco_train report RUN_DIR`: PNG plots and a one-page HTML summary of a run folder.

Reads metrics.jsonl line by line (a crashed run's last line may be cut: it is skipped and counted),
config.json and errors/crash_step_*.json, and writes into RUN_DIR/report/ (or --out):
loss.png, throughput.png, mfu.png, phases.png, gpu_memory.png, features.png and report.html.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from training.metrics import STAGES  # noqa: E402


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """(records, number of unparseable lines)."""
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return records, bad


def _series(records: list[dict], x: str, y: str) -> tuple[list, list]:
    pts = [(r[x], r[y]) for r in records if r.get(y) is not None and r.get(x) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _figure(path: Path, title: str, xlabel: str, ylabel: str, lines: list[tuple[str, list, list]],
            empty_note: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    drawn = False
    for label, xs, ys in lines:
        if xs:
            ax.plot(xs, ys, label=label, linewidth=1.5)
            drawn = True
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, empty_note, ha="center", va="center", transform=ax.transAxes)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def bottleneck_verdict(steps: list[dict]) -> str:
    """The stage most often named the bottleneck over the last half of the run, with its mean share."""
    recent = [r for r in steps[len(steps) // 2:] if r.get("perf_bottleneck_stage")]
    if not recent:
        return "unknown (no per-stage timings: the run used --metrics-level minimal or logged no steps)"
    name, _ = Counter(r["perf_bottleneck_stage"] for r in recent).most_common(1)[0]
    shares = [r["perf_bottleneck_share"] for r in recent if r["perf_bottleneck_stage"] == name]
    return f"{name} ({sum(shares) / len(shares):.0%} of step time, named in {len(shares)} of {len(recent)} log records)"


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write the plots and report.html; returns the HTML path."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    records, bad_lines = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in records if r["event"] == "step"]
    evals = [r for r in records if r["event"] == "eval"]
    startup = next((r for r in reversed(records) if r["event"] == "startup"), {})

    _figure(out / "loss.png", "Loss", "tokens", "loss",
            [("train loss", *_series(steps, "tokens", "loss")), ("train loss EMA", *_series(steps, "tokens", "loss_ema")),
             ("held-out loss", *_series(evals, "tokens", "heldout_loss"))], "no loss recorded")
    _figure(out / "throughput.png", "Throughput", "step", "tokens/s",
            [("effective", *_series(steps, "step", "effective_tokens_per_s")),
             ("core (compute only)", *_series(steps, "step", "core_tokens_per_s"))], "no steps recorded")
    _figure(out / "mfu.png", "Model FLOPs utilisation", "step", "MFU",
            [("mfu", *_series(steps, "step", "mfu"))], "MFU is null: no GPU with a known bf16 peak")
    _figure(out / "gpu_memory.png", "GPU memory", "step", "GB",
            [("allocated", *_series(steps, "step", "gpu_mem_alloc_gb")),
             ("reserved", *_series(steps, "step", "gpu_mem_reserved_gb"))], "no GPU readings (CPU run)")

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    phase_steps = [r for r in steps if r.get("phase_data_s") is not None]
    if phase_steps:
        xs = [r["step"] for r in phase_steps]
        ax.stackplot(xs, *[[r.get(f"phase_{s}_s") or 0.0 for r in phase_steps] for s in STAGES], labels=STAGES)
        ax.legend(loc="upper left", fontsize=7, ncol=5)
    else:
        ax.text(0.5, 0.5, "no per-stage timings (--metrics-level minimal)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set(title="Where a step's time goes", xlabel="step", ylabel="seconds per step")
    fig.tight_layout()
    fig.savefig(out / "phases.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    last = steps[-1] if steps else {}
    calls = {k[len("feature_"):-len("_effective_calls")]: v for k, v in last.items()
             if k.startswith("feature_") and k.endswith("_effective_calls")}
    if calls:
        ax.barh(list(calls), list(calls.values()))
    else:
        ax.text(0.5, 0.5, "no feature counters", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="Feature effective calls (last log record)", xlabel="calls")
    fig.tight_layout()
    fig.savefig(out / "features.png")
    plt.close(fig)

    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    crashes = []
    for p in sorted((run_dir / "errors").glob("crash_step_*.json")):
        try:
            c = json.loads(p.read_text())
            crashes.append(f"{p.name}: step {c.get('step')}: {c.get('exception_type')}: {c.get('message')}")
        except (OSError, json.JSONDecodeError) as e:
            crashes.append(f"{p.name}: unreadable ({e})")
    end = next((r for r in reversed(records) if r["event"] == "end"), None)
    verdict = bottleneck_verdict(steps)

    def table(d: dict) -> str:
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v, default=str))}</td></tr>"
                       for k, v in d.items() if k not in ("event", "time"))
        return f"<table>{rows}</table>"

    summary = (f"finished: {end['step']} steps, held-out loss {end.get('heldout_loss_step0')} -> {end.get('heldout_loss')}"
               if end else f"not finished: last record is step {records[-1]['step'] if records else '-'}")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>eco_train report: {html.escape(str(run_dir))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} td{{padding:2px 8px;border-bottom:1px solid #ddd;
font-size:13px}} img{{width:540px}}</style></head><body>
<h1>eco_train run {html.escape(str(startup.get('run_id') or run_dir.name))}</h1>
<p><b>{html.escape(summary)}</b> ({len(records)} records{f", {bad_lines} unreadable line(s) skipped" if bad_lines else ""})</p>
<h2>Bottleneck</h2><p id="bottleneck">Bottleneck: {html.escape(verdict)}</p>
<h2>Crash reports</h2><p>{"<br>".join(html.escape(c) for c in crashes) or "none"}</p>
<h2>Plots</h2>
{"".join(f'<img src="{n}.png" alt="{n}">' for n in ("loss", "throughput", "mfu", "phases", "gpu_memory", "features"))}
<h2>Start-up</h2>{table(startup)}
<h2>Configuration</h2>{table(config.get("config", {}))}
<h2>Versions</h2>{table(config.get("versions", {}))}
</body></html>"""
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html"
