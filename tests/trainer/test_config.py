"""trainer.config: each setting declared once, and everything derived from the declarations
(flags, --config keys, args.json, the constructors' arguments, docs/cli.md)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from hooks import default_hooks
from hooks.early_stopping import EarlyStoppingHook
from hooks.onnx_export import OnnxExportHook
from hooks.run_folder import RunFolderHook
from trainer.config import (
    DATA,
    GROUPS,
    NOT_SAVED,
    AugmentConfig,
    TrainConfig,
    setting,
)
from trainer.config_cli import build_parser, check_config_values, markdown_reference, parse_config
from trainer.data import ImageFolderData
from trainer.data.augment import Augment
from trainer.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_docs_cli_md_is_generated_from_the_declarations() -> None:
    expected = markdown_reference()
    assert DOCS.read_text(encoding="utf-8") == expected, (
        "docs/cli.md is out of date: run `python -m trainer.config_cli > docs/cli.md`"
    )
    for f in dataclasses.fields(TrainConfig):
        assert f"`--{f.name.replace('_', '-')}" in expected, f.name


def test_every_setting_is_a_flag_and_a_config_key() -> None:
    parser = build_parser()
    defaults = vars(parser.parse_args([]))
    fields = [f for g in GROUPS for f in dataclasses.fields(g)]
    assert set(defaults) == {f.name for f in fields}
    assert set(TrainConfig().to_dict()) == {f.name for f in fields} - set(NOT_SAVED)
    assert set(NOT_SAVED) == {"resume", "overwrite", "config", "print_config", "format"}


def test_augment_settings_are_augments_fields() -> None:
    """AugmentConfig declares the flags of Augment's fields: same names, same defaults."""
    ours = {f.name: f.default for f in dataclasses.fields(AugmentConfig) if f.name != "transforms"}
    assert ours == {f.name: f.default for f in dataclasses.fields(Augment)}
    cfg = TrainConfig(mixup=0.2, auto_augment="randaugment")
    assert cfg.augment() == Augment(mixup=0.2, auto_augment="randaugment")


def test_constructor_arguments_come_from_the_declarations() -> None:
    cfg = TrainConfig(data="flowers", epochs=3, cache="ram", class_weights="a=2,b=1").resolved()
    data = cfg.data_kwargs()
    assert data["img_size"] == 224 and data["cache"] == "ram" and data["sampler"] == "manual"
    assert data["class_weights"] == {"a": 2.0, "b": 1.0} and isinstance(data["augment"], Augment)
    assert TrainConfig().data_kwargs()["cache"] is None  # --cache none
    engine = cfg.engine_kwargs()
    assert engine["max_epochs"] == 3 and engine["lr"] == 1e-3 and engine["mode"] == "max"
    assert "epochs" not in engine and "img_size" not in engine
    assert TrainConfig(monitor="val/loss").engine_kwargs()["mode"] == "min"
    assert cfg.hook_kwargs()["top_k"] == 1 and "lr" not in cfg.hook_kwargs()
    demo = TrainConfig().resolved()
    assert (demo.model, demo.img_size, demo.epochs) == ("small_cnn", 64, 15)


def test_a_new_setting_is_one_declaration() -> None:
    """A setting declared once is a flag, a --config key, a printed key and a constructor
    argument, with nothing else edited."""

    @dataclass
    class Extra:
        group: ClassVar[str] = "data"
        min_image_side: int = setting(8, "smallest image side, in pixels", to=(DATA,))

    @dataclass
    class WithExtra(TrainConfig, Extra):
        pass

    groups = (*GROUPS, Extra)
    assert "--min-image-side" in build_parser(groups).format_help()
    config = parse_config(["--min-image-side", "99"], groups)
    assert config["min_image_side"] == 99
    assert check_config_values({"min_image_side": "7"}, Path("x.yaml"), groups) == {
        "min_image_side": 7
    }
    assert WithExtra.from_dict(config).data_kwargs()["min_image_side"] == 99
    assert WithExtra().to_dict()["min_image_side"] == 8
    assert "`--min-image-side MIN_IMAGE_SIDE`" in markdown_reference(groups)


