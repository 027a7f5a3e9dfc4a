"""Errors that are the user's to fix: the CLI prints them as one line, exit code 2."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the input or the options; the message says what and where."""


class BadInputError(UserError):
    """One input file is unusable; `--skip-bad` may skip the image it belongs to."""

    def __init__(self, path: str | Path, reason: str, image_id: str | None = None):
        self.path = str(path)
        self.reason = reason
        self.image_id = image_id
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # joblib ships worker exceptions back by pickling; the default would call
        # __init__ with the formatted message only.
        return (type(self), (self.path, self.reason, self.image_id))
