"""Train an image classifier on an ImageFolder tree (or, with no --data, on the built-in demo).

python tools/train.py --data DIR [--model resnet18 --pretrained --epochs 20 ...]
python tools/train.py                         # demo: drawn shapes, a small CNN, ~2 min on a CPU
python tools/train.py --resume runs/NAME      # continue a run where it stopped
torchrun --nproc_per_node 2 tools/train.py --data DIR     # DDP: one process per GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from runtime import steady_malloc

from hooks import default_hooks
from trainer.data import ImageFolderData
from trainer.data.demo import DATA_DEFAULTS, DEMO_DEFAULTS, demo_dataset
from trainer.device import resolve_device
from trainer.distributed import (
    barrier,
    broadcast_object,
    destroy_distributed,
    get_local_rank,
    init_distributed,
    is_global_zero,
)
from trainer.engine import Engine
from trainer.errors import ConfigError, NonFiniteLossError, OutputError, UserError
from trainer.export import ExportVerificationError
from trainer.io import atomic_write_json
from trainer.losses import build_loss
from trainer.models import MODELS, TIMM_PREFIX, build_model
from trainer.rng import seed_everything

log = logging.getLogger("trainer")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/train.py",
        description="Train an image classifier on an ImageFolder tree "
        "(DIR/train/<class>/*, DIR/val/<class>/*, optional DIR/test/<class>/*).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        type=str,
        default=None,
        help="ImageFolder root; omitted: the built-in demo dataset of drawn shapes",
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
        action="store_true",
        help="start from ImageNet weights, torchvision's or timm's (downloads once)",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="epochs (demo: 15, else 20)")
    g.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (demo: 3e-3, else 1e-3)"
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
        "--config",
        type=str,
        default=None,
        metavar="FILE",
        help="replay a run's args.json; flags given here win",
    )
    g.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (what args.json would hold) as JSON and exit",
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
    g.add_argument("--quiet", action="store_true", help="no progress bars")

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
    return p


def parse_config(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags; --config (or a resumed run's args.json) supplies defaults, flags win."""
    parser = build_parser()
    args = parser.parse_args(argv)
    replay: Path | None = Path(args.config) if args.config else None
    if replay is None and args.resume not in (None, "auto"):
        # Resuming a run folder replays its own configuration.
        run_dir = _run_dir_of(Path(args.resume))
        replay = run_dir / "args.json" if (run_dir / "args.json").is_file() else None
    elif replay is None and args.resume == "auto" and args.out:
        candidate = Path(args.out) / "args.json"
        replay = candidate if candidate.is_file() else None
    if replay is not None:
        try:
            saved = json.loads(replay.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"--config {replay} does not exist; pass a run's args.json") from e
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--config {replay} is not readable JSON ({e})") from e
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(saved) - known)
        if unknown:
            raise ConfigError(f"--config {replay} has unknown keys {unknown}; is it an args.json?")
        saved.pop("resume", None)
        saved.pop("config", None)
        saved.pop("print_config", None)
        parser.set_defaults(**saved)
        args = parser.parse_args(argv)
    config = vars(args)
    defaults = DEMO_DEFAULTS if config["data"] is None else DATA_DEFAULTS
    for key, value in defaults.items():
        if config[key] is None:
            config[key] = value
    if config["class_weights"] and config["sampler"] == "none":
        config["sampler"] = "manual"
    if config["model"] not in MODELS and not config["model"].startswith(TIMM_PREFIX):
        # Checked here, not only in build_model, so a typo fails before the data is scanned.
        raise ConfigError(
            f"--model {config['model']!r} is not one of {', '.join(sorted(MODELS))}, "
            f"nor {TIMM_PREFIX}<name> for a timm model"
        )
    return config


def _run_dir_of(path: Path) -> Path:
    return path.parent.parent if path.suffix == ".pt" else path


def _parse_class_weights(text: str | None) -> dict[str, float] | None:
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


def run(config: dict[str, Any]) -> Engine:
    """Build data, model, engine and hooks from a parsed config and train.

    Under torchrun, joins the process group first (so the data shards from the start) and
    leaves it at the end, on errors too.
    """
    owns_group = init_distributed(config["device"])
    if not is_global_zero():
        logging.getLogger("trainer").setLevel(logging.WARNING)  # rank 0 tells the story
    try:
        return _train(config)
    finally:
        if owns_group:
            destroy_distributed()


