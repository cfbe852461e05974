"""The patch's SwiGLU kernels against the reference on the CPU, under Triton's interpreter.

With swiglu_epilogue_fusion.patch applied, from the repo root:
    PYTHONPATH=. python3 docs/benchmarks/2026-11-27_issue7_session14/interpreter_check.py
Prints, per shape and dtype, the relative error of y, dx, dWg, dWu and dWd against the reference
(``cpu_interpreter_check.txt`` beside this file is its output).
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from model.kernels import swiglu  # noqa: E402

torch.manual_seed(0)
for M, D, F, dtype in [(40, 32, 48, torch.float32), (33, 64, 40, torch.float32), (20, 32, 32, torch.bfloat16)]:
    x = torch.randn(M, D, dtype=dtype).requires_grad_()
    weights = [(torch.randn(shape) / shape[1] ** 0.5).to(dtype).requires_grad_() for shape in ((F, D), (F, D), (D, F))]
    dy = torch.randn(M, D).to(dtype)
    got = swiglu.triton_impl(x, *weights)
    got = (got, *torch.autograd.grad(got, (x, *weights), dy))
    want = swiglu.reference(x, *weights)
    want = (want, *torch.autograd.grad(want, (x, *weights), dy))
    errors = {name: ((a.double() - b.double()).norm() / b.double().norm()).item()
              for name, a, b in zip(("y", "dx", "dWg", "dWu", "dWd"), got, want, strict=True)}
    print(f"M={M} D={D} F={F} {dtype}:", {k: f"{v:.2e}" for k, v in errors.items()})
