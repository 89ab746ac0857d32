"""Per-class tables that stay short at any class count, and the rich tables the hooks print.

A table of 1,000 classes helps no one in a terminal or on a page. Up to ``MAX_ROWS`` classes
every row is shown; beyond it, the rows that matter (the smallest and largest classes, or
those furthest from plan) and a caption naming the file that holds every class. The report
page (``hooks.render.report_page``) and ``tools/evaluate.py`` pick their rows the same way.

Class names are data, not rich markup: every name is escaped, so ``[x]`` prints as is.

Example:
    >>> rows = extreme_rows(train_counts, MAX_ROWS)
    >>> caption = more_caption(len(train_counts), len(rows), "class_distribution.csv")
    >>> Console().print(sampler_table(0, classes, dataset, expected, drawn))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

# At most this many class rows in a terminal table or a report table.
MAX_ROWS = 30
# Thin classes named one by one, in the log and under the tables; the rest are counted.
MAX_NAMED_FEW = 10


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


def class_distribution_table(
    classes: Sequence[str],
    split_counts: Mapping[str, Sequence[int]],
    stats: Mapping[str, Any],
    few_threshold: int,
    csv_name: str,
    max_rows: int = MAX_ROWS,
) -> Table:
    """Images per class and split with their shares, totals and imbalance ratios.

    Past ``max_rows`` classes: the smallest and largest by the first split's count, in two
    sections, and a caption naming ``csv_name``. Thin classes are marked ``(few)`` in yellow
    and named in the caption.

    Args:
        classes: class names by index.
        split_counts: per split, images per class index.
        stats: the ``dataset_stats.json`` document of these counts.
        few_threshold: what "few" meant, for the caption.
        csv_name: the file that holds every class.
        max_rows: the table shows at most this many classes.
    """
    from rich.markup import escape
    from rich.table import Table

    few_items = stats["few_images"]
    few = {item["class_idx"] for item in few_items}
    table = Table(title="Class distribution", show_footer=True)
    table.add_column("#", justify="right", footer="")
    table.add_column("class", footer="total / imbalance (max/min)", overflow="ellipsis")
    for split, counts in split_counts.items():
        ratio = stats["splits"][split]["imbalance_ratio"]
        table.add_column(split, justify="right", footer=str(sum(counts)))
        table.add_column("%", justify="right", footer="-" if ratio is None else f"{ratio:.1f}x")
    first, counts0 = next(iter(split_counts.items()))
    shown = extreme_rows(counts0, max_rows)
    captions = []
    more = more_caption(len(classes), len(shown), csv_name)
    if more:
        captions.append(f"the smallest and largest classes by {first} count; {more}")
    for k, i in enumerate(shown):
        if more and k == max_rows // 2:
            table.add_section()  # the smallest classes above, the largest below
        cells = [str(i), escape(classes[i]) + (" (few)" if i in few else "")]
        for counts in split_counts.values():
            total = max(sum(counts), 1)
            cells += [str(counts[i]), f"{100 * counts[i] / total:.1f}"]
        table.add_row(*cells, style="yellow" if i in few else None)
    if few:
        names = ", ".join(item["class_name"] for item in few_items[:MAX_NAMED_FEW])
        if len(few) > MAX_NAMED_FEW:
            names += f" and {len(few) - MAX_NAMED_FEW} more (dataset_stats.json)"
        captions.append(
            f"warning: {len(few)} class(es) have fewer than {few_threshold} training "
            f"images: {escape(names)}"
        )
    table.caption = "\n".join(captions) or None
    return table


def sampler_table(
    epoch: int,
    classes: Sequence[str],
    dataset: Sequence[int],
    expected: Sequence[float],
    drawn: Sequence[int],
    max_rows: int = MAX_ROWS,
) -> Table:
    """What the training sampler drew per class in one epoch, against the plan.

    Past ``max_rows`` classes, the classes the draw treated most differently from the plan
    (relative gap), and a caption naming ``sampler_distribution.csv``.

    Args:
        epoch: from 0; the title counts from 1.
        classes: class names by index.
        dataset: training images per class.
        expected: the images the sampler planned to draw per class.
        drawn: the images it drew per class.
        max_rows: the table shows at most this many classes.
    """
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Sampled classes, epoch {epoch + 1}")
    for name in ("#", "class", "dataset", "expected", "drawn", "drawn %"):
        table.add_column(name, justify="left" if name == "class" else "right")
    order = top_rows(
        [abs(d - e) / max(e, 1) for d, e in zip(drawn, expected, strict=True)], max_rows
    )
    table.caption = more_caption(len(classes), len(order), "sampler_distribution.csv")
    total = max(sum(drawn), 1)
    for i in order:
        table.add_row(
            str(i),
            escape(classes[i]),
            str(dataset[i]),
            f"{expected[i]:.1f}",
            str(drawn[i]),
            f"{100 * drawn[i] / total:.1f}",
        )
    return table


def model_table(info: Mapping[str, Any]) -> Table:
    """The model summary (``model_info.json``'s document) as a two-column table."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Model", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("model", escape(str(info["model"]))),
        ("parameters", f"{info['parameters']:,}"),
        ("trainable", f"{info['trainable_parameters']:,}"),
        ("size", f"{info['size_mb']:.2f} MB"),
        ("input", " x ".join(map(str, info["input_size"] or ["?"]))),
        ("classes", str(info["num_classes"])),
        ("precision", info["precision"]),
        ("device", info["device"]),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def model_line(info: Mapping[str, Any]) -> str:
    """The model summary on one line, plain text (print it with ``markup=False``)."""
    size = "x".join(map(str, info["input_size"] or ["?"]))
    return (
        f"model {info['model']}: {info['parameters']:,} parameters ({info['size_mb']:.2f} MB), "
        f"input {size}, {info['num_classes']} classes, precision {info['precision']} on "
        f"{info['device']}"
    )
