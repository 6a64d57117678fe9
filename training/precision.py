"""Where training runs and in what precision: the device, autocast and the gradient scaler.

``amp`` (the config's) is ``auto``: float16 autocast with loss scaling on CUDA, plain float32 on the CPU (on CPUs
without AVX-512 BF16 bfloat16 autocast is slower than float32); ``always``: also bfloat16 autocast on the CPU (no
loss scaling: bfloat16 has float32's range); ``never``: float32 everywhere.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from training.config import AmpMode


def training_device() -> torch.device:
    """This process's GPU (``torchrun`` sets it in :func:`training.distributed.setup`) if CUDA is available,
    else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def autocast_dtype(device: torch.device, mode: AmpMode = "auto") -> torch.dtype | None:
    """The autocast dtype on ``device`` under ``mode`` (module docstring); ``None``: float32, no autocast."""
    if mode == "never":
        return None
    if device.type == "cuda":
        return torch.float16
    if mode == "always" and device.type == "cpu":
        return torch.bfloat16
    return None


def use_amp(device: torch.device, mode: AmpMode = "auto") -> bool:
    """Whether the training step autocasts on ``device`` under ``mode``."""
    return autocast_dtype(device, mode) is not None


def autocast(device: torch.device, mode: AmpMode = "auto") -> AbstractContextManager[None]:
    """The autocast context of one training step (disabled when :func:`use_amp` is false)."""
    dtype = autocast_dtype(device, mode)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_scaler(device: torch.device, mode: AmpMode = "auto") -> torch.amp.GradScaler:
    """A gradient scaler that is active under float16 autocast (float16 gradients underflow without it) and a
    pass-through otherwise, so the training step has one code path."""
    return torch.amp.GradScaler(device.type, enabled=autocast_dtype(device, mode) == torch.float16)
