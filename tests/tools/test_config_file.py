"""--config in YAML or JSON, --print-config --format yaml, and the errors a config file gets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools import train
from trainer.config_cli import build_parser
from trainer.models import MODELS


def test_yaml_config_sets_what_args_json_would(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    # 3e-3 is a string to YAML 1.1 (PyYAML); it is read as the number the flag takes.
    cfg.write_text("epochs: 3\nlr: 3e-3\nmodel: small_cnn\nhflip: false\nprecision: 32\n")
    config = train.parse_config(["--config", str(cfg)])
    assert config["epochs"] == 3 and config["lr"] == 0.003 and config["hflip"] is False
    assert config["precision"] == "32"
    # Flags on the command line still win over the file.
    assert train.parse_config(["--config", str(cfg), "--epochs", "5"])["epochs"] == 5


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_print_config_yaml_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    argv = ["--epochs", "4", "--lr", "0.01", "--sampler", "balanced", "--no-hflip"]
    assert train.main([*argv, "--print-config", "--format", "yaml"]) == 0
    printed = capsys.readouterr().out
    as_yaml = yaml.safe_load(printed)
    assert as_yaml["epochs"] == 4 and as_yaml["sampler"] == "balanced"
    assert "format" not in as_yaml and "print_config" not in as_yaml
    # Edited by hand, then replayed: the edit is the only difference.
    cfg = tmp_path / f"exp{suffix}"
    cfg.write_text(printed.replace("epochs: 4", "epochs: 6"))
    assert train.main(["--config", str(cfg), "--print-config", "--format", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {**as_yaml, "epochs": 6}
    # The same configuration as JSON (what args.json holds).
    assert train.main([*argv, "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == as_yaml


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochs: 3\nlearning_rate: 0.1\n", ["'learning_rate'", "unknown key"]),
        ("epochs: ten\n", ["'epochs'", "whole number", "'ten'"]),
        ("lr: fast\n", ["'lr'", "number"]),
        ("hflip: maybe\n", ["'hflip'", "true or false"]),
        ("sampler: weighted\n", ["'sampler'", "balanced"]),
        ("epochs: [3\n", ["not valid YAML"]),
        ("- epochs\n- 3\n", ["not a mapping"]),
        # Flags of one command: once dropped without a word (a fresh run, not the resume).
        ("resume: runs/a\nepochs: 2\n", ["'resume'", "pass --resume on the command line"]),
        ("overwrite: true\n", ["'overwrite'", "pass --overwrite"]),
    ],
    ids=["unknown-key", "epochs-ten", "lr-text", "bool", "choice", "bad-yaml", "a-list",
         "resume", "overwrite"],
)
def test_bad_config_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: list[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert train.main(["--config", str(cfg), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --config ") and str(cfg) in err and "Traceback" not in err
    for part in expected:
        assert part in err


def test_bad_json_config_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "args.json"
    cfg.write_text(json.dumps({"epochs": "ten"}))
    assert train.main(["--config", str(cfg), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "'epochs'" in err and "whole number" in err
    cfg.write_text("{epochs: 3")
    assert train.main(["--config", str(cfg), "--print-config"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "lr"), [("lr: 3e-3\n", 0.003), ("lr: 0.01\n", 0.01), ("lr: auto\n", "auto")]
)
def test_a_flag_with_its_own_parser_reads_its_config_values_as_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, lr: float | str
) -> None:
    """--lr takes a number or ``auto``: a number from args.json or YAML, and the text, load."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(text)
    assert train.main(["--config", str(cfg), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["lr"] == lr


def _printed(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert train.main([*argv, "--print-config"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def _other_value(action: argparse.Action, defaults: set[Any]) -> Any:
    """A value of ``action``'s setting that is none of ``defaults``, of the type it takes."""
    if isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction):
        (default,) = defaults
        return not default
    if action.dest == "model":  # checked against the model names when parsed
        candidates: list[Any] = sorted(MODELS)
    elif action.choices is not None:
        candidates = list(action.choices)
    elif action.type is int:
        candidates = [3, 5, 7]
    elif action.type is float or any(isinstance(d, float) for d in defaults):
        candidates = [0.3, 0.45, 0.7]  # --lr's own parser takes numbers too
    else:
        candidates = [f"{action.dest}-value", f"{action.dest}-other"]
    return next(c for c in candidates if c not in defaults)


def test_every_setting_of_a_config_file_takes_effect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each key that --print-config lists (what args.json holds), set in a --config file to
    a value that is neither its demo nor its --data default, is in the resolved config."""
    demo, data = _printed(capsys, []), _printed(capsys, ["--data", str(tmp_path)])
    actions = {a.dest: a for a in build_parser()._actions}
    assert demo.keys() == data.keys() and set(demo) <= set(actions)
    values = {k: _other_value(actions[k], {demo[k], data[k]}) for k in demo}
    assert "seed" in values
    # --quiet and --verbose cannot both be on: each in a file of its own.
    for off in ("verbose", "quiet"):
        written = {**values, off: False}
        cfg = tmp_path / f"{off}-off.yaml"
        cfg.write_text(yaml.safe_dump(written))
        resolved = _printed(capsys, ["--config", str(cfg)])
        assert {k: resolved.get(k) for k in written} == written


# What tools/train.py --print-config printed before the settings moved to trainer/config.py.
PREVIOUS_ARGS = {"data": "DATA", "img_size": 16, "batch_size": 8, "workers": 0, "val_fraction": 0.2, "crop_scale": 0.08, "hflip": True, "color_jitter": 0.0, "sampler": "none", "class_weights": None, "cache": "none", "decode": "cpu", "max_bad_fraction": 0.05, "image_key": "path", "label_key": "label", "check_leakage": False, "verify": "header", "recipe": None, "auto_augment": "none", "random_erasing": 0.0, "jpeg_quality": 0, "blur": 0.0, "noise": 0.0, "downscale": 0.0, "affine": 0.0, "perspective": 0.0, "mixup": 0.0, "cutmix": 0.0, "transforms": None, "model": "small_cnn", "pretrained": False, "epochs": 2, "lr": 0.001, "weight_decay": 0.05, "warmup_epochs": 1.0, "label_smoothing": 0.1, "loss": "ce", "loss_weights": "none", "precision": "auto", "ema_decay": 0.0, "grad_clip": 0.0, "accumulate": 1, "compile": False, "sync_bn": False, "out": None, "device": "cpu", "seed": 0, "monitor": "val/acc", "top_k": 1, "early_stopping": 0, "min_delta": 0.0, "sanity_steps": 2, "quiet": True, "verbose": False, "confusion_matrix": True, "dataset_stats": True, "model_info": True, "history_plots": True, "sampler_stats": True, "samples": True, "export": True, "report": True, "tensorboard": False, "val_every": 1.0, "log_every": 50, "per_class": True, "calibration": True, "wandb": False, "wandb_project": None, "wandb_name": None, "wandb_tags": None, "wandb_artifacts": False, "pipeline": {"source": "built-in", "train": "...", "val": "..."}}  # fmt: skip


def test_a_run_folder_of_the_previous_version_replays_or_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "args.json").write_text(json.dumps(PREVIOUS_ARGS))
    config = train.parse_config(["--resume", str(run)])
    expected = {k: v for k, v in PREVIOUS_ARGS.items() if k not in ("pipeline", "out")}
    assert {k: config[k] for k in expected} == expected
    # A key this version does not know (a later version's, or a removed flag): refused.
    (run / "args.json").write_text(json.dumps({**PREVIOUS_ARGS, "warp_speed": 9}))
    assert train.main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: the run's settings in ") and "'warp_speed'" in err
    assert str(run / "args.json") in err and "another version" in err and "Traceback" not in err
