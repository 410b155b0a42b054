"""Where a run computes: the recipe's ``training.device`` ("auto", "cpu", "cuda") as a torch device."""

from __future__ import annotations

import torch

from ..errors import HypergenError


def resolve_device(name: str, where: str = "training.device") -> torch.device:
    """"auto" (CUDA when there is one), "cpu" or "cuda"; ``where`` names the setting in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HypergenError(f"{where}: 'cuda' requested but no CUDA device is available")
    return torch.device(name)
