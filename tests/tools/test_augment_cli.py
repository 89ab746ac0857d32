"""tools/train.py's augmentation flags, --transforms and --recipe: they reach the run,
args.json records the pipelines, resume stays exact, and bad input exits 2 with a message."""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST_CLI, NO_OUTPUTS
from tests.tools.test_resume import assert_same_run, three_runs
from tools import train

AUGMENT = ["--auto-augment", "trivialaugment", "--random-erasing", "0.5", "--jpeg-quality", "30",
           "--blur", "0.5", "--noise", "0.5", "--downscale", "0.5", "--affine", "0.5",
           "--perspective", "0.5", "--mixup", "0.2", "--cutmix", "1.0"]  # fmt: skip
TRANSFORMS = """
from torchvision.transforms import v2

def train_transforms(img_size):
    return v2.Compose([v2.RandomResizedCrop(img_size, antialias=True), v2.RandomGrayscale(p=0.5)])

def val_transforms(img_size):
    return v2.Compose([v2.Resize(int(img_size / 0.875), antialias=True), v2.CenterCrop(img_size)])
"""


@pytest.fixture(autouse=True)
def _unfreeze_gc() -> Iterator[None]:
    yield
    gc.unfreeze()  # tools/train.py freezes the collector


def fit(tree: Path, out: Path, *flags: str) -> dict:
    base = ["--data", str(tree), "--out", str(out), "--epochs", "1", *FAST_CLI, *NO_OUTPUTS]
    assert train.main([*base, *flags]) == 0
    return json.loads((out / "args.json").read_text())


def test_augmentation_flags_reach_the_run_and_args_json_records_the_pipeline(
    tiny_tree: Path, tmp_path: Path
) -> None:
    args = fit(tiny_tree, tmp_path / "run", *AUGMENT)
    assert args["auto_augment"] == "trivialaugment" and args["cutmix"] == 1.0
    pipeline = args["pipeline"]
    assert pipeline["source"] == "built-in"
    for op in ("TrivialAugmentWide", "RandomErasing", "JPEG", "GaussianBlur", "GaussianNoise",
               "RandomDownscale", "RandomAffine", "RandomPerspective"):  # fmt: skip
        assert op in pipeline["train"], op
    assert "CenterCrop" in pipeline["val"]
    # args.json stays replayable: the record is not a flag.
    config = train.parse_config(["--config", str(tmp_path / "run" / "args.json")])
    assert config["mixup"] == 0.2 and "pipeline" not in config


def test_a_transforms_file_is_used_and_recorded(tiny_tree: Path, tmp_path: Path) -> None:
    f = tmp_path / "aug.py"
    # Resize(img_size) + CenterCrop(img_size): what --crop-pct 1.0 describes.
    f.write_text(TRANSFORMS.replace("int(img_size / 0.875)", "img_size"))
    args = fit(tiny_tree, tmp_path / "run", "--transforms", str(f), "--crop-pct", "1.0")
    pipeline = args["pipeline"]
    assert pipeline["source"] == str(f) and "RandomGrayscale" in pipeline["train"]
    assert pipeline["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    mapping = json.loads((tmp_path / "run" / "labels_mapping.json").read_text())
    assert args["crop_pct"] == mapping["crop_pct"] == 1.0 and mapping["resize_mode"] == "crop"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--jpeg-quality", "101"], "--jpeg-quality"),
        (["--random-erasing", "2"], "--random-erasing"),
        (["--transforms", "missing_tf.py"], "missing_tf.py"),
        (["--transforms", "TF_BAD_VAL"], "set those fields with --val-resize crop --crop-pct 1.0"),
        # The file's pipeline replaces the built-in one: flags it would ignore are refused.
        (["--transforms", "TF_GOOD", "--blur", "1", "--color-jitter", "0.4", "--no-hflip"],
         "--blur, --color-jitter, --no-hflip would not run"),
    ],
)
def test_bad_augmentation_input_exits_2_with_the_flag_named(
    tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
    expected: str,
) -> None:  # fmt: skip
    bad = tmp_path / "bad_val.py"
    bad.write_text(TRANSFORMS.replace("int(img_size / 0.875)", "img_size"))
    good = tmp_path / "good.py"
    good.write_text(TRANSFORMS)
    flags = [{"TF_BAD_VAL": str(bad), "TF_GOOD": str(good)}.get(f, f) for f in flags]
    out = tmp_path / "run"
    code = train.main(["--data", str(tiny_tree), "--out", str(out), *FAST_CLI, *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (out / "args.json").exists()


def test_resume_is_exact_with_every_augmentation_on(tmp_path: Path) -> None:
    """Workers, per-image augmentation, MixUp/CutMix, focal loss with class weights, the
    balanced sampler, EMA and fp16: interrupted and resumed equals straight, bitwise."""
    from tests.conftest import make_tree

    tree = make_tree(tmp_path / "tree", size=(20, 16))
    extra = [*AUGMENT, "--loss", "focal", "--loss-weights", "balanced"]

    three_runs(tree, tmp_path, 2, extra)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


# --------------------------------------------------------------------------------- recipes
def test_recipes_fill_defaults_and_explicit_flags_win() -> None:
    scratch = train.parse_config(["--recipe", "scratch"])
    assert scratch["auto_augment"] == "trivialaugment" and scratch["random_erasing"] == 0.25
    assert scratch["mixup"] == 0.2 and scratch["cutmix"] == 1.0
    assert scratch["label_smoothing"] == 0.1 and scratch["epochs"] == 30  # demo: 2 x 15
    mine = train.parse_config(["--recipe", "scratch", "--mixup", "0", "--epochs", "3"])
    assert mine["mixup"] == 0 and mine["epochs"] == 3 and mine["cutmix"] == 1.0
    tune = train.parse_config(["--data", "somewhere", "--recipe", "finetune"])
    assert tune["pretrained"] and tune["lr"] == 1e-4 and tune["ema_decay"] == 0.999
    assert tune["crop_scale"] == 0.35 and tune["model"] == "resnet18"
    demo = train.parse_config(["--recipe", "finetune", "--no-pretrained"])
    assert not demo["pretrained"] and demo["model"] == "resnet18"  # small_cnn has no weights
    assert train.parse_config(["--recipe", "quick"])["epochs"] == 5
    plain = train.parse_config([])
    assert plain["recipe"] is None and plain["mixup"] == 0 and plain["epochs"] == 15


def test_a_replayed_run_keeps_what_it_overrode_in_its_recipe(
    tiny_tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = fit(tiny_tree, out, "--recipe", "scratch", "--mixup", "0", "--epochs", "1")
    assert args["mixup"] == 0 and args["cutmix"] == 1.0 and args["epochs"] == 1
    resumed = train.parse_config(["--resume", str(out)])
    assert resumed["mixup"] == 0 and resumed["epochs"] == 1
    # A recipe named on the command line applies over a replayed config.
    other = train.parse_config(["--config", str(out / "args.json"), "--recipe", "quick"])
    assert other["epochs"] == 5 and other["mixup"] == 0
