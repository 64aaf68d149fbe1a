"""The training run: epochs, validation cadence, the best model so far and the histories — one loop
for the train stage, its non-main ranks, tune trials and the benchmarks (nanoGPT's flat loop,
with the stage-specific parts as callbacks).

    state = fit(trainer, epochs, validate=..., every=k, on_epoch=...)

``fit`` continues from ``trainer.epoch`` (a resumed trainer picks up where it stopped) and from the
``RunState`` it is given, which is saved beside the trainer in the resume checkpoint
(``RunState.as_dict``/``from_dict``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from brainsynth.training.engine import EpochStats, Trainer

OBJECTIVE = "val_objective"  # the validation score that decides the best epoch (lower is better)


@dataclass
class RunState:
    """What a run knows about itself beyond the trainer: the best validated epoch and the histories."""

    best_value: float = math.inf
    best_epoch: int = 0  # 0: no epoch validated yet
    val_history: list[dict] = field(default_factory=list)  # {"epoch", **validation scores} per validated epoch
    step_history: list[dict] = field(default_factory=list)  # {"step", "epoch", **loss means} per train.log_every window

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict) -> "RunState":
        return cls(float(stored.get("best_value", math.inf)), int(stored.get("best_epoch", 0)),
                   list(stored.get("val_history", [])), list(stored.get("step_history", [])))


@dataclass
class EpochResult:
    """One finished epoch: the training statistics, the validation scores ({} when not validated)
    and whether this epoch is the new best."""

    stats: EpochStats
    scores: dict[str, float]
    improved: bool

    def metrics(self) -> dict[str, float]:
        """What an epoch logs: the computed loss terms (``train_*``) and the validation scores."""
        return {**{f"train_{k}": v for k, v in self.stats.computed_losses().items()}, **self.scores}


def fit(trainer: Trainer, epochs: int, validate: Callable[[Trainer], dict[str, float]] | None = None, every: int = 1,
        on_epoch: Callable[[EpochResult, RunState], None] | None = None, state: RunState | None = None,
        record_steps: bool = False, progress: bool = False) -> RunState:
    """Train ``trainer`` up to ``epochs`` finished epochs.

    ``validate(trainer)`` → scores (with ``OBJECTIVE``), called every ``every`` epochs and after the
    last; ``on_epoch(result, state)`` after each epoch (log, checkpoint, report to a pruner — it may
    raise to stop); ``record_steps``: keep the loss means of every ``train.log_every`` window in
    ``state.step_history``; ``progress``: a per-epoch bar on a terminal.
    """
    state = state or RunState()

    def record(step: int, means: dict[str, float]) -> None:
        state.step_history.append({"step": step, "epoch": round(step / trainer.steps_per_epoch, 3), **means})

    on_log = record if record_steps else None
    for _ in range(trainer.epoch, epochs):
        stats = trainer.train_epoch(on_log=on_log, progress=f"epoch {trainer.epoch + 1}/{epochs}" if progress else None)
        scores, improved = {}, False
        if validate is not None and (stats.epoch % every == 0 or stats.epoch == epochs):
            scores = validate(trainer)
            state.val_history.append({"epoch": stats.epoch, **scores})
            if scores[OBJECTIVE] < state.best_value:
                state.best_value, state.best_epoch, improved = scores[OBJECTIVE], stats.epoch, True
        if on_epoch is not None:
            on_epoch(EpochResult(stats, scores, improved), state)
    return state
