"""Hooks: one per file. ``default_hooks(out_dir)`` assembles the standard set."""

from __future__ import annotations

import os
from pathlib import Path

from hooks.calibration import CalibrationHook
from hooks.checkpoint import CheckpointHook
from hooks.confusion_matrix import ConfusionMatrixHook
from hooks.dataset_statistics import DatasetStatisticsHook
from hooks.early_stopping import EarlyStoppingHook
from hooks.metrics_logger import MetricsLogger
from hooks.model_info import ModelInfoHook
from hooks.onnx_export import OnnxExportHook
from hooks.per_class_metrics import PerClassMetricsHook
from hooks.progress_bar import ProgressBarHook
from hooks.report import ReportHook
from hooks.sample_visualization import SampleVisualizationHook
from hooks.sampler_distribution import SamplerDistributionHook
from hooks.step_log import StepLogHook
from hooks.tensorboard import TensorBoardHook
from hooks.training_history import TrainingHistoryHook
from hooks.verbosity import Verbosity, check_verbosity
from hooks.wandb import WandbHook
from trainer.hook import Hook
from trainer.metrics import monitor_mode

__all__ = [
    "CalibrationHook",
    "CheckpointHook",
    "ConfusionMatrixHook",
    "DatasetStatisticsHook",
    "EarlyStoppingHook",
    "Hook",
    "MetricsLogger",
    "ModelInfoHook",
    "OnnxExportHook",
    "PerClassMetricsHook",
    "ProgressBarHook",
    "ReportHook",
    "SampleVisualizationHook",
    "SamplerDistributionHook",
    "StepLogHook",
    "TensorBoardHook",
    "TrainingHistoryHook",
    "WandbHook",
    "default_hooks",
]


def default_hooks(
    out_dir: str | os.PathLike[str],
    *,
    monitor: str = "val/acc",
    top_k: int = 1,
    early_stopping: int = 0,
    min_delta: float = 0.0,
    progress: bool = True,
    confusion_matrix: bool = True,
    dataset_stats: bool = True,
    model_info: bool = True,
    history_plots: bool = True,
    sampler_stats: bool = True,
    samples: bool = True,
    export: bool = True,
    report: bool = True,
    tensorboard: bool = False,
    per_class: bool = True,
    calibration: bool = True,
    log_every: int = 50,
    verbosity: Verbosity = "normal",
) -> list[Hook]:
    """The standard hooks for a run folder; each flag switches one off.

    Order is by each hook's ``order``: metric writers first, then plots and reports, the
    progress bar, early stopping, and checkpointing and export last.

    Args:
        out_dir: the run folder.
        monitor: metric for best.pt and early stopping ("...loss" and "...ece" metrics are
            minimised).
        top_k: keep the k best epochs' checkpoints besides best.pt and last.pt.
        early_stopping: patience in validations (epochs, unless the engine's ``val_every``
            adds some inside them); 0 disables early stopping.
        min_delta: for early stopping, an improvement must beat the best by more than this.
        progress: tqdm bars and per-epoch lines.
        report: ``report.html``, the run on one page, refreshed during the run and at the end.
        tensorboard: TensorBoard event files in ``out_dir/tensorboard`` (needs the
            ``tensorboard`` package: ``pip install -e '.[tensorboard]'``).
        per_class: ``per_class.csv``, per-class metrics at every validation.
        calibration: ``plots/reliability.png``, the reliability diagram.
        log_every: a ``steps.csv`` row every this many optimizer steps; 0: no ``steps.csv``.
        verbosity: what the console hooks print, "quiet", "normal" or "verbose"
            (``hooks.verbosity``); "quiet" also hides the progress bars, not the epoch lines.

    Example:
        >>> Engine(model, data, hooks=default_hooks("runs/a", early_stopping=5)).fit()
    """
    out = Path(out_dir)
    mode = monitor_mode(monitor)
    verbosity = check_verbosity(verbosity)
    hooks: list[Hook] = [MetricsLogger(out)]
    if per_class:
        hooks.append(PerClassMetricsHook(out))
    if log_every > 0:
        hooks.append(StepLogHook(out, every=log_every))
    if dataset_stats:
        hooks.append(DatasetStatisticsHook(out, verbosity=verbosity))
    if model_info:
        hooks.append(ModelInfoHook(out, verbosity=verbosity))
    if confusion_matrix:
        hooks.append(ConfusionMatrixHook(out))
    if sampler_stats:
        hooks.append(SamplerDistributionHook(out, verbosity=verbosity))
    if history_plots:
        hooks.append(TrainingHistoryHook(out))
    if calibration:
        hooks.append(CalibrationHook(out))
    if samples:
        hooks.append(SampleVisualizationHook(out))
    if progress:
        hooks.append(ProgressBarHook(disable=True if verbosity == "quiet" else None))
    if early_stopping > 0:
        hooks.append(
            EarlyStoppingHook(monitor, patience=early_stopping, min_delta=min_delta, mode=mode)
        )
    hooks.append(CheckpointHook(out, monitor=monitor, mode=mode, top_k=top_k))
    if export:
        hooks.append(OnnxExportHook(out))
    if tensorboard:
        hooks.append(TensorBoardHook(out))
    if report:
        hooks.append(ReportHook(out))
    return hooks
