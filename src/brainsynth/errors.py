"""Errors a user can act on, raised deep in the code and reported by the stage as one line.

They live here, apart from the modules that raise them, so that a stage can catch them without
importing (and so depending on) the training engine or the checkpoint code."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is a single line."""


class CheckpointError(RuntimeError):
    """A checkpoint or model file that cannot be used; the message names the file."""


class DivergenceError(RuntimeError):
    """A loss became NaN/inf; the last good checkpoint is left untouched."""


class StageError(RuntimeError):
    """A stage-level problem a user can act on (missing upstream output, a failed worker, …)."""
