"""Val accuracy of each ``--recipe`` against the plain defaults, over seeds, on the built-in demo
and on a small real dataset: scikit-learn's handwritten digits (1,797 8x8 scans shipped with
the package, ``pip install scikit-learn``), written once as an ImageFolder tree of 32 px PNGs.

python tools/benchmarks/recipes_bench.py                    # 3 seeds, both datasets, full epochs
python tools/benchmarks/recipes_bench.py --epoch-scale 0.2  # each preset's epochs x 0.2

Every preset trains small_cnn, so the presets differ only in what the recipe sets. finetune's
point is pretrained weights, which small_cnn does not have (and which cannot be downloaded
offline): its row runs the recipe with ``--no-pretrained``, i.e. only its lower learning rate,
EMA and lighter augmentation. Prints a Markdown table (mean and spread of the final epoch's
val/acc) and writes every run's figures to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python tools/benchmarks/recipes_bench.py), not as a module
    # Python put tools/benchmarks/ first on sys.path: the repository root takes its place, so
    # the tools import as the tools package and no file in tools/benchmarks/ shadows a package.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parents[1]), *(p for p in sys.path if Path(p).resolve() != _here)]

import torch
from PIL import Image

from tools.train_config import parse_config
from trainer.data.demo import demo_dataset
from trainer.errors import ConfigError

PRESETS: dict[str, list[str]] = {
    "defaults": [],
    "quick": ["--recipe", "quick"],
    "finetune (no weights)": ["--recipe", "finetune", "--no-pretrained"],
    "scratch": ["--recipe", "scratch"],
}
COMMON = ["--model", "small_cnn", "--device", "cpu", "--quiet", "--sanity-steps", "0",
          "--no-confusion-matrix", "--no-dataset-stats", "--no-model-info", "--no-history-plots",
          "--no-sampler-stats", "--no-samples", "--no-export", "--no-report"]  # fmt: skip
# Digits are 8x8 scans: shown at 32 px, no flips (a mirrored 2 is no 2), gentle crops.
DIGITS_FLAGS = ["--img-size", "32", "--batch-size", "64", "--no-hflip", "--crop-scale", "0.5"]


def digits_tree(root: Path) -> Path:
    """scikit-learn's digits as ``root/{train,val}/<digit>/<i>.png`` (every 5th image in val)."""
    if (root / ".complete").is_file():
        return root
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ConfigError("the digits dataset needs scikit-learn: pip install scikit-learn") from e
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / ("val" if i % 5 == 0 else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (img * (255 / 16)).round().astype("uint8")
        Image.fromarray(pixels).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR).save(
            folder / f"{i}.png"
        )
    (root / ".complete").touch()
    return root


def final_val_acc(out: Path) -> tuple[float, float]:
    """The last epoch's val/acc and the best one, from the run's metrics.csv."""
    with open(out / "metrics.csv", newline="") as f:
        accs = [float(r["val/acc"]) for r in csv.DictReader(f)]
    return accs[-1], max(accs)


def run_one(
    data_flags: list[str], preset: list[str], seed: int, scale: float, out: Path
) -> dict[str, Any]:
    from tools import train

    argv = [*data_flags, *COMMON, *preset, "--seed", str(seed), "--out", str(out), "--overwrite"]
    epochs = max(1, round(parse_config(argv)["epochs"] * scale))
    t0 = time.perf_counter()
    code = train.main([*argv, "--epochs", str(epochs)])
    if code != 0:
        raise SystemExit(f"training failed ({code}): {' '.join(argv)}")
    final, best = final_val_acc(out)
    return {
        "epochs": epochs,
        "val_acc": final,
        "best_val_acc": best,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--datasets", nargs="+", choices=("demo", "digits"), default=["demo", "digits"])
    p.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=list(PRESETS))
    p.add_argument("--epoch-scale", type=float, default=1.0, help="each preset's epochs times this")
    p.add_argument("--workers", type=int, default=1, help="loader workers per run")
    p.add_argument("--demo-size", type=int, default=64, help="--img-size of the demo runs")
    p.add_argument("--out", type=Path, default=Path("runs/recipes_bench"))
    args = p.parse_args(argv)
    data_flags = {
        "demo": ["--workers", str(args.workers), "--img-size", str(args.demo_size)],
        "digits": [
            "--data",
            str(digits_tree(args.out / "digits_tree")),
            "--workers",
            str(args.workers),
            *DIGITS_FLAGS,
        ],
    }
    if "demo" in args.datasets:
        demo_dataset()
    results: list[dict[str, Any]] = []
    # Seeds outermost: a bench cut short still has every preset on the seeds it finished.
    for seed in args.seeds:
        for dataset in args.datasets:
            for name in args.presets:
                out = args.out / "runs" / f"{dataset}-{name.split()[0]}-{seed}"
                r = run_one(data_flags[dataset], PRESETS[name], seed, args.epoch_scale, out)
                results.append({"dataset": dataset, "preset": name, "seed": seed, **r})
                print(f"{dataset:7s} {name:22s} seed {seed}: val/acc {r['val_acc']:.4f} "
                      f"({r['epochs']} epochs, {r['seconds']:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
                (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results, args))
    return 0


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown: one row per preset, per dataset the mean and min-max of the final val/acc."""
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    head = (
        "| preset | " + " | ".join(f"{d}: val/acc mean (min-max), epochs" for d in datasets) + " |"
    )
    lines = [head, "|---" * (len(datasets) + 1) + "|"]
    for name in dict.fromkeys(r["preset"] for r in results):
        cells = []
        for d in datasets:
            rs = [r for r in results if r["dataset"] == d and r["preset"] == name]
            accs = [r["val_acc"] for r in rs]
            cells.append(
                f"{statistics.mean(accs):.3f} ({min(accs):.3f}-{max(accs):.3f}), {rs[0]['epochs']}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"seeds {args.seeds}, epoch scale {args.epoch_scale}, {platform.machine()} "
                 f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
