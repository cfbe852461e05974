"""The fused SwiGLU MLP (``--fused-mlp``, model/kernels/swiglu_mlp.py) on the CPU: its selection, its wiring
into the model, and that quack from the lock imports here. quack's GEMMs themselves need a Hopper GPU
(tests/test_gpu_fused_mlp.py runs them against the reference)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import kernels
from model.config import from_preset
from model.decoder import SigmaLM, swiglu_mlp_reference

REPO = Path(__file__).resolve().parent.parent


def tiny_model(**changes) -> SigmaLM:
    torch.manual_seed(0)
    return SigmaLM(dataclasses.replace(from_preset("tiny", vocab_size=256, max_seq_len=32), **changes))


def test_reference_is_the_module_mlp() -> None:
    mlp = tiny_model().layers[0].mlp
    x = torch.randn(2, 8, mlp.gate_proj.in_features)
    torch.testing.assert_close(swiglu_mlp_reference(x, mlp.gate_proj.weight, mlp.up_proj.weight,
                                                    mlp.down_proj.weight), mlp(x))


def test_quack_mlp_hands_each_mlp_its_weights_gate_rows_first(monkeypatch) -> None:
    """quack's ``mlp_func`` is replaced by the SwiGLU it computes in its concat layout (gate rows, then up
    rows), so the model's loss and gradients are unchanged only if every MLP passes its own weights in
    that order. Without grad (evaluation, sampling) the reference runs and quack is not called."""
    calls = []

    def mlp_func(x, w1, w2, activation, tuned, concat_layout):
        calls.append((activation, tuned, concat_layout))
        gate, up = w1.chunk(2)
        return F.linear(F.silu(x @ gate.T) * (x @ up.T), w2)

    monkeypatch.setitem(sys.modules, "quack", types.ModuleType("quack"))
    monkeypatch.setitem(sys.modules, "quack.mlp", types.SimpleNamespace(mlp_func=mlp_func))
    from model.kernels.swiglu_mlp import quack_mlp

    model = tiny_model()
    tokens = torch.randint(0, 256, (2, 16))
    want = model(tokens, tokens)
    want.backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.use_kernels(swiglu_mlp=quack_mlp(tuned=True))
    got = model(tokens, tokens)
    got.backward()
    assert calls == [("swiglu", True, True)] * model.cfg.n_layer
    torch.testing.assert_close(got, want)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want_grads[name], msg=name)
    with torch.no_grad():
        model(tokens, tokens)
    assert len(calls) == model.cfg.n_layer


def test_bitnet_mlps_are_never_fused() -> None:
    with pytest.raises(ValueError, match="BitNet"):
        tiny_model(bitnet=True).use_kernels(swiglu_mlp=swiglu_mlp_reference)
    assert kernels.fused_mlp_wanted("auto", tiny_model(bitnet=True)) == (False, None)


def test_fused_mlp_modes_on_the_cpu() -> None:
    model = tiny_model()
    assert kernels.fused_mlp_wanted("off", model) == (False, None)
    assert kernels.fused_mlp_wanted("auto", model) == (False, None)  # quietly off: the CPU is ordinary
    with pytest.raises(RuntimeError, match="this run is on cpu. Use --fused-mlp off"):
        kernels.fused_mlp_wanted("on", model)
    with pytest.raises(ValueError, match="--fused-mlp must be one of"):
        kernels.fused_mlp_wanted("maybe", model)
    kernels.apply_to_model(model, kernels.resolve("auto", torch.device("cpu")), fused_mlp=False)
    assert all(block.mlp.fused is None for block in model.layers)


def test_a_quack_that_fails_where_auto_would_run_it_is_reported_and_on_stops(tmp_path, monkeypatch) -> None:
    """On an H100-class GPU with a 124m-wide model, ``auto`` runs quack, so a quack that does not import or fails
    its start-up check is reported (and the run goes on unfused), while ``on`` stops naming it. No GPU here: the
    model stands in with CUDA-placed parameters and the GPU queries answer for an H100; the cache folder is
    the trainer's, set before the check."""
    from model.kernels import swiglu_mlp

    class OnTheGpu(torch.nn.Module):
        cfg = types.SimpleNamespace(d_model=768, d_ff=2048)

        def parameters(self, recurse: bool = True):
            yield types.SimpleNamespace(device=torch.device("cuda", 0))

    folders = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(swiglu_mlp, "problem", lambda model: None)
    monkeypatch.setattr(swiglu_mlp, "use_cache_dir", lambda root, device: folders.append(root))
    for failing, message in (("import_problem", "quack does not import"), ("startup_check", "off from the reference")):
        monkeypatch.setattr(swiglu_mlp, "import_problem", lambda: None)
        monkeypatch.setattr(swiglu_mlp, "startup_check", lambda device, shape=None: None)
        assert kernels.fused_mlp_wanted("auto", OnTheGpu(), tmp_path) == (True, None)
        monkeypatch.setattr(swiglu_mlp, failing, lambda *device, said=message, shape=None: said)
        assert kernels.fused_mlp_wanted("auto", OnTheGpu(), tmp_path) == (False, f"--fused-mlp auto: left off, {message}")
        with pytest.raises(RuntimeError, match=f"--fused-mlp on: {message}"):
            kernels.fused_mlp_wanted("on", OnTheGpu(), tmp_path)
    assert folders == [tmp_path] * 6
    # given the training micro-batch, the check runs that shape's GEMMs (which training then reuses)
    checked, said = [], []
    monkeypatch.setattr(swiglu_mlp, "startup_check", lambda device, shape=None: checked.append(shape))
    monkeypatch.setattr(swiglu_mlp, "gpu_folder_name", lambda device: "NVIDIA_H100_80GB_HBM3")
    assert kernels.fused_mlp_wanted("auto", OnTheGpu(), tmp_path, micro_batch=(32, 2048),
                                    announce=said.append) == (True, None)
    assert kernels.fused_mlp_wanted("auto", OnTheGpu(), tmp_path) == (True, None)
    assert checked == [(32, 2048, 768, 2048), None]
    # the console hears of it first: at a first start the check compiles, or tunes, for minutes
    assert len(said) == 1 and "32 x 2048 tokens" in said[0] and "NVIDIA_H100_80GB_HBM3" in said[0], said


