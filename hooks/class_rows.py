"""Per-class tables that stay short at any class count: which rows to show, and the caption.

A table of 1,000 classes helps no one in a terminal or on a page. Up to ``MAX_ROWS`` classes
every row is shown; beyond it, the rows that matter (the smallest and largest classes, or
those furthest from plan) and a caption naming the file that holds every class.

Example:
    >>> rows = extreme_rows(train_counts, MAX_ROWS)
    >>> caption = more_caption(len(train_counts), len(rows), "class_distribution.csv")
"""

from __future__ import annotations

from collections.abc import Sequence

# At most this many class rows in a terminal table or a report table.
MAX_ROWS = 30


def top_rows(scores: Sequence[float], max_rows: int = MAX_ROWS) -> list[int]:
    """Indices of the ``max_rows`` highest scores (ties: lower index first), in index order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep index order
    return sorted(order[:max_rows])


def extreme_rows(values: Sequence[float], max_rows: int = MAX_ROWS) -> list[int]:
    """Every index when they fit; else the ``max_rows // 2`` smallest values' indices then the
    largest ones', from the smallest value up (ties: lower index first)."""
    if len(values) <= max_rows:
        return list(range(len(values)))
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[: max_rows // 2] + order[len(order) - (max_rows - max_rows // 2) :]


def more_caption(total: int, shown: int, where: str) -> str | None:
    """``"970 more classes in <where>"``, or None when every class is shown."""
    return f"{total - shown} more classes in {where}" if total > shown else None
