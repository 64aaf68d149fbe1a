"""The error every data source raises for what a user must fix."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with the user's data; its message is one line naming the path (and the key to change)."""

