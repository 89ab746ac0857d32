"""hooks/render/tables.py: which class rows a capped table shows, its caption, the rich tables."""

from __future__ import annotations

from hooks.render.tables import extreme_rows, more_caption, sampler_table, top_rows


def test_every_row_when_they_fit() -> None:
    assert extreme_rows([3, 1, 2], 3) == [0, 1, 2]
    assert top_rows([3, 1, 2], 3) == [0, 1, 2]
    assert more_caption(3, 3, "x.csv") is None


def test_extremes_run_from_the_smallest_to_the_largest() -> None:
    values = [5, 1, 9, 1, 7, 3, 8]
    # Two smallest (ties: lower index first), then the three largest, by value.
    assert extreme_rows(values, 5) == [1, 3, 4, 6, 2]
    assert more_caption(7, 5, "x.csv") == "2 more classes in x.csv"


def test_top_rows_keep_the_highest_scores_in_index_order() -> None:
    assert top_rows([0.1, 0.9, 0.5, 0.9, 0.0], 3) == [1, 2, 3]


def test_table_is_capped_for_many_classes() -> None:
    classes = [f"c{i}" for i in range(40)]
    drawn = [10] * 40
    drawn[7] = 40
    table = sampler_table(0, classes, [10] * 40, [10.0] * 40, drawn, max_rows=5)
    assert table.row_count == 5 and "35 more classes" in str(table.caption)
