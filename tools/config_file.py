"""Configuration files for ``tools/train.py --config``: JSON or YAML with the keys of
``args.json``, read and checked against the flags in one place, and written back out
(``--print-config --format yaml``) so that what is printed replays."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import ConfigError

FORMATS = ("json", "yaml")
YAML_SUFFIXES = (".yaml", ".yml")


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in ``path``: YAML for ``.yaml``/``.yml``, JSON otherwise.

    Raises:
        ConfigError: the file is missing, unreadable, malformed or not a mapping.
    """
    is_yaml = path.suffix.lower() in YAML_SUFFIXES
    kind = "YAML" if is_yaml else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(
            f"--config {path} does not exist; pass a run's args.json or a YAML file with its keys"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path} is not readable ({e})") from e
    try:
        saved = yaml.safe_load(text) if is_yaml else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"--config {path} is not valid {kind} ({e})") from e
    if saved is None and is_yaml:
        saved = {}  # an empty YAML file: nothing to replay
    if not isinstance(saved, dict):
        raise ConfigError(
            f"--config {path} holds a {type(saved).__name__}, not a mapping of settings; "
            "write one `key: value` per line, with the keys of args.json"
        )
    return saved


def check_config_values(
    saved: dict[str, Any], parser: argparse.ArgumentParser, path: Path
) -> dict[str, Any]:
    """``saved`` with each value checked against its flag: the key is a flag's, the value has
    the type (and choice) the flag takes. Numbers written as text (YAML reads ``3e-3`` as a
    string) are converted as the command line would convert them.

    Raises:
        ConfigError: naming the key, the file, and what would fit.
    """
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    checked: dict[str, Any] = {}
    for key, value in saved.items():
        action = actions.get(str(key))
        if action is None:
            close = difflib.get_close_matches(str(key).replace("-", "_"), list(actions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"--config {path}: unknown key {key!r}{hint}; the keys are those of args.json "
                "(`python tools/train.py --print-config` lists them)"
            )
        checked[key] = _checked_value(action, key, value, path)
    return checked


def _checked_value(action: argparse.Action, key: str, value: Any, path: Path) -> Any:
    flag = action.option_strings[0] if action.option_strings else key
    problem = None
    if isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction):
        problem = None if isinstance(value, bool) else f"must be true or false (as {flag})"
    elif value is None:
        return None  # unset: the demo or --data default applies
    elif action.type in (int, float):
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = action.type(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if action.type is int and not isinstance(value, int):
            ok = False
        if not ok:
            problem = "must be a whole number" if action.type is int else "must be a number"
    elif callable(action.type) and action.type is not str:  # a flag's own parser (--lr)
        try:
            value = action.type(value if isinstance(value, str) else str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            problem = f"is not valid ({e})"
    elif action.choices is not None and str(value) in action.choices:
        value = str(value)  # `precision: 32` in YAML is a number, the flag's choice is text
    elif not isinstance(value, str):
        problem = "must be a string"
    if problem is None and action.choices is not None and value not in action.choices:
        problem = f"must be one of {', '.join(map(str, action.choices))}"
    if problem:
        raise ConfigError(f"--config {path}: {key!r} {problem}, as {flag} takes; got {value!r}")
    return value


def dump_config(config: dict[str, Any], fmt: str) -> str:
    """``config`` as JSON or YAML text that ``read_config_file`` reads back to the same dict."""
    if fmt == "yaml":
        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"
