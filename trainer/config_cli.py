"""The command line and config files of ``trainer.config``'s settings, generated from their
declarations: argparse flags and ``--help``, ``--config`` JSON/YAML files checked key by key,
``--print-config``, and the Markdown flag reference (``docs/cli.md``).

The precedence of one invocation: flags given on the command line, then the replayed file
(``--config FILE``, or a resumed run's ``args.json``), then ``--recipe``'s values (over the
file's too when ``--recipe`` is on the command line), then the declared defaults, then the
demo's or ``--data``'s (see ``TrainConfig.resolved``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import json
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from trainer.config import NOT_SAVED, TrainConfig
from trainer.config_fields import RECIPES
from trainer.data.demo import DATA_DEFAULTS, DEMO_DEFAULTS
from trainer.errors import ConfigError
from trainer.run_files import ARGS_JSON
from trainer.run_folder import run_dir_of

FORMATS = ("json", "yaml")
YAML_SUFFIXES = (".yaml", ".yml")
# A resumed run whose args.json this version cannot read: made by another version.
RESUME_HINT = (
    ". The run folder was made by another version of the trainer: resume it with that "
    "version, or start a new run with --config on an edited copy of its args.json"
)
# args.json's record of the transform pipelines the run used: written by train.py, not a flag.
PIPELINE_KEY = "pipeline"
DESCRIPTION = (
    "Train an image classifier on an ImageFolder tree (DIR/train/<class>/*, DIR/val/<class>/*, "
    "optional DIR/test/<class>/*) or a label file (a .csv or .jsonl of image path, label and "
    "optional split)."
)

Field = dataclasses.Field  # of a settings dataclass, made by ``trainer.config.setting``


def flag_of(f: Field[Any]) -> str:
    return "--" + f.name.replace("_", "-")


def _base_type(f: Field[Any], owner: type) -> Any:
    """``int`` for ``int | None``, ``bool`` for ``bool``...: the type a value converts to."""
    hint = _hints(owner)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0] if len(args) == 1 else str
    return hint


@functools.cache
def _hints(owner: type) -> dict[str, Any]:
    return typing.get_type_hints(owner)


def _owners(groups: Sequence[type]) -> dict[str, tuple[Field[Any], type]]:
    return {f.name: (f, g) for g in groups for f in dataclasses.fields(g)}


def _help(f: Field[Any]) -> str:
    text = f.metadata["help"].replace("%", "%%")
    if f.metadata.get("demo"):
        text += f" (demo: {DEMO_DEFAULTS[f.name]}, else {DATA_DEFAULTS[f.name]})"
    return text


def program_name(script: str) -> str:
    """What a tool's usage line calls it: the console script's name when run as one
    (``imgtrainer-train``), else ``script`` (``tools/train.py``)."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name if name.startswith("imgtrainer-") else script


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, whose usage errors are one ``error:`` paragraph (not the usage of every flag
    first): what is wrong, and where the flags are listed. Exit code 2, as argparse's."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}. `{self.prog} --help` lists the flags.\n")


def build_parser(
    groups: Sequence[type] | None = None,
    *,
    prog: str = "tools/train.py",
    description: str = DESCRIPTION,
    help_overrides: dict[str, str] | None = None,
    suppress_defaults: bool = False,
) -> argparse.ArgumentParser:
    """argparse flags for the settings of ``groups`` (default: every group of
    ``trainer.config``), one per field, grouped as declared.

    ``suppress_defaults``: a flag not given is left out of the namespace, so the namespace
    holds exactly the flags of the command line.
    """
    p = ArgumentParser(
        prog=program_name(prog),
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sections: dict[str, Any] = {}  # title -> argparse's argument group
    for name, (f, owner) in _owners(groups or _all_groups()).items():
        title = _title(owner)
        section = sections.get(title) or p.add_argument_group(title)
        sections[title] = section
        meta = f.metadata
        kwargs: dict[str, Any] = {
            "help": (help_overrides or {}).get(name) or _help(f),
            "default": argparse.SUPPRESS if suppress_defaults else f.default,
            "dest": name,
        }
        kind = _base_type(f, owner)
        if kind is bool:
            kwargs["action"] = "store_true" if meta["switch"] else argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _cli_parser(meta["parse"]) if meta["parse"] else kind
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            if meta["metavar"]:
                kwargs["metavar"] = meta["metavar"]
            if meta["const"] is not None:
                kwargs.update(nargs="?", const=meta["const"])
        section.add_argument(flag_of(f), **kwargs)
    return p


def _cli_parser(parse: Any) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__
    return convert


def _all_groups() -> tuple[type, ...]:
    from trainer.config import GROUPS

    return GROUPS


# ------------------------------------------------------------------------------ files
def read_config_file(path: Path, source: str = "--config") -> dict[str, Any]:
    """The mapping in ``path``: YAML for ``.yaml``/``.yml``, JSON otherwise. ``source`` is
    how the errors name it: ``--config``, or ``--resume``'s replayed ``args.json``.

    Raises:
        ConfigError: the file is missing, unreadable, malformed or not a mapping.
    """
    is_yaml = path.suffix.lower() in YAML_SUFFIXES
    kind = "YAML" if is_yaml else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(
            f"{source} {path} does not exist; pass a run's args.json or a YAML file with its keys"
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source} {path} is not readable ({e})") from e
    try:
        saved = yaml.safe_load(text) if is_yaml else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"{source} {path} is not valid {kind} ({e})") from e
    if saved is None and is_yaml:
        saved = {}  # an empty YAML file: nothing to replay
    if not isinstance(saved, dict):
        raise ConfigError(
            f"{source} {path} holds a {type(saved).__name__}, not a mapping of settings; "
            "write one `key: value` per line, with the keys of args.json"
        )
    return saved


