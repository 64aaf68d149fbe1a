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


_ALLOCATOR_TUNED = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    By default every activation above the mmap threshold is mmap'ed, freed with munmap after the
    step and faulted in again on the next: ~3 million page faults and 15 % of the wall time of a
    CPU training run went to that (experiments/results/2026-12-06-lab-notebook.md). PyTorch's CPU tuning guide points to
    jemalloc or tcmalloc through LD_PRELOAD, which needs a system package and an environment set
    before Python starts (DVC starts the stages); ``mallopt`` is glibc's own switch for the same
    thing and works in-process. At most ~1 GiB of freed memory is kept. Returns whether it applied
    (False off glibc: macOS, musl). Idempotent.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    _ALLOCATOR_TUNED = bool(mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 1 << 30) and mallopt(m_top_pad, 64 << 20))
    return _ALLOCATOR_TUNED
