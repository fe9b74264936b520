"""The ``--device auto|cpu|cuda`` rule, shared by every stage."""

from __future__ import annotations

import torch

from ncnc.core.errors import InputError


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but no CUDA device is available")
    return torch.device(device)
