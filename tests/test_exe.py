"""What only the frozen binary must prove (runs when ECO_TRAIN_BIN points at it, e.g. in .ci/run).

The CLI and training tests (test_cli.py, test_train.py) run against the binary through the same
switch; this file adds what the source entry point gets for free from a Python installation:
running Python code without a system Python (sandbox, torch.compile workers, multiprocessing),
the stdlib that sandboxed code imports, source files that Triton/torch.compile read, Python's
headers for Triton's launcher build, and the post-training stack (TRL, PEFT, ...) being importable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from entry import BINARY

pytestmark = pytest.mark.skipif(not BINARY, reason="set ECO_TRAIN_BIN=dist/eco_train/eco_train to test the binary")

REPO = Path(__file__).resolve().parent.parent
SPEC_STDLIB = ("math", "itertools", "collections", "functools", "heapq", "bisect", "re", "json", "string",
               "random", "statistics", "fractions", "decimal", "typing", "dataclasses", "unittest", "copy",
               "operator", "datetime", "textwrap", "resource", "signal")


def bin_path() -> Path:
    return Path(BINARY).resolve()


def bundle_dir() -> Path:
    """Where the one-folder build keeps its files (PyInstaller >= 6: <dist>/eco_train/_internal)."""
    return bin_path().parent / "_internal"


def run_bin(*args: str, cwd: Path | None = None, stdin: str | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the binary with no Python reachable on PATH, as on a user's machine."""
    base = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run([str(bin_path()), *args], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=timeout, env={**base, **(env or {})})


# ------------------------------------------------------------------------------------------------
# The binary as a Python interpreter (pyinstaller_hooks/rthooks/pyi_rth_eco_train_python.py)


