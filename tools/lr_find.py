"""The LR range test from the command line, with tools/train.py's data and model flags.

python tools/lr_find.py --data DIR [--model resnet18 --img-size 224 ...] [--out DIR]
python tools/lr_find.py --data DIR --min-lr 1e-6 --max-lr 1 --steps 200

Trains from the model's initial weights (ImageNet's with --pretrained) for up to --steps
batches with the learning rate growing exponentially from --min-lr to --max-lr, and stops
early when the smoothed loss diverges (``trainer.lr_find``). Writes ``lr_find.csv`` (step, lr,
loss, smoothed loss) and ``lr_find.png`` in --out (default: the current folder) and prints the
suggested lr: where the smoothed loss falls fastest. ``tools/train.py --lr auto`` runs the same
test first and trains with its suggestion.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

if not __package__:  # run as a file (python tools/lr_find.py), not imported as tools.lr_find
    # Python put tools/ first on sys.path: the repository root takes its place, so
    # the tools import as the tools package and no file in tools/ shadows a package.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p).resolve() != _here)]

from rich.console import Console
from rich.logging import RichHandler

from hooks.render.plots import save_png
from tools.train_config import build_data, build_loss_from_config, parse_config
from trainer.config import GROUPS, TrainConfig, setting
from trainer.data import ImageFolderData
from trainer.data.demo import demo_dataset
from trainer.distributed import is_global_zero
from trainer.engine import Engine
from trainer.errors import UserError
from trainer.io import atomic_write_csv
from trainer.lr_find import LRFindResult, lr_find
from trainer.models import build_model
from trainer.rng import seed_everything
from trainer.run_files import LR_FIND_CSV, LR_FIND_PNG

log = logging.getLogger("trainer")

# The range fastai and Lightning sweep, and Lightning's step count.
MIN_LR, MAX_LR, STEPS = 1e-7, 10.0, 100


@dataclass
class RangeTestConfig:
    """The range test's own settings; train.py's data, model and optimisation settings shape
    the test, the run's own (--epochs, --resume, --early-stopping, the outputs, ...) are
    ignored."""

    group: ClassVar[str] = "range test"

    min_lr: float = setting(MIN_LR, "the first step's lr")
    max_lr: float = setting(MAX_LR, "the last step's lr")
    steps: int = setting(STEPS, "batches at most (stops early on divergence)")


PARSER_OPTIONS: dict[str, Any] = {
    "groups": (*GROUPS, RangeTestConfig),
    "prog": "tools/lr_find.py",
    "description": "LR range test: train with an exponentially growing learning rate, plot "
    "the smoothed loss against it, and suggest the lr where the loss falls fastest. Takes "
    "train.py's data and model flags.",
    "help_overrides": {
        "out": "folder for lr_find.csv and lr_find.png; default: the current folder"
    },
}


def range_test(
    cfg: TrainConfig,
    data: ImageFolderData,
    model: Any,
    *,
    min_lr: float = MIN_LR,
    max_lr: float = MAX_LR,
    steps: int = STEPS,
) -> LRFindResult:
    """Run ``trainer.lr_find`` on an engine built as train.py builds it (loss, precision, clip,
    weight decay, device), without hooks or EMA; model and data are left as they were."""
    settings = cfg.engine_kwargs()
    settings.update(
        lr=cfg.lr if isinstance(cfg.lr, float) else 1e-3,  # replaced by the ramp
        ema_decay=0.0,
        sanity_steps=0,
    )
    engine = Engine(model, data, loss=build_loss_from_config(cfg, data), **settings)
    try:
        return lr_find(engine, min_lr=min_lr, max_lr=max_lr, num_steps=steps)
    finally:
        # Its loader's workers and (under torchrun) its DDP wrapper go now, before the run's.
        del engine
        gc.collect()


def write_results(result: LRFindResult, out: Path) -> list[Path]:
    """``out/lr_find.csv`` and ``out/lr_find.png``, written atomically; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / LR_FIND_CSV, out / LR_FIND_PNG
    rows = result.rows()
    atomic_write_csv(csv_path, list(rows[0]) if rows else [], [list(r.values()) for r in rows])
    save_png(plot_lr_find(result), png_path)
    return [csv_path, png_path]


def plot_lr_find(result: LRFindResult) -> Any:
    """The raw and smoothed loss against the lr (log scale), the suggestion marked."""
    from matplotlib.figure import Figure  # deferred: train.py imports this module

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed loss")
    if result.suggestion is not None:
        i = result.lrs.index(result.suggestion)
        ax.plot([result.suggestion], [result.smoothed[i]], "o", color="C3", markersize=8,
                label=f"suggested lr {result.suggestion:.3g}")  # fmt: skip
    finite = [v for v in result.smoothed if v == v and abs(v) != float("inf")]
    if finite:  # the divergence would squash the interesting part of the curve
        low, high = min(finite), min(max(finite), 4 * min(finite) + 1e-12)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low) + 1e-12)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    stop = "stopped: the loss diverged" if result.diverged else "full ramp"
    ax.set_title(f"LR range test, {len(result.lrs)} steps ({stop})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, markup=False, console=Console(stderr=True))],
    )
    try:
        config = parse_config(argv, **PARSER_OPTIONS)
        if config.pop("print_config"):
            print(json.dumps(config, indent=2, ensure_ascii=False))
            return 0
        cfg = TrainConfig.from_dict(config)
        root = Path(cfg.data) if cfg.data else demo_dataset()
        data = build_data(cfg, root)
        seed_everything(cfg.seed)  # the initial weights train.py would start from
        model = build_model(str(cfg.model), data.num_classes, pretrained=cfg.pretrained)
        result = range_test(
            cfg,
            data,
            model,
            min_lr=config["min_lr"],
            max_lr=config["max_lr"],
            steps=config["steps"],
        )
        if not is_global_zero():
            return 0
        paths = write_results(result, Path(config["out"] or "."))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write the results ({e}); choose a writable --out", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    if result.suggestion is None:
        print(
            f"no suggestion: only {len(result.lrs)} steps ran before the loss diverged; "
            "lower --min-lr or raise --steps, and look at the plot"
        )
        return 1
    print(f"suggested lr: {result.suggestion:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
