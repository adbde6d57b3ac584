"""The device and dtype rule every model stage follows."""

from __future__ import annotations


def check_device_dtype(*, device: str, dtype: str, what: str) -> None:
    """float32 everywhere; bfloat16 only on CUDA (CPU bfloat16 convolutions are slow and not what we test)."""
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"{what}: device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"{what}: dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    if dtype == "bfloat16" and device == "cpu":
        raise ValueError(f"{what}: dtype 'bfloat16' is allowed only on CUDA; use 'float32' on CPU")
