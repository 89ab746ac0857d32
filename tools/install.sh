#!/usr/bin/env bash
# Install: a virtualenv in .venv (made if missing) and this package in it, editable, with
# the extras named in EXTRAS (default: dev). Run from anywhere:
#     bash tools/install.sh                 then  . .venv/bin/activate && python tools/train.py
#     EXTRAS=dev,wandb bash tools/install.sh
# VENV=DIR puts the virtualenv elsewhere. Needs python3 >= 3.10 with its venv module.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-dev}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --upgrade --quiet pip
# An extra this checkout does not define yet only draws a pip warning.
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
echo "installed in $VENV (extras: $EXTRAS); activate with: . $VENV/bin/activate"
