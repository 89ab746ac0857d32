"""What ``ImageFolderData`` found, as ``data_report.json`` holds it and as a run's first lines
say it."""

from __future__ import annotations

from typing import Any


def report(data: Any) -> dict[str, Any]:
    """What the scan found, for ``data_report.json``: counts, unusable and ignored files."""
    return {
        "root": str(data.root),
        "classes": list(data.classes),
        "class_counts": {k: list(v) for k, v in data.class_counts.items()},
        "verify": data.verify,
        "bad_files": [{"path": str(p), "reason": r} for p, r in data.bad_files],
        "skipped_in_training": [
            {"path": p, "reason": r} for p, r in data.bad_images.skipped.items()
        ],
        "skip_events": data.bad_images.events,
        "ignored_files": [str(p) for p in data.ignored_files],
        "skipped_links": [{"path": str(p), "reason": r} for p, r in data.skipped_links],
        **({} if data.leaks is None else {"leakage": data.leaks}),
        **({} if data.near_duplicates is None else {"near_duplicates": data.near_duplicates}),
    }


def summary(data: Any) -> str:
    """A few lines on classes and split sizes, for the start of a run."""
    lines = [f"data: {data.root} ({data.num_classes} classes)"]
    multilabel = getattr(data, "task", "multiclass") == "multilabel"
    for split, counts in data.class_counts.items():
        samples = getattr(data, f"{split}_samples", None)
        images = len(samples) if samples is not None else sum(counts)
        if not images:
            continue
        per = f"{sum(counts)} labels, per label" if multilabel else "per class"  # counts: labels
        lines.append(f"  {split}: {images} images, {per} min {min(counts)} max {max(counts)}")
    if data.bad_files:
        lines.append(f"  skipped {len(data.bad_files)} unreadable file(s)")
    if data.ignored_files:
        lines.append(f"  ignored {len(data.ignored_files)} non-image file(s)")
    if data.leaks or data.near_duplicates:
        lines.append(
            f"  leakage: {len(data.leaks or [])} image(s) in more than one split, "
            f"{len(data.near_duplicates or [])} near-duplicate pair(s) (data_report.json)"
        )
    return "\n".join(lines)
