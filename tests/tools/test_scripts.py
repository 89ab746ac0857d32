"""tools/install.sh and tools/test.sh: the README's commands, and CI runs the same."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _test_extras() -> list[str]:
    match = re.search(r'^TEST_EXTRAS="([^"]+)"$', (ROOT / "tools/test.sh").read_text(), re.M)
    assert match, "tools/test.sh sets TEST_EXTRAS on one line"
    return match.group(1).split(",")


def test_the_test_script_installs_every_extra() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    defined = set(cfg["options.extras_require"])
    assert defined <= set(_test_extras()), "an extra the tests would not install"


def test_readme_and_ci_call_the_scripts() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme[readme.index("## Quick start") : readme.index("## In a notebook")]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)
    assert "bash tools/install.sh && . .venv/bin/activate && python tools/train.py" in commands
    assert "bash tools/test.sh" in commands
    ci = (ROOT / ".ci/run").read_text()
    assert "bash tools/test.sh" in ci and "apt-get" not in ci  # one place sets up


def test_scripts_parse() -> None:
    for name in ("tools/install.sh", "tools/test.sh", ".ci/run"):
        subprocess.run(["bash", "-n", str(ROOT / name)], check=True)
