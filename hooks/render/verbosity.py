"""How much the console hooks print: the three levels of ``tools/train.py --quiet/--verbose``.

- ``"quiet"``: the epoch lines and warnings only (no progress bars, no tables);
- ``"normal"``: also the progress bars (on a terminal), the class-distribution table, a
  one-line model summary, and the sampler table when it tells something (see
  ``SamplerDistributionHook``);
- ``"verbose"``: everything: the model table and the sampler table every epoch.

Files are written the same at every level; only the console changes.
"""

from __future__ import annotations

from typing import Literal

Verbosity = Literal["quiet", "normal", "verbose"]
VERBOSITIES: tuple[Verbosity, ...] = ("quiet", "normal", "verbose")


def check_verbosity(verbosity: str) -> Verbosity:
    """``verbosity`` itself, or a ValueError naming the three levels."""
    for level in VERBOSITIES:
        if verbosity == level:
            return level
    raise ValueError(f"verbosity must be one of {', '.join(VERBOSITIES)}, got {verbosity!r}")
