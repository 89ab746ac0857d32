"""RunFolderHook: the files that describe a run, written once at its start."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.distributed import broadcast_object, is_global_zero
from trainer.errors import ConfigError
from trainer.hook import Hook
from trainer.run_folder import (
    check_no_links,
    claim,
    holds_run,
    library_args,
    write_labels_mapping,
    write_run_files,
)

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

    A folder that already holds another run is refused at fit start, before anything in it
    changes (as tools/train.py refuses it): two runs' checkpoints would mix. Resuming it, or
    these hooks fitting again, goes on; ``overwrite`` replaces that run's files (only them).

    Args:
        out_dir: the run folder.
        overwrite: replace the run a folder holds rather than refuse it.

    Example:
        >>> Engine(model, data, hooks=[RunFolderHook("runs/a")]).fit()  # runs/a/args.json
    """

    order = -10  # before every hook that reads the files or engine.args

    def __init__(self, out_dir: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.overwrite = overwrite
        self._ours = False  # whether the run the folder holds is these hooks' own
        self._held = False  # whether it held another one at this fit's setup

    def setup(self, engine: Engine, stage: str) -> None:
        if stage != "fit":
            return
        if not engine.args:
            engine.args.update(library_args(engine))
        # Whether a resume follows is only known at fit start (Lightning's order: setup,
        # then the checkpoint's load): the files wait for it. One answer for every rank.
        if is_global_zero():
            check_no_links(self.out_dir)  # a linked checkpoints/ is refused as such
        held = is_global_zero() and not self._ours and holds_run(self.out_dir)
        self._held = broadcast_object(held)
        if not self._held:
            self._write(engine)

    def on_fit_start(self, engine: Engine) -> None:
        if not self._held:
            return
        if engine.resume_path is None:
            if not self.overwrite:
                raise ConfigError(
                    f"the run folder {self.out_dir} already holds a run; a new run there would "
                    "mix with its checkpoints. Continue it with engine.fit(resume="
                    f"{str(self.out_dir)!r}), pick another out_dir, or pass overwrite=True "
                    "(default_hooks(out_dir, overwrite=True)) to replace its files."
                )
            if is_global_zero():
                claim(self.out_dir, overwrite=True)
        self._write(engine)

    def _write(self, engine: Engine) -> None:
        if is_global_zero():
            write_run_files(self.out_dir, engine.args, engine.data)
        self._ours = True

    def on_train_epoch_end(self, engine: Engine) -> None:
        if engine.state.is_best:
            self.on_fit_end(engine)

    def on_fit_end(self, engine: Engine) -> None:
        if engine.state.thresholds is not None and is_global_zero():  # multi-label
            write_labels_mapping(self.out_dir, engine.data, engine.state.thresholds)
