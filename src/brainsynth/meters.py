"""Named loss bookkeeping of the training loop: running means of device tensors (one host sync per
read) and the statistics of a finished epoch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from brainsynth import losses


class LossMeter:
    """Running means of named scalar losses. Values stay device tensors (no host sync) until
    ``means()``; each name is averaged over the updates that reported it (the penalty, for one,
    is not computed on every critic update)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, named: dict[str, torch.Tensor]) -> None:
        for name, value in named.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def merge(self, other: "LossMeter") -> None:
        for name, value in other.sums.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + other.counts[name]

    def __bool__(self) -> bool:
        return bool(self.counts)

    def means(self) -> dict[str, float]:
        """{name: mean} for every name a step can report (``losses.loss_names()``; 0.0 for those never reported)."""
        all_names = losses.loss_names()
        names = [n for n in all_names if n in self.sums]
        values = torch.stack([self.sums[n] for n in names]).tolist() if names else []  # one host sync
        means = {n: v / self.counts[n] for n, v in zip(names, values)}
        return {n: means.get(n, 0.0) for n in all_names}

    def reported(self) -> set[str]:
        """The names some update reported (a disabled loss term never is)."""
        return set(self.counts)


@dataclass
class EpochStats:
    epoch: int  # 1-based number of the finished epoch
    losses: dict[str, float]  # every name in losses.loss_names() (0.0 for terms not computed)
    seconds: float
    images_per_second: float
    reported: frozenset[str] = frozenset()  # the loss terms this epoch computed

    def computed_losses(self) -> dict[str, float]:
        """The losses of the terms that were computed (what is worth logging)."""
        return {k: v for k, v in self.losses.items() if k in self.reported}
