"""Hooks: one per file. ``default_hooks(out_dir)`` assembles the standard set."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from hooks.calibration import CalibrationHook
from hooks.checkpoint import CheckpointHook
from hooks.confusion_matrix import ConfusionMatrixHook
from hooks.dataset_statistics import DatasetStatisticsHook
from hooks.early_stopping import EarlyStoppingHook
from hooks.label_issues import LabelIssuesHook
from hooks.metrics_logger import MetricsLogger
from hooks.model_info import ModelInfoHook
from hooks.most_confused import MostConfusedHook
from hooks.onnx_export import OnnxExportHook
from hooks.per_class_metrics import PerClassMetricsHook
from hooks.progress_bar import ProgressBarHook
from hooks.render.verbosity import Verbosity, check_verbosity
from hooks.report import ReportHook
from hooks.run_folder import RunFolderHook
from hooks.sample_visualization import SampleVisualizationHook
from hooks.sampler_distribution import SamplerDistributionHook
from hooks.step_log import StepLogHook
from hooks.tensorboard import TensorBoardHook
from hooks.top_losses import TopLossesHook
from hooks.training_history import TrainingHistoryHook
from hooks.wandb import WandbHook
from trainer.config import TrainConfig
from trainer.hook import Hook
from trainer.metrics import monitor_mode

__all__ = [
    "CalibrationHook",
    "CheckpointHook",
    "ConfusionMatrixHook",
    "DatasetStatisticsHook",
    "EarlyStoppingHook",
    "Hook",
    "LabelIssuesHook",
    "MetricsLogger",
    "ModelInfoHook",
    "MostConfusedHook",
    "OnnxExportHook",
    "PerClassMetricsHook",
    "ProgressBarHook",
    "ReportHook",
    "RunFolderHook",
    "SampleVisualizationHook",
    "SamplerDistributionHook",
    "StepLogHook",
    "TensorBoardHook",
    "TopLossesHook",
    "TrainingHistoryHook",
    "WandbHook",
    "default_hooks",
]


def default_hooks(
    out_dir: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    verbosity: Verbosity | None = None,
    overwrite: bool = False,
    **settings: Any,
) -> list[Hook]:
    """The standard hooks for a run folder; each output setting switches one off.

    The settings are ``trainer.config.TrainConfig``'s (its defaults unless ``config`` is
    given; keyword arguments replace single ones): ``monitor``, ``top_k``, ``early_stopping``,
    ``min_delta``, the outputs (``confusion_matrix``, ``dataset_stats``, ``model_info``,
    ``history_plots``, ``sampler_stats``, ``samples``, ``most_confused``, ``top_losses``,
    ``find_label_issues``, ``export``, ``report``, ``tensorboard``), ``per_class``, ``calibration`` and
    ``log_every``; ``tools/train.py --help`` and docs/cli.md say what each does.

    Order is by each hook's ``order``: the run folder's files first (``RunFolderHook``:
    args.json, data_report.json, labels_mapping.json), metric writers, then plots and
    reports, the progress bar, early stopping, and checkpointing and export last.

    Args:
        out_dir: the run folder.
        config: the run's settings; those of ``hooks`` (``TrainConfig.hook_kwargs``) are used.
        progress: tqdm bars and per-epoch lines.
        verbosity: what the console hooks print, "quiet", "normal" or "verbose"
            (``hooks.render.verbosity``); "quiet" also hides the progress bars, not the epoch lines.
            Default: from the settings ``quiet`` and ``verbose``.
        overwrite: a fit into a folder that holds another run replaces that run's files;
            without it, it is refused (``RunFolderHook``).
        **settings: single settings by name, e.g. ``early_stopping=5``, ``export=False``.

    Example:
        >>> Engine(model, data, hooks=default_hooks("runs/a", early_stopping=5)).fit()
    """
    try:
        cfg = dataclasses.replace(config or TrainConfig(), **settings)
    except TypeError as e:
        raise TypeError(f"default_hooks: {e} (the names are TrainConfig's settings)") from None
    out = Path(out_dir)
    monitor = cfg.monitor  # None: the engine's, its task's metric
    mode = None if monitor is None else monitor_mode(monitor)
    if verbosity is None:
        verbosity = "quiet" if cfg.quiet else "verbose" if cfg.verbose else "normal"
    verbosity = check_verbosity(verbosity)
    hooks: list[Hook] = [RunFolderHook(out, overwrite=overwrite), MetricsLogger(out)]
    if cfg.per_class:
        hooks.append(PerClassMetricsHook(out))
    if cfg.log_every > 0:
        hooks.append(StepLogHook(out, every=cfg.log_every))
    if cfg.dataset_stats:
        hooks.append(DatasetStatisticsHook(out, verbosity=verbosity))
    if cfg.model_info:
        hooks.append(ModelInfoHook(out, verbosity=verbosity))
    if cfg.confusion_matrix:
        hooks.append(ConfusionMatrixHook(out))
    if cfg.sampler_stats:
        hooks.append(SamplerDistributionHook(out, verbosity=verbosity))
    if cfg.history_plots:
        hooks.append(TrainingHistoryHook(out))
    if cfg.calibration:
        hooks.append(CalibrationHook(out))
    if cfg.samples:
        hooks.append(SampleVisualizationHook(out))
    if cfg.most_confused:
        hooks.append(MostConfusedHook(out))
    if cfg.top_losses:
        hooks.append(TopLossesHook(out))
    if cfg.find_label_issues:
        hooks.append(LabelIssuesHook(out))
    if progress:
        hooks.append(ProgressBarHook(disable=True if verbosity == "quiet" else None))
    if cfg.early_stopping > 0:
        hooks.append(
            EarlyStoppingHook(
                monitor, patience=cfg.early_stopping, min_delta=cfg.min_delta, mode=mode
            )
        )
    hooks.append(CheckpointHook(out, monitor=monitor, mode=mode, top_k=cfg.top_k))
    if cfg.export:
        hooks.append(OnnxExportHook(out))
    if cfg.tensorboard:
        hooks.append(TensorBoardHook(out))
    if cfg.report:
        hooks.append(ReportHook(out))
    return hooks
