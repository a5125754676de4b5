"""Torch device selection with clear errors, and a printable device description."""

from __future__ import annotations

import torch

DEVICES = ("cpu", "cuda", "auto")


class DeviceError(RuntimeError):
    """The requested device is not usable here."""


def resolve_device(name: str, threads: int | None = None) -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` -> a usable ``torch.device``.

    ``threads`` caps torch's intra-op CPU threads (shared machines: keep it small).
    """
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {name}: CUDA is not available here "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
        return dev
    raise DeviceError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)} or cuda:N")


def describe(device: torch.device) -> str:
    """E.g. ``cuda (NVIDIA H100 80GB HBM3)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