def _train(config: dict[str, Any]) -> Engine:
    resume = config["resume"]
    if resume == "auto":
        if not config["out"]:
            raise ConfigError("--resume without a path needs --out RUN_FOLDER (or --resume PATH)")
        resume = config["out"]
    if resume is not None and not config["out"]:
        config["out"] = str(_run_dir_of(Path(resume)))
    # Rank 0's name for the run folder: the ranks' clocks (and machines) differ.
    out = Path(broadcast_object(config["out"] or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"))
    config["out"] = str(out)

    if config["decode"] == "gpu" and resolve_device(config["device"]).type != "cuda":
        raise ConfigError(
            f"--decode gpu decodes JPEGs with nvjpeg on a CUDA device, but the device is "
            f"{resolve_device(config['device'])}; drop --decode gpu, or use --device cuda"
        )
    if config["data"] is None and get_local_rank() == 0:
        demo_dataset()  # one process per machine generates it; the others wait, then reuse it
    barrier()
    root = Path(config["data"]) if config["data"] else demo_dataset()
    if config["data"] is None:
        log.info("no --data given: training on the built-in demo dataset at %s", root)
    data = ImageFolderData(
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
        class_weights=_parse_class_weights(config["class_weights"]),
        cache=None if config["cache"] == "none" else config["cache"],
        max_bad_fraction=config["max_bad_fraction"],
        decode=config["decode"],
    )
    log.info(data.summary())
    saved = {k: v for k, v in config.items() if k not in ("resume", "config", "print_config")}
    if is_global_zero():
        try:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "args.json", saved)
            atomic_write_json(out / "data_report.json", data.report())
            data.save_labels_mapping(out / "labels_mapping.json")
        except OSError as e:
            raise OutputError(
                f"cannot write to the run folder {out} ({e.strerror or e}); "
                "choose a writable --out with free space"
            ) from e

    seed_everything(config["seed"])  # the model's initial weights too
    model = build_model(config["model"], data.num_classes, pretrained=config["pretrained"])
    loss = build_loss(
        config["loss"],
        label_smoothing=config["label_smoothing"],
        class_counts=data.class_counts["train"] if config["loss_weights"] == "balanced" else None,
    )
    hooks = default_hooks(
        out,
        monitor=config["monitor"],
        top_k=config["top_k"],
        early_stopping=config["early_stopping"],
        min_delta=config["min_delta"],
        progress=not config["quiet"],
        confusion_matrix=config["confusion_matrix"],
        dataset_stats=config["dataset_stats"],
        model_info=config["model_info"],
        history_plots=config["history_plots"],
        sampler_stats=config["sampler_stats"],
        samples=config["samples"],
        export=config["export"],
        report=config["report"],
        tensorboard=config["tensorboard"],
    )
    engine = Engine(
        model,
        data,
        max_epochs=config["epochs"],
        loss=loss,
        lr=config["lr"],
        weight_decay=config["weight_decay"],
        warmup_epochs=config["warmup_epochs"],
        precision=config["precision"],
        ema_decay=config["ema_decay"],
        grad_clip=config["grad_clip"],
        accumulate=config["accumulate"],
        device=config["device"],
        hooks=hooks,
        seed=config["seed"],
        sanity_steps=config["sanity_steps"],
        monitor=config["monitor"],
        mode="min" if config["monitor"].endswith("loss") else "max",
        compile=config["compile"],
        sync_bn=config["sync_bn"],
        args=saved,
    )
    log.info(
        "model %s on %s, precision %s, %d epochs; run folder %s",
        config["model"],
        engine.device,
        engine.precision,
        config["epochs"],
        out,
    )
    t0 = time.perf_counter()
    gc.freeze()  # what exists now stays out of the collector's scans (tools/runtime.py)
    try:
        engine.fit(resume=resume)
    finally:
        gc.unfreeze()
    if engine.is_global_zero:
        _summary(engine, out, time.perf_counter() - t0)
    return engine


def _summary(engine: Engine, out: Path, seconds: float) -> None:
    s = engine.state
    console = Console(stderr=True)
    console.print(
        f"[bold]done[/] in {seconds:.1f} s, {len(s.history)} epoch(s)"
        + (f" ({s.stop_reason})" if s.stop_reason else "")
    )
    if s.best is not None:
        best = s.best
        parts = [f"best epoch {int(best['epoch']) + 1}"]
        parts += [
            f"{k} {best[k]:.4f}" for k in ("val/acc", "val/acc_top5", "val/loss") if k in best
        ]
        console.print("  " + ", ".join(parts))
    console.print(f"  run folder: {out}")
    for name in (
        "metrics.csv",
        "labels_mapping.json",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "model.onnx",
        "plots",
    ):
        if (out / name).exists():
            console.print(f"    {out / name}")


def main(argv: list[str] | None = None) -> int:
    steady_malloc()  # CPU training: far fewer page faults per step (tools/runtime.py)
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(show_path=False, console=Console(stderr=True))],
    )
    config: dict[str, Any] = {}
    try:
        config = parse_config(argv)
        if config.pop("print_config"):
            # Exactly what args.json would hold, so the output replays with --config.
            saved = {k: v for k, v in config.items() if k not in ("resume", "config")}
            print(json.dumps(saved, indent=2, ensure_ascii=False))
            return 0
        run(config)
    except ExportVerificationError as e:
        print(
            f"error: training finished, but the ONNX export failed verification: {e} "
            f"The checkpoints in {config.get('out')}/checkpoints are kept; re-export with "
            "tools/export.py, or train with --no-export.",
            file=sys.stderr,
        )
        return 1
    except UserError as e:
        # The user's input needs fixing: say what and how, without a traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        out = config.get("out")
        print(
            f"interrupted. {out}/checkpoints/interrupted.pt holds the weights as they were; "
            f"--resume --out {out} continues exactly from the last finished epoch.",
            file=sys.stderr,
        )
        return getattr(e, "exit_code", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
