"""FlashAttention 4 (``--flash-attention``, model/kernels/flash_attention.py) on the CPU: its selection, its
wiring into the model, its compile-time shapes, and that the lock's flash-attn-4 imports here. The kernels
themselves need a Hopper GPU (tests/test_gpu_flash_attention.py runs them against the reference)."""

from __future__ import annotations

import dataclasses
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
from model.decoder import SigmaLM, causal_attention_reference

REPO = Path(__file__).resolve().parent.parent


def tiny_model(**changes) -> SigmaLM:
    torch.manual_seed(0)
    return SigmaLM(dataclasses.replace(from_preset("tiny", vocab_size=256, max_seq_len=32), **changes))


def test_reference_is_causal_sdpa_with_shared_kv_heads() -> None:
    """(B, T, heads, Hd) in and out; each K/V head serves n_head / n_kv_head query heads, as repeat_kv would."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 16, 4, 8), torch.randn(2, 16, 2, 8), torch.randn(2, 16, 2, 8)
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.repeat_interleave(2, 2).transpose(1, 2),
                                          v.repeat_interleave(2, 2).transpose(1, 2), is_causal=True)
    torch.testing.assert_close(causal_attention_reference(q, k, v), want.transpose(1, 2))


def test_an_attention_kernel_takes_every_block_and_only_training_steps(monkeypatch) -> None:
    """``fa4_attention`` stands in for the op with the reference, so the model's loss and gradients are unchanged
    only if every block passes its own q, k, v in the kernel's layout. Without grad (evaluation, sampling) the
    reference runs and the op is not called."""
    from model.kernels import flash_attention

    calls = []

    def op(q, k, v):
        calls.append((q.shape, k.shape, v.shape))
        return causal_attention_reference(q, k, v), None

    monkeypatch.setattr(flash_attention, "_fa4_forward", op)
    model = tiny_model()
    tokens = torch.randint(0, 256, (2, 16))
    want = model(tokens, tokens)
    want.backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.use_kernels(attention=flash_attention.fa4_attention)
    got = model(tokens, tokens)
    got.backward()
    cfg = model.cfg
    assert calls == [((2, 16, cfg.n_head, cfg.head_dim), (2, 16, cfg.n_kv_head, cfg.head_dim),
                      (2, 16, cfg.n_kv_head, cfg.head_dim))] * cfg.n_layer
    torch.testing.assert_close(got, want)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want_grads[name], msg=name)
    with torch.no_grad():
        model(tokens, tokens)
    assert len(calls) == cfg.n_layer


def test_the_ops_fake_shapes_let_compile_plan_around_them() -> None:
    """Under fake tensors (what torch.compile traces with) the forward gives the output and a (B, H, T) fp32
    log-sum-exp, and the backward gradients shaped like q, k, v, all contiguous: the layouts the real kernels
    return (the op makes its inputs contiguous first)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from model.kernels import flash_attention

    with FakeTensorMode():
        q = torch.empty(2, 8, 64, 128, dtype=torch.bfloat16).transpose(1, 2)  # (B, T, H, Hd), not contiguous
        k = v = torch.empty(2, 64, 4, 128, dtype=torch.bfloat16)
        out, lse = flash_attention._fa4_forward(q, k, v)
        dq, dk, dv = flash_attention._fa4_backward(out, q, k, v, out, lse)
    assert out.shape == q.shape and out.dtype == torch.bfloat16 and out.is_contiguous()
    assert lse.shape == (2, 8, 64) and lse.dtype == torch.float32
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    assert all(t.is_contiguous() for t in (dq, dk, dv))


def test_flash_attention_modes_on_the_cpu() -> None:
    model = tiny_model()
    assert kernels.flash_attention_wanted("off", model) == (False, None)
    assert kernels.flash_attention_wanted("auto", model) == (False, None)  # quietly off: the CPU is ordinary
    with pytest.raises(RuntimeError, match="this run is on cpu. Use --flash-attention off"):
        kernels.flash_attention_wanted("on", model)
    with pytest.raises(ValueError, match="--flash-attention must be one of"):
        kernels.flash_attention_wanted("maybe", model)
    kernels.apply_to_model(model, kernels.resolve("auto", torch.device("cpu")), flash_attention=False)
    assert all(block.self_attn.attend is None for block in model.layers)


class OnTheGpu(torch.nn.Module):
    """A model whose parameters claim to be on a CUDA GPU, for the selection logic (no GPU here)."""
    cfg = types.SimpleNamespace(n_head=6, n_kv_head=6, head_dim=128)

    def parameters(self, recurse: bool = True):
        yield types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16)