def test_python_mode_c_argv_and_exit_codes(tmp_path):
    r = run_bin("-I", "-c", "import sys; print('hi', sys.argv)", "x", "y", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "hi ['-c', 'x', 'y']\n", r.stderr
    assert run_bin("-c", "raise SystemExit(3)").returncode == 3
    r = run_bin("-c", "1/0")
    assert r.returncode == 1 and "ZeroDivisionError" in r.stderr
    r = run_bin("--run-python", "-c", "print(6*7)")
    assert r.stdout == "42\n"
    assert run_bin("-Ic", "print('combined')").stdout == "combined\n"


def test_python_mode_program_that_closes_its_streams_exits_like_cpython(tmp_path):
    """A closed stdout or stderr is no error at exit (torch.compile's workers close stdout on shutdown)."""
    r = run_bin("-c", "import sys; print('bye'); sys.stdout.close()")
    assert (r.returncode, r.stdout, r.stderr) == (0, "bye\n", "")
    script = tmp_path / "closes.py"
    script.write_text("import sys\nsys.stderr.close()\nsys.stdout.close()\n")
    r = run_bin(str(script))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = run_bin("-c", "import sys; sys.stdout.close(); 1/0")
    assert r.returncode == 1 and "ZeroDivisionError" in r.stderr and "closed file" not in r.stderr


def test_python_mode_script_module_and_stdin(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text("import sys, helper\nprint(helper.X, sys.argv[1:])\n")
    (tmp_path / "helper.py").write_text("X = 5\nif __name__ == '__main__':\n    import sys; print('main', sys.argv[1:])\n")
    r = run_bin(str(script), "--flag", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "5 ['--flag']\n", r.stderr
    r = run_bin("-m", "helper", "z", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "main ['z']\n", r.stderr
    r = run_bin("-", stdin="print('from stdin')")
    assert r.stdout == "from stdin\n"


def test_eco_train_flags_still_reach_the_trainer():
    r = run_bin("-h")
    assert r.returncode == 0 and "--model-preset" in r.stdout  # -h stays argparse's help


def test_compile_on_the_cpu_is_refused_at_start_with_the_fix(tmp_path):
    r = run_bin("--device", "cpu", "--compile", "on", "--model-preset", "tiny", "--data-backend", "seed",
                "--steps", "1", "--output-dir", str(tmp_path / "run"), "--checkpoint-dir", str(tmp_path / "ck"))
    assert r.returncode == 1, r.stderr[-2000:]
    assert "does not work on the CPU in the frozen binary" in r.stderr and "--compile auto or off" in r.stderr


def test_sandbox_stdlib_is_in_the_bundle():
    code = f"import importlib\nfor m in {SPEC_STDLIB!r}: importlib.import_module(m)\nprint('ok')"
    r = run_bin("-I", "-c", code)
    assert r.stdout == "ok\n", r.stderr


def test_multiprocessing_spawn_from_the_binary(tmp_path):
    """freeze_support: spawned workers re-enter the binary and must not start a training run."""
    script = tmp_path / "mp.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing as mp
        if __name__ == "__main__":
            with mp.get_context("spawn").Pool(2) as pool:
                print(sum(pool.map(abs, [-1, -2, 3])))
    """))
    r = run_bin(str(script), cwd=tmp_path, timeout=180)
    assert r.returncode == 0 and r.stdout.strip() == "6", r.stdout + r.stderr


# ------------------------------------------------------------------------------------------------
# What Triton and torch.compile read at run time


def test_sources_that_triton_and_inductor_read_are_bundled():
    b = bundle_dir()
    for rel in ("training/trainer.py", "training/optim/newton_schulz.py", "model/decoder.py",
                "model/kernels/newton_schulz.py", "triton/language/core.py",
                "torch/_inductor/compile_worker/__main__.py", "trl/chat_templates"):
        assert (b / rel).exists(), f"{rel} missing from the bundle"
    assert list((b / "trl" / "chat_templates").glob("*.jinja")), "trl's chat templates are data files it needs"


def test_python_headers_where_sysconfig_looks():
    """Triton compiles its CUDA launcher against Python.h from sysconfig's include path."""
    r = run_bin("-c", "import sysconfig; print(sysconfig.get_paths()['include'])")
    include = Path(r.stdout.strip())
    assert (include / "Python.h").is_file() and (include / "pyconfig.h").is_file(), r.stdout + r.stderr
    assert bundle_dir() in include.parents


def test_triton_jit_reads_source_in_the_binary(tmp_path):
    """A @triton.jit kernel defined in a file runs (interpreter mode: no GPU here)."""
    script = tmp_path / "kernel.py"
    script.write_text(textwrap.dedent("""
        import torch, triton, triton.language as tl

        @triton.jit
        def add_one(x_ptr, n, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            mask = offs < n
            tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1, mask=mask)

        x = torch.arange(8, dtype=torch.float32)
        add_one[(1,)](x, 8, BLOCK=8)
        print(x.tolist())
    """))
    r = run_bin(str(script), cwd=tmp_path, env={"TRITON_INTERPRET": "1"}, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == str([float(i + 1) for i in range(8)]), r.stdout + r.stderr


@pytest.mark.slow
def test_post_training_stack_imports_in_the_binary():
    """GRPO/Hydra need TRL, PEFT and accelerate: their lazy modules must resolve in the binary."""
    code = ("import os; os.environ.setdefault('UNSLOTH_DISABLE_CPU_FALLBACK', '0')\n"
            "from trl import GRPOConfig, GRPOTrainer, DPOConfig, DPOTrainer\n"
            "from peft import LoraConfig, get_peft_model\n"
            "from accelerate import Accelerator\n"
            "import transformers; from transformers import Qwen3Config, Qwen3ForCausalLM\n"
            "print('ok', transformers.__version__)")
    r = run_bin("-c", code, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok "), r.stdout[-2000:] + r.stderr[-4000:]


def test_binary_is_not_the_test_interpreter():
    assert bin_path() != Path(sys.executable).resolve()
