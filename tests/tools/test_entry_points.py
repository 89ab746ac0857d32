"""tools/ as entry points: the console scripts setup.cfg declares resolve to each tool's
``main``, and ``python tools/train.py`` runs from any folder, installed or not, importing
this checkout's packages with tools/ itself off ``sys.path``."""

from __future__ import annotations

import configparser
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {
    "imgtrainer-train": "tools.train:main",
    "imgtrainer-predict": "tools.predict:main",
    "imgtrainer-evaluate": "tools.evaluate:main",
    "imgtrainer-export": "tools.export:main",
    "imgtrainer-lr-find": "tools.lr_find:main",
    "imgtrainer-benchmark": "tools.benchmark:main",
    "imgtrainer-label-issues": "tools.label_issues:main",
}


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    assert cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    return cfg


def test_console_scripts_resolve_to_each_tools_main() -> None:
    lines = _setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    declared = dict(line.replace(" ", "").split("=") for line in lines)
    assert declared == SCRIPTS
    for target in declared.values():
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        assert Path(module.__file__ or "").is_relative_to(ROOT / "tools"), module.__file__
        main = getattr(module, attr)
        assert callable(main)
        # pip's wrapper runs sys.exit(main()): main takes no required argument, and
        # returns the exit status (an int).
        signature = inspect.signature(main)
        signature.bind()
        assert signature.return_annotation in ("int", int), target


def test_the_package_installs_tools_and_its_benchmarks() -> None:
    include = _setup_cfg()["options.packages.find"]["include"].split()
    packages = find_packages(str(ROOT), include=include)
    assert {"tools", "tools.benchmarks", "trainer", "hooks"} <= set(packages)


# In the tool's process: the editable install's finder removed (as if not installed), and at
# exit, where tools and trainer were imported from and whether tools/ is on sys.path.
_SITECUSTOMIZE = """
import atexit, json, os, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in type(f).__module__
                    and "__editable__" not in getattr(f, "__module__", "")]
def _report():
    with open(os.environ["IMGTRAINER_TEST_REPORT"], "w") as f:
        json.dump({"path": sys.path, "tools": sys.modules["tools"].__file__,
                   "trainer": sys.modules["trainer"].__file__}, f)
atexit.register(_report)
"""


def test_train_script_runs_from_another_folder_without_the_install(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "IMGTRAINER_TEST_REPORT": str(report)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train.py"), "--print-config", "--epochs", "7"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["epochs"] == 7
    seen = json.loads(report.read_text())
    assert Path(seen["tools"]) == ROOT / "tools" / "__init__.py"
    assert Path(seen["trainer"]) == ROOT / "trainer" / "__init__.py"
    assert str(ROOT / "tools") not in [str(Path(p).resolve()) for p in seen["path"]]


def test_each_console_script_calls_itself_by_its_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for script, target in SCRIPTS.items():
        module_name, _, attr = target.partition(":")
        main = getattr(importlib.import_module(module_name), attr)
        for argv0, name in ((f"/venv/bin/{script}", script),
                            (f"tools/{module_name.split('.')[1]}.py", None)):  # fmt: skip
            monkeypatch.setattr(sys, "argv", [argv0])
            with pytest.raises(SystemExit) as done:
                main(["--help"])
            assert done.value.code == 0
            usage = capsys.readouterr().out.split()[:2]
            assert usage == ["usage:", name or f"tools/{module_name.split('.')[1]}.py"], script