def check_config_values(
    saved: dict[str, Any],
    path: Path,
    groups: Sequence[type] | None = None,
    source: str = "--config",
) -> dict[str, Any]:
    """``saved`` with each value checked against its setting: the key is a setting's, the value
    has its type (and choice). Numbers written as text (YAML reads ``3e-3`` as a string) are
    converted as the command line would convert them.

    Raises:
        ConfigError: naming the key, the file, and what would fit.
    """
    owners = _owners(groups or _all_groups())
    checked: dict[str, Any] = {}
    for key, value in saved.items():
        if str(key) not in owners:
            close = difflib.get_close_matches(str(key).replace("-", "_"), list(owners), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{source} {path}: unknown key {key!r}{hint}; the keys are those of args.json "
                "(`python tools/train.py --print-config` lists them)"
                + ("" if source == "--config" else RESUME_HINT)
            )
        f, owner = owners[str(key)]
        checked[key] = _checked_value(f, _base_type(f, owner), key, value, f"{source} {path}")
    return checked


def _checked_value(f: Field[Any], kind: Any, key: str, value: Any, where: str) -> Any:
    flag, meta = flag_of(f), f.metadata
    problem = None
    if kind is bool:
        problem = None if isinstance(value, bool) else f"must be true or false (as {flag})"
    elif value is None:
        return None  # unset: the declared (or the demo or --data) default applies
    elif meta["parse"] is not None:  # a flag's own parser (--lr)
        try:
            value = meta["parse"](value if isinstance(value, str) else str(value))
        except (ValueError, TypeError) as e:
            problem = f"is not valid ({e})"
    elif kind in (int, float):
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = kind(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if kind is int and not isinstance(value, int):
            ok = False
        if not ok:
            problem = "must be a whole number" if kind is int else "must be a number"
    elif meta["choices"] is not None and str(value) in meta["choices"]:
        value = str(value)  # `precision: 32` in YAML is a number, the flag's choice is text
    elif not isinstance(value, str):
        problem = "must be a string"
    if problem is None and meta["choices"] is not None and value not in meta["choices"]:
        problem = f"must be one of {', '.join(map(str, meta['choices']))}"
    if problem:
        raise ConfigError(f"{where}: {key!r} {problem}, as {flag} takes; got {value!r}")
    return value


def dump_config(config: dict[str, Any], fmt: str) -> str:
    """``config`` as JSON or YAML text that ``read_config_file`` reads back to the same dict."""
    if fmt == "yaml":
        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------ parsing
def replayed_file(given: dict[str, Any]) -> Path | None:
    """The file whose values this invocation replays: ``--config``, else a resumed run's
    ``args.json`` (``--resume RUN``, or ``--resume`` alone with ``--out RUN``)."""
    if given.get("config"):
        return Path(given["config"])
    resume = given.get("resume")
    if resume not in (None, "auto"):
        candidate = run_dir_of(Path(resume)) / ARGS_JSON  # a run folder replays its settings
    elif resume == "auto" and given.get("out"):
        candidate = Path(given["out"]) / ARGS_JSON
    else:
        return None
    return candidate if candidate.is_file() else None


def parse_config(
    argv: Sequence[str] | None = None,
    groups: Sequence[type] | None = None,
    **parser_options: Any,
) -> dict[str, Any]:
    """The resolved settings of a command line, flat by name (every group's, the invocation's
    flags included): flags given win over a replayed file, the file over ``--recipe`` (unless
    ``--recipe`` itself is given), and ``--recipe`` over the defaults.

    ``groups``: the settings groups of the tool (default: tools/train.py's); a tool with more
    settings adds its own dataclasses (tools/lr_find.py). ``parser_options`` go to
    ``build_parser``.

    Raises:
        ConfigError: a replayed file or a value is invalid. A malformed flag exits (argparse).
    """
    groups = tuple(groups or _all_groups())
    build_parser(groups, **parser_options).parse_args(argv)  # --help, usage errors
    given = vars(build_parser(groups, suppress_defaults=True, **parser_options).parse_args(argv))
    replay = replayed_file(given)
    saved: dict[str, Any] = {}
    if replay is not None:
        source = "--config" if given.get("config") else "--resume: the run's settings in"
        raw = read_config_file(replay, source)
        raw.pop(PIPELINE_KEY, None)
        saved = check_config_values(raw, replay, groups, source)
        for key in NOT_SAVED:
            if given.get("config") and saved.get(key) not in (None, False):
                flag = "--" + key.replace("_", "-")
                raise ConfigError(
                    f"--config {replay}: {key!r} is a flag of one command, not a setting a file "
                    f"replays; pass {flag} on the command line and remove it from the file"
                )
            saved.pop(key, None)
        if not given.get("config"):
            # A resumed run stays in the folder resumed from, wherever it has been moved to.
            saved.pop("out", None)
    config = {f.name: f.default for g in groups for f in dataclasses.fields(g)}
    config.update(saved)
    config.update(given)
    recipe = config.get("recipe")
    if isinstance(recipe, str):
        # A recipe given on the command line applies over the replayed file; one replayed
        # from the file leaves the file's values alone.
        kept = set(given) if "recipe" in given else set(given) | set(saved)
        base = DEMO_DEFAULTS if config["data"] is None else DATA_DEFAULTS
        for key, value in RECIPES[recipe](base).items():
            if key not in kept:
                config[key] = value
    resolved = TrainConfig.from_dict(config).resolved()  # checks every value
    config.update(resolved.to_dict())
    if config["quiet"] and config["verbose"]:
        raise ConfigError("--quiet and --verbose ask for opposite things; pass one of them")
    return config


def saved_config(config: dict[str, Any]) -> dict[str, Any]:
    """What ``args.json`` holds of a parsed command line: every setting but the invocation's."""
    return {k: v for k, v in config.items() if k not in NOT_SAVED}


# ------------------------------------------------------------------------------ docs
def markdown_reference(groups: Sequence[type] | None = None) -> str:
    """The flag reference of ``docs/cli.md``: one table per group, from the declarations."""
    lines = [
        "# tools/train.py flags",
        "",
        "Generated from `trainer/config.py` by `python -m trainer.config_cli > docs/cli.md`;",
        "do not edit by hand (tests/trainer/test_config.py checks that it is current). Each",
        "flag is also a key of `--config` files and of a run's `args.json` (with `_` for `-`).",
        "",
        DESCRIPTION,
    ]
    sections: dict[str, list[str]] = {}
    for f, owner in _owners(groups or _all_groups()).values():
        meta, kind = f.metadata, _base_type(f, owner)
        flag = f"`{flag_of(f)}`"
        if kind is bool and not meta["switch"]:
            flag += f", `--no-{flag_of(f)[2:]}`"
        elif kind is not bool:
            shown = meta["metavar"] or (
                "{" + ",".join(meta["choices"]) + "}" if meta["choices"] else f.name.upper()
            )
            shown = f"[{shown}]" if meta["const"] is not None else shown
            flag = f"`{flag_of(f)} {shown}`"
        default = "" if f.default is None else f"`{f.default}`"
        what = _help(f).replace("%%", "%").replace("|", "\\|")
        sections.setdefault(_title(owner), []).append(f"| {flag} | {default} | {what} |")
    for title, rows in sections.items():
        lines += ["", f"## {title}", "", "| flag | default | what it does |", "| --- | --- | --- |"]
        lines += rows
    return "\n".join(lines) + "\n"


def _title(group: type) -> str:
    return str(getattr(group, "group", group.__name__))


if __name__ == "__main__":
    print(markdown_reference(), end="")
