"""Errors that mean the user has something to fix; the CLI prints them without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: the message names the path or argument and the fix."""


class DataError(UserError, ValueError):
    """The image tree is missing, malformed or mostly unreadable."""


class ConfigError(UserError, ValueError):
    """An argument or config file has a value that cannot work."""


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, unreadable or does not match this run."""


class OutputError(UserError, OSError):
    """A file of the run could not be written (disk full, read-only folder)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the fit after the current step; exit with 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite for too many optimizer steps in a row."""
