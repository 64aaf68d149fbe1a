"""Which torch device a stage runs on (``train.device``)."""

from __future__ import annotations

import torch


def resolve_device(choice: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is a one-line error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")