def test_auto_wants_an_h100_class_gpu_and_a_124m_wide_model() -> None:
    from model.kernels.swiglu_mlp import auto_applies

    assert auto_applies((9, 0), 768) and auto_applies((9, 0), 1024)
    assert not auto_applies((9, 0), 128)  # the tiny preset: minutes of tuning for nearly nothing
    assert not auto_applies((8, 0), 768) and not auto_applies((10, 0), 2048)  # not measured there


def test_use_cache_dir_points_quack_at_a_folder_per_gpu_model_unless_the_user_chose_one(tmp_path, monkeypatch) -> None:
    from model.kernels.swiglu_mlp import use_cache_dir

    monkeypatch.delenv("QUACK_CACHE_DIR", raising=False)
    monkeypatch.delenv("QUACK_CACHE_AUTOTUNING", raising=False)
    path = use_cache_dir(tmp_path / "quack", torch.device("cpu"))
    assert path == tmp_path / "quack" / "cpu" and path.is_dir()
    assert os.environ["QUACK_CACHE_DIR"] == str(path) and os.environ["QUACK_CACHE_AUTOTUNING"] == "1"
    monkeypatch.setenv("QUACK_CACHE_DIR", str(tmp_path / "mine"))  # the user's own folder wins
    assert use_cache_dir(tmp_path / "quack", torch.device("cpu")) == tmp_path / "mine"


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                    reason="the lock installs quack on Linux x86-64 only")
def test_quack_from_the_lock_imports_and_fingerprints_its_epilogues() -> None:
    """The installed quack and CuTe-DSL compiler load without a GPU (a subprocess: the import is heavy).

    The epilogue library fingerprints quack's own functions at import; it fails where quack is not
    under a ``site-packages`` folder (the frozen binary's layout has to keep that: eco_train.spec)."""
    code = ("import quack, quack.mlp, quack.epilogue.library, cutlass.cute; "
            "from quack.gemm_runtime import identity; "
            "assert identity._is_extern_function(cutlass.cute.jit); print('quack', quack.__version__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("quack 0.6.5")


SEED_CHECK = r"""
import json, pathlib, shutil, sys
from quack.epilogue import library
from model.kernels.swiglu_mlp import MLP_EPILOGUES, TUNED_DIR, seed_tuned_configs

tmp = pathlib.Path(sys.argv[1])
mods = {name: getattr(library, builder)("swiglu", **kw) for name, (builder, kw) in MLP_EPILOGUES.items()}
reports = {}
for gpu in sorted(p.name for p in TUNED_DIR.iterdir() if p.is_dir()):
    shipped = sorted((TUNED_DIR / gpu).glob("*/*.autotune.json"))
    cache = tmp / gpu / "cache"
    plain = next(f for f in shipped if f.name == "gemm_tuned.autotune.json")
    kept = cache / plain.parent.name / plain.name  # a result tuned here before: seeding must keep it
    kept.parent.mkdir(parents=True)
    kept.write_text("tuned here")
    report = {"shipped": len(shipped), "first": seed_tuned_configs(cache, gpu), "again": seed_tuned_configs(cache, gpu)}
    report["kept"] = kept.read_text()
    seeded = sorted(cache.glob("*/*.autotune.json"))
    report["plain_folders_same"] = (sorted(f.parent.name for f in seeded if f.name == "gemm_tuned.autotune.json")
                                    == sorted(f.parent.name for f in shipped if f.name == "gemm_tuned.autotune.json"))
    report["mod_names"] = sorted({f.name for f in seeded if f.name.startswith("mod_")})
    report["local_names"] = sorted(f"mod_{m._ident}.autotune.json" for m in mods.values())
    report["keys_name_local_digests"] = all(
        any(m.semantic_digest in json.loads(f.read_text())["key"] for m in mods.values())
        for f in seeded if f.name.startswith("mod_"))
    # a shipped file that does not hash back to its folder: nothing is seeded
    broken = tmp / gpu / "broken"
    shutil.copytree(TUNED_DIR / gpu, broken / gpu)
    moved = broken / gpu / shipped[-1].parent.name
    moved.rename(moved.with_name("NOT" + moved.name))
    report["broken"] = seed_tuned_configs(tmp / gpu / "cache2", gpu, source=broken)
    report["broken_wrote"] = len(list((tmp / gpu / "cache2").glob("*/*"))) if (tmp / gpu / "cache2").exists() else 0
    reports[gpu] = report
print(json.dumps(reports))
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                    reason="the lock installs quack on Linux x86-64 only")
def test_shipped_tuned_configs_refile_into_a_quack_cache_for_this_python(tmp_path) -> None:
    """Each GPU model's tuned configs, collected under the GPU machine's Python, land where this quack looks.

    Every shipped file hashes back to its own folder with the config order from quack's config space (else
    nothing is seeded, checked by moving one); the plain GEMMs' files keep their folders; the epilogue GEMMs'
    files are renamed and rekeyed with this Python's digests of the MLP's two epilogues; a result already in
    the cache is kept; a second seeding writes nothing (a subprocess: quack's import is heavy)."""
    r = subprocess.run([sys.executable, "-c", SEED_CHECK, str(tmp_path)], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    reports = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"NVIDIA_H100_80GB_HBM3", "NVIDIA_H200"} <= reports.keys()
    for gpu, report in reports.items():
        assert report["shipped"] > 0, gpu
        assert report["kept"] == "tuned here", gpu
        assert report["first"] == report["shipped"] - 1 and report["again"] == 0, (gpu, report)
        assert report["plain_folders_same"], gpu
        assert report["mod_names"] == report["local_names"] and report["keys_name_local_digests"], (gpu, report)
        assert report["broken"] == 0 and report["broken_wrote"] == 0, (gpu, report)


def test_seeding_without_quack_or_from_a_damaged_file_seeds_nothing_and_does_not_raise(tmp_path, monkeypatch) -> None:
    from model.kernels.swiglu_mlp import TUNED_DIR, seed_tuned_configs, tuned_shapes

    gpu = "NVIDIA_H100_80GB_HBM3"
    assert seed_tuned_configs(tmp_path / "c0", "NVIDIA_A100-SXM4-80GB") == 0  # nothing shipped for it
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "quack", None)  # `import quack` raises ImportError
        assert seed_tuned_configs(tmp_path / "c1", gpu) == 0
    damaged = tmp_path / "shipped" / gpu / "KEY"
    damaged.mkdir(parents=True)
    (damaged / "gemm_tuned.autotune.json").write_text('{"key": "(True,", "configs_')  # cut short
    assert seed_tuned_configs(tmp_path / "c2", gpu, source=tmp_path / "shipped") == 0
    assert not (tmp_path / "c1").exists() and not (tmp_path / "c2").exists()
    assert TUNED_DIR.is_dir()
    for folder in (p for p in TUNED_DIR.iterdir() if p.is_dir()):  # each lists the shapes it holds configs for
        assert tuned_shapes(folder.name), folder.name


def test_a_missing_quack_is_named_with_the_fix(monkeypatch) -> None:
    from model.kernels.swiglu_mlp import import_problem

    monkeypatch.setitem(sys.modules, "quack.mlp", None)  # makes `import quack.mlp` raise ImportError
    problem = import_problem()
    assert problem is not None and "quack-kernels" in problem and "--fused-mlp off" in problem
