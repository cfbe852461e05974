"""Inputs for the e5m2 conversion tests, shared by the CPU (interpreter) and GPU test files.

No triton import here: the CPU tests set ``TRITON_INTERPRET=1`` after importing this, and triton must
first be imported after that.
"""

import torch


def e5m2_rounding_inputs(limit: float) -> tuple[torch.Tensor, int, int]:
    """``(x, n_finite, n_nan)``: fp32 values up to ``|limit|`` whose e5m2 rounding is easy to get wrong, then
    three NaNs, then zero padding to a power of two (one Triton block).

    The finite part holds every e5m2 value, the midpoints between neighbours (ties go to even) and the fp32
    values just either side of them, both signs, subnormals included. The NaNs are numpy's 0x7FC00000, the
    GPU's 0x7FFFFFFF (which a plain rounding carry would turn into -0) and a negative one.
    """
    finite = torch.arange(256, dtype=torch.uint8).view(torch.float8_e5m2).float()
    finite = finite[finite.isfinite() & (finite.abs() <= limit)].unique()
    mids = (finite[1:] + finite[:-1]) / 2
    x = torch.cat([finite, mids, mids.nextafter(torch.tensor(float("inf"))),
                   mids.nextafter(torch.tensor(float("-inf")))])
    x = x[x.abs() <= limit]
    nans = torch.tensor([0x7FC00000, 0x7FFFFFFF, -1], dtype=torch.int32).view(torch.float32)
    padded = torch.zeros(1 << (len(x) + len(nans) - 1).bit_length())
    padded[: len(x)], padded[len(x): len(x) + len(nans)] = x, nans
    return padded, len(x), len(nans)
