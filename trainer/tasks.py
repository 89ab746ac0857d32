"""``task_of``: the task of a dataset (``trainer.task``'s ``ClassificationTask`` or
``trainer.multilabel``'s ``MultiLabelTask``); its own module, so that neither of those two
imports the other both ways."""

from __future__ import annotations

from typing import Any

from trainer.multilabel import MultiLabelTask
from trainer.task import ClassificationTask, is_multilabel


def task_of(data: Any) -> ClassificationTask:
    """The task of ``data``: ``MultiLabelTask`` when ``data.task`` is "multilabel"."""
    return MultiLabelTask() if is_multilabel(data) else ClassificationTask()
