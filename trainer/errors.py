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
