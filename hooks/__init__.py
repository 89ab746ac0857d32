"""Hooks: one per file. ``default_hooks(out_dir)`` assembles the standard set."""

from trainer.hook import Hook

__all__ = ["Hook"]
