"""Hardware profile (SPEC §3 "bf16 profile"): one place that decides device, dtypes, TF32 and compile.

Compute stays on one device kind: CUDA when present, the CPU only when no GPU exists or
`--device cpu` is given, and then we say so loudly. No mixed CPU+GPU compute.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from training.console import say

# Dense bf16 tensor-core peaks (TFLOP/s) for MFU when the trainer has not measured one.
# Sources: NVIDIA datasheets (H100 SXM5 989, H100 PCIe 756, H200 989, A100 312, L4 121, RTX 4090 165).
_BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "4090": 165.0}


@dataclass(frozen=True)
class HardwareProfile:
    """What the run computes on. Built once by `resolve_profile` and passed down."""

    device: torch.device
    param_dtype: torch.dtype
    """dtype of the model parameters (bf16 on bf16-capable CUDA under the auto profile)."""
    c3o_state_dtype: torch.dtype
    """dtype of C3O's moments; bf16 is written with stochastic rounding."""
    ns_dtype: torch.dtype
    """dtype Muon's PyTorch Newton-Schulz computes in: bf16 on CUDA (tensor cores, as torch.optim.Muon);
    fp32 on the CPU, where most CPUs (no AVX512-BF16/AMX) emulate bf16 matmuls: 9x slower than fp32 at
    the tiny preset's shapes on an AVX2 EPYC, the optimizer then taking ~95% of a CPU step."""
    tf32: bool
    compile: bool
    device_name: str
    peak_bf16_tflops: float | None
    """dense bf16 peak of the card, for MFU; None on CPU or an unknown card."""

    def startup_fields(self) -> dict[str, object]:
        return {
            "device": self.device.type,
            "device_name": self.device_name,
            "dtype": str(self.param_dtype).removeprefix("torch."),
            "c3o_state_dtype": str(self.c3o_state_dtype).removeprefix("torch."),
            "ns_dtype": str(self.ns_dtype).removeprefix("torch."),
            "tf32": int(self.tf32),
            "compile": int(self.compile),
        }


def _peak_for(name: str) -> float | None:
    for key, tflops in _BF16_PEAK_TFLOPS.items():  # "H100 PCIe" is checked before "H100"
        if key in name:
            return tflops
    return None


def resolve_profile(*, device: str, profile: str, compile_mode: str, c3o_state_dtype: str) -> HardwareProfile:
    """Turn the hardware flags into a concrete profile and apply global switches (TF32)."""
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise RuntimeError("--device cuda was given but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                           "fix: check the driver with nvidia-smi, or use --device cpu")
    use_cuda = has_cuda and device != "cpu"
    if use_cuda:
        dev = torch.device("cuda", torch.cuda.current_device())
        name = torch.cuda.get_device_name(dev)
        bf16_ok = torch.cuda.is_bf16_supported()
    else:
        dev = torch.device("cpu")
        name = "cpu"
        bf16_ok = False
        why = "--device cpu was given" if device == "cpu" else "no CUDA GPU was found"
        say(f"WARNING: training on the CPU because {why}; this is for smoke runs only and is slow")

    if profile == "bf16" and not bf16_ok:
        raise RuntimeError(f"--hardware-profile bf16 needs a bf16-capable CUDA GPU, found {name}; "
                           "fix: use --hardware-profile auto or fp32")
    use_bf16 = profile == "bf16" or (profile == "auto" and bf16_ok)
    param_dtype = torch.bfloat16 if use_bf16 else torch.float32
    if c3o_state_dtype == "auto":
        state_dtype = param_dtype
    else:
        state_dtype = torch.bfloat16 if c3o_state_dtype == "bf16" else torch.float32
    tf32 = use_cuda
    if tf32:
        # fp32 matmuls (e.g. in an fp32 profile or the fp32 loss) run on tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    do_compile = compile_mode == "on" or (compile_mode == "auto" and use_cuda)
    if do_compile and not use_cuda and getattr(sys, "frozen", False):
        # Inductor's CPU backend compiles C++ against torch's headers, which the binary leaves out
        # (61 MB); with them copied in, Dynamo still stops at step 0, because its skip and inline rules
        # key on torch's absolute source paths and the frozen code objects carry bundle-relative ones.
        raise RuntimeError("--compile on does not work on the CPU in the frozen binary: torch.compile's CPU "
                           "backend needs torch's C++ headers, which the binary does not bundle; fix: use "
                           "--compile auto or off (the CPU runs uncompiled), or train from a source install "
                           "(README, \"The two commands\")")
    return HardwareProfile(
        device=dev,
        param_dtype=param_dtype,
        c3o_state_dtype=state_dtype,
        ns_dtype=torch.bfloat16 if use_cuda else torch.float32,
        tf32=tf32,
        compile=do_compile,
        device_name=name,
        peak_bf16_tflops=_peak_for(name) if use_cuda else None,
    )
