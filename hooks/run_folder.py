"""RunFolderHook: the files that describe a run, written once at its start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.distributed import is_global_zero
from trainer.hook import Hook
from trainer.run_folder import library_args, write_labels_mapping, write_run_files

if TYPE_CHECKING:
    from trainer.engine import Engine


class RunFolderHook(Hook):
    """At the start of a fit: ``args.json``, ``data_report.json`` and ``labels_mapping.json``
    in the run folder (``trainer.run_folder.write_run_files``), the same from Python as from
    tools/train.py. Multi-label data: ``labels_mapping.json`` is written again with the tuned
    ``thresholds`` at each new best epoch and at the end of the fit (``state.thresholds``).

    The settings are ``engine.args`` (what tools/train.py passes); an engine built in Python
    without ``args`` gets the ones its engine and data know (``trainer.run_folder.library_args``),
    so its checkpoints and ``report.html`` record them too.

    Args:
        out_dir: the run folder.

    Example:
        >>> Engine(model, data, hooks=[RunFolderHook("runs/a")]).fit()  # runs/a/args.json
    """

    order = -10  # before every hook that reads the files or engine.args

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)

    def setup(self, engine: Engine, stage: str) -> None:
        if stage != "fit":
            return
        if not engine.args:
            engine.args.update(library_args(engine))
        if is_global_zero():
            write_run_files(self.out_dir, engine.args, engine.data)

    def on_train_epoch_end(self, engine: Engine) -> None:
        if engine.state.is_best:
            self.on_fit_end(engine)

    def on_fit_end(self, engine: Engine) -> None:
        if engine.state.thresholds is not None and is_global_zero():  # multi-label
            write_labels_mapping(self.out_dir, engine.data, engine.state.thresholds)
