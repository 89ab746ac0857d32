"""ValCheck: when validation runs inside a training epoch (``val_every``), like Lightning's
``val_check_interval``.

``val_every`` in (0, 1] is a fraction of an epoch: 0.25 validates after each quarter of the
epoch's optimizer steps. An integer above 1 is a number of optimizer steps, counted over the
whole run (so the checks continue across epochs and after a resume). The epoch end always
validates (its row in the history needs the metrics), so a check that lands on an epoch's last
step is left to it, and validation never runs twice at one step.

Example:
    >>> check = ValCheck(0.25, steps_per_epoch=8)
    >>> [k for k in range(1, 9) if check.due(step=k, epoch_step=k)]
    [2, 4, 6]
"""

from __future__ import annotations

import math


def val_every_problem(value: float) -> str | None:
    """Why ``value`` is not a valid ``val_every``, or None when it is."""
    if not math.isfinite(value) or value <= 0:
        return f"must be a finite number above 0, got {value:g}"
    if value > 1 and not float(value).is_integer():
        return (
            f"is a fraction of an epoch (0 < F <= 1) or a whole number of steps (N > 1), "
            f"got {value:g}"
        )
    return None


class ValCheck:
    """Decides after each batch whether to validate now, mid-epoch.

    Args:
        val_every: a fraction of an epoch (0 < F <= 1; 1, the default, validates only at
            epoch ends) or a number of optimizer steps (an integer N > 1).
        steps_per_epoch: optimizer steps in an epoch.
    """

    def __init__(self, val_every: float, steps_per_epoch: int) -> None:
        problem = val_every_problem(val_every)
        if problem:
            raise ValueError(f"val_every {problem}")
        self.steps_per_epoch = steps_per_epoch
        self.global_steps = val_every > 1  # N steps of the run, else a share of each epoch
        self.interval = (
            int(val_every) if self.global_steps else max(1, round(val_every * steps_per_epoch))
        )
        self.last_step: int | None = None  # the step of the last mid-epoch validation

    def due(self, step: int, epoch_step: int) -> bool:
        """Whether to validate after the batch that brought the run to ``step`` optimizer
        steps, ``epoch_step`` of them in this epoch. At most once per step; never on the
        epoch's last step (the epoch end validates)."""
        if step == self.last_step or not 0 < epoch_step < self.steps_per_epoch:
            return False
        if (step if self.global_steps else epoch_step) % self.interval:
            return False
        self.last_step = step
        return True

    def ran_at(self, step: int) -> bool:
        """Whether a mid-epoch validation already ran at ``step`` (a stop right after it
        ends the epoch there: the epoch end reuses its metrics)."""
        return step == self.last_step