def test_a_flash_attention_that_fails_where_auto_would_run_it_is_reported_and_on_stops(tmp_path, monkeypatch) -> None:
    """On an H100-class GPU ``auto`` runs FlashAttention 4, so one that does not import or fails its start-up
    check is reported (and the run goes on with SDPA), while ``on`` stops naming it. The GPU queries answer for
    an H100; the cache folder is the trainer's, set before the check, which runs at the training length."""
    from model.kernels import flash_attention

    folders, checked, said = [], [], []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(flash_attention, "use_cache_dir", lambda root, device: folders.append(root))
    for failing, message in (("import_problem", "flash_attn does not import"),
                             ("startup_check", "off from the reference")):
        monkeypatch.setattr(flash_attention, "import_problem", lambda: None)
        monkeypatch.setattr(flash_attention, "startup_check",
                            lambda device, shape, dtype: checked.append((shape, dtype)))
        assert kernels.flash_attention_wanted("auto", OnTheGpu(), tmp_path, seq_len=2048,
                                              announce=said.append) == (True, None)
        monkeypatch.setattr(flash_attention, failing, lambda *args, said=message, **kw: said)
        assert kernels.flash_attention_wanted("auto", OnTheGpu(), tmp_path) == (
            False, f"--flash-attention auto: left off, {message}")
        with pytest.raises(RuntimeError, match=f"--flash-attention on: {message}"):
            kernels.flash_attention_wanted("on", OnTheGpu(), tmp_path)
    assert folders == [tmp_path] * 6
    assert checked[0] == ((2048, 6, 6, 128), torch.bfloat16)
    assert "2048 tokens" in said[0]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # not measured there
    assert kernels.flash_attention_wanted("auto", OnTheGpu(), tmp_path) == (False, None)


def test_problem_names_what_the_kernels_cannot_take(monkeypatch) -> None:
    from model.kernels.flash_attention import problem

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")

    def model(dtype=torch.bfloat16, head_dim=128):
        m = OnTheGpu()
        m.cfg = types.SimpleNamespace(n_head=6, n_kv_head=6, head_dim=head_dim)
        m.parameters = lambda recurse=True: iter([types.SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype)])
        return m

    assert problem(model()) is None
    assert "16-bit attention" in problem(model(dtype=torch.float32))
    assert "multiple of 8 from 8 to 256; this model's is 12" in problem(model(head_dim=12))
    assert "multiple of 8 from 8 to 256; this model's is 512" in problem(model(head_dim=512))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "compute capability 9.0 or later" in problem(model())


def test_use_cache_dir_turns_the_disk_cache_on_in_a_folder_per_gpu_model_unless_the_user_chose_one(
        tmp_path, monkeypatch) -> None:
    from model.kernels.flash_attention import CACHE_DIR_ENV, CACHE_ENABLED_ENV, use_cache_dir

    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv(CACHE_ENABLED_ENV, raising=False)
    loaded = types.SimpleNamespace(CUTE_DSL_CACHE_ENABLED=False, CUTE_DSL_CACHE_DIR=None)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.cache_utils", loaded)  # read at its import: set on it too
    path = use_cache_dir(tmp_path / "fa", torch.device("cpu"))
    assert path == tmp_path / "fa" / "cpu" and path.is_dir()
    assert os.environ[CACHE_ENABLED_ENV] == "1" and os.environ[CACHE_DIR_ENV] == str(path)
    assert loaded.CUTE_DSL_CACHE_ENABLED and str(path) == loaded.CUTE_DSL_CACHE_DIR
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))  # the user's own folder wins
    assert use_cache_dir(tmp_path / "fa", torch.device("cpu")) == tmp_path / "mine"
    monkeypatch.delenv(CACHE_DIR_ENV)
    assert use_cache_dir(None, torch.device("cpu")) is None  # no checkpoint folder: its own default


def test_a_missing_flash_attention_is_named_with_the_fix(monkeypatch) -> None:
    from model.kernels.flash_attention import import_problem

    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", None)  # makes the import raise ImportError
    problem = import_problem()
    assert problem is not None and "flash-attn-4" in problem and "--flash-attention off" in problem


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                    reason="the lock installs flash-attn-4 on Linux x86-64 only")
def test_flash_attention_from_the_lock_imports() -> None:
    """In a process of its own: importing it loads the CuTe-DSL runtime, which the rest of the suite need not."""
    r = subprocess.run([sys.executable, "-c", "import flash_attn.cute.interface as i; "
                        "print(callable(i._flash_attn_fwd) and callable(i._flash_attn_bwd))"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr[-2000:]


def test_only_the_cute_dsl_aux_data_warning_is_silenced() -> None:
    """In a process of its own, as a run imports the kernel module (pytest resets the warning filters around each
    test, so one installed by an earlier test's import is gone here): the CuTe DSL's warning about
    FlashAttention's ``aux_data`` argument, as an H200 run printed it, is not shown; another UserWarning is."""
    aux = ("Argument aux_data (position 17) cannot be converted to a JitArgument for function "
           "'cutlass___call___flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90_object_at__Tensorgmem'. Its type "
           "`<class 'flash_attn.cute.utils.AuxData'>` is not supported.")
    other = "Argument other (position 3) cannot be converted to a JitArgument"
    code = ("import sys, warnings\n"
            "import model.kernels.flash_attention\n"
            "for message in sys.argv[1:]:\n"
            "    warnings.warn(message, UserWarning)\n")
    r = subprocess.run([sys.executable, "-W", "default", "-c", code, aux, other], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert other in r.stderr and "aux_data" not in r.stderr, r.stderr[-2000:]
