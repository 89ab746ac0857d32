"""hooks/render/tables.py: which class rows a capped table shows, its caption, the rich tables."""

from __future__ import annotations

from hooks.dataset_statistics import dataset_stats
from hooks.render.tables import (
    class_distribution_table,
    extreme_rows,
    model_table,
    more_caption,
    sampler_table,
    top_rows,
)
from tests.conftest import console_text, quiet_console


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


def test_class_and_model_names_print_as_text_not_rich_markup() -> None:
    """``[bold]`` in a name is data: it prints as written, in every table."""
    classes = ["[bold]a[/bold]", "b"]
    counts = {"train": [1, 3], "val": [2, 2]}
    stats = dataset_stats(classes, counts, few_threshold=2)
    info = {"model": "[red]net[/red]", "parameters": 1, "trainable_parameters": 1,
            "size_mb": 0.0, "input_size": None, "num_classes": 2, "precision": "32",
            "device": "cpu"}  # fmt: skip
    console = quiet_console()
    console.print(class_distribution_table(classes, counts, stats, 2, "class_distribution.csv"))
    console.print(sampler_table(0, classes, [1, 3], [2.0, 2.0], [2, 2]))
    console.print(model_table(info))
    text = console_text(console)
    # Its row and the thin-class caption in the distribution table, its row in the sampler's.
    assert text.count("[bold]a[/bold]") == 3
    assert "[red]net[/red]" in text
