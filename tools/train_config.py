"""tools/train.py's command line: the flags, and the configuration they resolve to
(``--config`` replays an ``args.json``, flags on the command line win, and the demo and
``--data`` defaults fill what is left)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import torch
from augment_flags import RECIPES, add_augment_flags, augment_from_config
from config_file import FORMATS, check_config_values, read_config_file
from run_folder import run_dir_of

from hooks.wandb import MISSING as WANDB_MISSING
from trainer.data import ImageFolderData
from trainer.data.demo import DATA_DEFAULTS, DEMO_DEFAULTS
from trainer.data.pipelines import load_transforms_file
from trainer.errors import ConfigError
from trainer.losses import build_loss
from trainer.models import MODELS, TIMM_PREFIX
from trainer.val_check import val_every_problem

# Flags about this invocation, not the run: args.json leaves them out, so replaying it is safe.
NOT_SAVED = ("resume", "config", "print_config", "format", "overwrite")
# args.json's record of the transform pipelines the run used: written by train.py, not a flag.
PIPELINE_KEY = "pipeline"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/train.py",
        description="Train an image classifier on an ImageFolder tree "
        "(DIR/train/<class>/*, DIR/val/<class>/*, optional DIR/test/<class>/*) "
        "or a label file (a .csv or .jsonl of image path, label and optional split).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        type=str,
        default=None,
        help="ImageFolder root, or a .csv/.jsonl label file (see --image-key); omitted: the "
        "built-in demo dataset of drawn shapes",
    )
    g.add_argument(
        "--img-size", type=int, default=None, help="square input side (demo: 64, else 224)"
    )
    g.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (demo: 32, else 64)"
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data-loading processes; default min(8, CPU count)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share held out for val when DIR has only class folders",
    )
    g.add_argument(
        "--crop-scale",
        type=float,
        default=None,
        metavar="LOW",
        help="smallest area share kept by RandomResizedCrop (demo: 0.5, else 0.08)",
    )
    g.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random horizontal flips (switch off for digits and text)",
    )
    g.add_argument(
        "--color-jitter",
        type=float,
        default=0.0,
        metavar="STRENGTH",
        help="brightness/contrast/saturation jitter; 0 is off",
    )
    g.add_argument(
        "--sampler",
        choices=("none", "balanced", "manual"),
        default="none",
        help="balanced draws each class equally often; manual uses --class-weights",
    )
    g.add_argument(
        "--class-weights",
        type=str,
        default=None,
        metavar="NAME=W,...",
        help="per-class sampling weights by class name (implies --sampler manual)",
    )
    g.add_argument(
        "--cache",
        choices=("none", "ram"),
        default="none",
        help="ram keeps decoded, pre-resized images in memory when they fit",
    )
    g.add_argument(
        "--decode",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: training JPEGs decoded in batches by nvjpeg and cropped, resized and "
        "flipped on the GPU (CUDA only; other formats still decode on the CPU)",
    )
    g.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.05,
        help="abort when more than this share of the images cannot be read",
    )
    g.add_argument(
        "--max-image-pixels",
        type=int,
        default=50_000_000,
        metavar="N",
        help="the start-up check refuses (skips and reports) an image whose header declares "
        "more pixels than this; decoding one would take seconds and gigabytes",
    )
    # Label files and the split-leakage check (issue 15, part 4).
    g.add_argument(
        "--image-key",
        default="path",
        metavar="KEY",
        help="label file: the CSV column or JSONL key holding the image path (relative to the "
        "label file's folder)",
    )
    g.add_argument(
        "--label-key",
        default="label",
        metavar="KEY",
        help="label file: the CSV column or JSONL key holding the label",
    )
    g.add_argument(
        "--check-leakage",
        action="store_true",
        help="find images that are in more than one split (identical files, by content hash); "
        "listed in data_report.json",
    )
    g.add_argument(
        "--verify",
        choices=("header", "full", "none"),
        default="header",
        help="start-up check of every image, cached by path, size and mtime: header reads "
        "headers only; full decodes every image (in child processes a crash cannot end the "
        "run); none skips it. Images that fail later are skipped and counted either way",
    )

    add_augment_flags(p)

    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help=f"architecture: {', '.join(sorted(MODELS))}, or {TIMM_PREFIX}<name> for any timm "
        "model (needs the [timm] extra) (demo: small_cnn, else resnet18)",
    )
    g.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="start from ImageNet weights, torchvision's or timm's (downloads once)",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="epochs (demo: 15, else 20)")
    g.add_argument(
        "--lr",
        type=lr_value,
        default=None,
        help="peak learning rate (demo: 3e-3, else 1e-3); auto: run the LR range test first "
        "(tools/lr_find.py) and use its suggestion",
    )
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup length")
    g.add_argument("--label-smoothing", type=float, default=0.1, help="cross-entropy smoothing")
    g.add_argument("--loss", choices=("ce", "focal"), default="ce", help="training loss")
    g.add_argument(
        "--loss-weights",
        choices=("none", "balanced"),
        default="none",
        help="balanced weights the loss by inverse class frequency",
    )
    g.add_argument(
        "--precision",
        choices=("auto", "32", "16-mixed", "bf16-mixed"),
        default="auto",
        help="auto: bf16 on CUDA where supported, fp16 on other CUDA, fp32 on CPU",
    )
    g.add_argument(
        "--ema-decay",
        type=float,
        default=0.0,
        help="EMA of the weights (e.g. 0.999), used for val and export; 0 disables",
    )
    g.add_argument("--grad-clip", type=float, default=0.0, help="clip gradient norm; 0 disables")
    g.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun on GPUs: BatchNorm statistics over the global batch",
    )

    g = p.add_argument_group("run")
    g.add_argument("--out", type=str, default=None, help="run folder; default runs/<timestamp>")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--seed", type=int, default=0, help="seeds the split, sampling and init")
    g.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="PATH",
        help="continue from PATH (a .pt file or a run folder); alone: from --out",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --out that holds one, deleting that run's files first",
    )
    g.add_argument(
        "--config",
        type=str,
        default=None,
        metavar="FILE",
        help="replay a run's args.json, or a YAML file with the same keys; flags given here win",
    )
    g.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (what args.json would hold) and exit",
    )
    g.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="--print-config's format; both replay with --config",
    )
    g.add_argument("--monitor", default="val/acc", help="metric for best.pt and early stopping")
    g.add_argument("--top-k", type=int, default=1, help="also keep the k best epochs' checkpoints")
    g.add_argument(
        "--early-stopping",
        type=int,
        default=0,
        metavar="PATIENCE",
        help="stop after this many epochs without improvement; 0 disables",
    )
    g.add_argument(
        "--min-delta",
        type=float,
        default=0.0,
        help="for --early-stopping: an improvement must beat the best by more than this",
    )
    g.add_argument("--sanity-steps", type=int, default=2, help="val batches before training")
    g.add_argument(
        "--quiet",
        action="store_true",
        help="only the epoch lines, warnings and the final summary",
    )
    g.add_argument(
        "--verbose",
        action="store_true",
        help="everything: the model table, the sampler table every epoch, every file written",
    )

    g = p.add_argument_group("outputs (each on by default)")
    for name, what in (
        ("confusion-matrix", "per-epoch confusion matrix heatmaps"),
        ("dataset-stats", "class distribution table"),
        ("model-info", "model summary"),
        ("history-plots", "loss/accuracy/lr curves"),
        ("sampler-stats", "per-epoch sampler class counts"),
        ("samples", "predicted-vs-true image grids"),
        ("export", "ONNX export at the end, verified with onnxruntime"),
        ("report", "report.html: the whole run on one page, rewritten each epoch"),
    ):
        g.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=True, help=what)
    g.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="TensorBoard event files in OUT/tensorboard (off by default; needs the "
        "[tensorboard] extra)",
    )

    g = p.add_argument_group("metrics and validation")
    g.add_argument(
        "--val-every",
        type=float,
        default=1.0,
        metavar="F|N",
        help="also validate every fraction F of an epoch (0 < F <= 1, e.g. 0.25) or every N "
        "optimizer steps (integer N > 1); best.pt and early stopping follow each validation",
    )
    g.add_argument(
        "--log-every",
        type=int,
        default=50,
        metavar="N",
        help="a steps.csv row (loss, lr, img/s) every N optimizer steps; 0: no steps.csv",
    )
    g.add_argument(
        "--per-class",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="per_class.csv: accuracy, precision, recall, F1 and support per class",
    )
    g.add_argument(
        "--calibration",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="plots/reliability.png, the reliability diagram (val/ece is always in metrics.csv)",
    )

    g = p.add_argument_group("Weights & Biases (needs the [wandb] extra)")
    g.add_argument(
        "--wandb",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="log the run to W&B (offline with WANDB_MODE=offline); files in OUT/wandb",
    )
    g.add_argument("--wandb-project", default=None, metavar="NAME", help="W&B project")
    g.add_argument("--wandb-name", default=None, metavar="NAME", help="W&B run name")
    g.add_argument(
        "--wandb-tags", default=None, metavar="TAG,...", help="comma-separated W&B run tags"
    )
    g.add_argument(
        "--wandb-artifacts",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="upload model.onnx, export_report.json and report.html as W&B artefacts",
    )
    return p


def lr_value(text: str) -> float | str:
    """``--lr``: a number, or ``auto`` (the LR range test picks it)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def parse_config(
    argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> dict[str, Any]:
    """Parse flags; --config (or a resumed run's args.json) supplies defaults, flags win.

    ``parser`` is ``build_parser()`` unless another tool extends it (tools/lr_find.py).
    """
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    replay: Path | None = Path(args.config) if args.config else None
    if replay is None and args.resume not in (None, "auto"):
        # Resuming a run folder replays its own configuration.
        run_dir = run_dir_of(Path(args.resume))
        replay = run_dir / "args.json" if (run_dir / "args.json").is_file() else None
    elif replay is None and args.resume == "auto" and args.out:
        candidate = Path(args.out) / "args.json"
        replay = candidate if candidate.is_file() else None
    if replay is not None:
        raw = read_config_file(replay)
        raw.pop(PIPELINE_KEY, None)
        saved = check_config_values(raw, parser, replay)
        for key in NOT_SAVED:
            saved.pop(key, None)
        if not args.config:
            # A resumed run stays in the folder resumed from, wherever it has been moved to.
            saved.pop("out", None)
        parser.set_defaults(**saved)
        args = parser.parse_args(argv)
    config = vars(args)
    defaults = DEMO_DEFAULTS if config["data"] is None else DATA_DEFAULTS
    if config["recipe"]:
        given = explicit_flags(argv)
        kept = given if replay is None or "recipe" in given else given | set(saved)
        for key, value in RECIPES[config["recipe"]](defaults).items():
            if key not in kept:
                config[key] = value
    for key, value in defaults.items():
        if config[key] is None:
            config[key] = value
    if config["wandb"] and importlib.util.find_spec("wandb") is None:
        raise ConfigError(WANDB_MISSING)  # before anything is scanned or written
    if config["quiet"] and config["verbose"]:
        raise ConfigError("--quiet and --verbose ask for opposite things; pass one of them")
    if config["class_weights"] and config["sampler"] == "none":
        config["sampler"] = "manual"
    problem = val_every_problem(config["val_every"])
    if problem:
        raise ConfigError(
            f"--val-every {problem}: e.g. --val-every 0.25 validates four times an epoch, "
            "--val-every 500 every 500 optimizer steps"
        )
    if config["log_every"] < 0:
        raise ConfigError(
            f"--log-every must be >= 0 (0 turns steps.csv off), got {config['log_every']}"
        )
    if config["model"] not in MODELS and not config["model"].startswith(TIMM_PREFIX):
        # Checked here, not only in build_model, so a typo fails before the data is scanned.
        raise ConfigError(
            f"--model {config['model']!r} is not one of {', '.join(sorted(MODELS))}, "
            f"nor {TIMM_PREFIX}<name> for a timm model"
        )
    return config


def explicit_flags(argv: list[str] | None) -> set[str]:
    """The config keys of the flags given on the command line (not left to their defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def parse_class_weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    weights = {}
    for item in text.split(","):
        name, sep, value = item.rpartition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            name = ""
        if not sep or not name.strip():
            raise ConfigError(
                f"--class-weights item {item!r} is not NAME=WEIGHT; e.g. --class-weights cat=2,dog=1"
            )
    return weights


def build_data(config: dict[str, Any], root: Path) -> ImageFolderData:
    """The run's data from its configuration: the tree or label file at ``root`` (tools/train.py
    and tools/lr_find.py build it alike)."""
    pipelines = None  # --transforms FILE.py: the user's own train and val pipelines
    if config["transforms"]:
        pipelines = load_transforms_file(config["transforms"], config["img_size"])
    return ImageFolderData(
        root,
        img_size=config["img_size"],
        batch_size=config["batch_size"],
        workers=config["workers"],
        val_fraction=config["val_fraction"],
        seed=config["seed"],
        crop_scale=config["crop_scale"],
        hflip=config["hflip"],
        color_jitter=config["color_jitter"],
        sampler=config["sampler"],
        class_weights=parse_class_weights(config["class_weights"]),
        cache=None if config["cache"] == "none" else config["cache"],
        max_bad_fraction=config["max_bad_fraction"],
        max_image_pixels=config["max_image_pixels"],
        decode=config["decode"],
        image_key=config["image_key"],
        label_key=config["label_key"],
        check_leakage=config["check_leakage"],
        verify=config["verify"],
        augment=augment_from_config(config),
        train_transform=pipelines[0] if pipelines else None,
        val_transform=pipelines[1] if pipelines else None,
    )


def build_loss_from_config(config: dict[str, Any], data: ImageFolderData) -> torch.nn.Module:
    """The run's loss from its configuration (tools/train.py and tools/lr_find.py alike)."""
    return build_loss(
        config["loss"],
        label_smoothing=config["label_smoothing"],
        class_counts=data.class_counts["train"] if config["loss_weights"] == "balanced" else None,
    )
