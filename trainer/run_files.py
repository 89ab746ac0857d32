"""The names of the files and folders in a run folder (``trainer.run_folder`` uses them,
and re-exports them); a module of constants only, so that any module may import it."""

ARGS_JSON = "args.json"  # the run's settings, replayable with --config
DATA_REPORT_JSON = "data_report.json"
LABELS_MAPPING_JSON = "labels_mapping.json"
METRICS_CSV = "metrics.csv"
PER_CLASS_CSV = "per_class.csv"
MOST_CONFUSED_CSV = "most_confused.csv"  # the latest validation's most confused class pairs
TOP_LOSSES_CSV = "top_losses.csv"  # the latest validation's highest-loss images
LABEL_ISSUES_CSV = "label_issues.csv"  # training images by area under the margin, lowest first
STEPS_CSV = "steps.csv"
CHECKPOINTS = "checkpoints"
LAST_PT = "last.pt"
BEST_PT = "best.pt"
INTERRUPTED_PT = "interrupted.pt"
MODEL_ONNX = "model.onnx"
EXPORT_REPORT_JSON = "export_report.json"
REPORT_HTML = "report.html"
PLOTS = "plots"
TENSORBOARD = "tensorboard"
MODEL_INFO_JSON = "model_info.json"
DATASET_STATS_JSON = "dataset_stats.json"
CLASS_DISTRIBUTION_CSV = "class_distribution.csv"
SAMPLER_DISTRIBUTION_CSV = "sampler_distribution.csv"
LR_FIND_CSV = "lr_find.csv"
LR_FIND_PNG = "lr_find.png"