@pytest.mark.parametrize("lr", [-1.0, 0.0, math.nan, math.inf, "fast"])
def test_a_bad_lr_is_refused_from_python_too(lr: float | str) -> None:
    with pytest.raises(ConfigError, match="expected a number|--lr must be"):
        TrainConfig(lr=lr)


def test_other_checks_run_for_every_source() -> None:
    with pytest.raises(ConfigError, match="--val-every must be a finite number above 0"):
        TrainConfig(val_every=0)
    with pytest.raises(ConfigError, match="--log-every must be a number >= 0"):
        TrainConfig(log_every=-1)
    with pytest.raises(ConfigError, match="--model 'resnet19' is not one of"):
        TrainConfig(model="resnet19")
    with pytest.raises(ConfigError, match="--log-every must be a number >= 0"):
        parse_config(["--log-every", "-2"])


@pytest.mark.parametrize(
    ("name", "bad", "good"),
    [
        ("epochs", [0, -1], [1, 30]),
        ("accumulate", [0, -1], [1, 4]),
        ("ema_decay", [1.0, 1.5, -0.1, math.nan], [0.0, 0.999]),
        ("warmup_epochs", [-1.0, math.nan], [0.0, 2.5]),
        ("label_smoothing", [1.0, 1.2, -0.1], [0.0, 0.1]),
        ("weight_decay", [-1.0, math.nan], [0.0, 0.05]),
        ("grad_clip", [-1.0, math.inf], [0.0, 1.0]),
        ("mixup", [-1.0, math.inf, math.nan], [0.0, 0.2]),
        ("cutmix", [-1.0, math.nan], [0.0, 1.0]),
        ("top_k", [-1], [0, 3]),
        ("early_stopping", [-1], [0, 5]),
        ("min_delta", [-0.1, math.nan], [0.0, 0.01]),
        ("sanity_steps", [-1], [0, 2]),
    ],
)
def test_numbers_out_of_their_range_are_refused_naming_the_flag(
    name: str, bad: list[float], good: list[float]
) -> None:
    # Each once crashed later with a traceback (accumulate 0, ema-decay 1.5, warmup nan,
    # label-smoothing 1.2, cutmix nan) or trained on nonsense (epochs 0, weight-decay -1).
    flag = "--" + name.replace("_", "-")
    for value in bad:
        with pytest.raises(ConfigError, match=f"^{flag} must be a number"):
            TrainConfig(**{name: value})
        with pytest.raises(ConfigError, match=f"^{flag} must be a number"):
            parse_config([flag, str(value)])
    for value in good:
        assert getattr(TrainConfig(**{name: value}), name) == value


@pytest.mark.parametrize("crop_pct", [0, -0.5, 1.5, math.nan, True, "0.9"])
def test_crop_pct_outside_0_1_is_refused(crop_pct: object) -> None:
    with pytest.raises(ConfigError, match=r"--crop-pct: crop_pct must be a number in \(0, 1\]"):
        TrainConfig(crop_pct=crop_pct)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"crop_pct must be a number in \(0, 1\]"):
        ImageFolderData("unused", crop_pct=crop_pct)  # type: ignore[arg-type]


def test_default_hooks_takes_a_config_and_single_settings(tmp_path: Path) -> None:
    names = [type(h).__name__ for h in default_hooks(tmp_path, export=False)]
    assert names[0] == RunFolderHook.__name__ and OnnxExportHook.__name__ not in names
    cfg = TrainConfig(early_stopping=4, monitor="val/loss", report=False)
    hooks = default_hooks(tmp_path, cfg, min_delta=0.5)
    stop = next(h for h in hooks if isinstance(h, EarlyStoppingHook))
    assert (stop.patience, stop.min_delta, stop.mode) == (4, 0.5, "min")
    assert "ReportHook" not in [type(h).__name__ for h in hooks]
    with pytest.raises(TypeError, match="exprot"):
        default_hooks(tmp_path, exprot=False)


def test_print_config_keys_replay(tmp_path: Path) -> None:
    cfg = tmp_path / "args.json"
    cfg.write_text(json.dumps(TrainConfig(epochs=2).resolved().to_dict()))
    assert parse_config(["--config", str(cfg)])["epochs"] == 2
