#!/usr/bin/env bash
# The test command, doing all its own set-up, from a fresh clone or an existing checkout:
#     bash tools/test.sh [pytest arguments]
# 1. the virtualenv (.venv, or VENV=DIR) with the package and the extras the tests use
#    (tools/install.sh);
# 2. Chromium, which tests/hooks/test_report.py renders report.html in, installed with
#    apt-get when it is missing (as root, or through sudo);
# 3. python -m pytest, with the arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every optional extra the suite tests. One list: add a new extra here. (parity: the
# Lightning hook-order comparison; bench: scikit-learn for tools/benchmarks/recipes_bench.py,
# scikit-image for tools/benchmarks/photo_tree.py; openvino: tools/export.py --formats openvino.)
TEST_EXTRAS="dev,timm,tensorboard,wandb,parity,bench,openvino"

have_chromium() {
    local name
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        command -v "$name" >/dev/null 2>&1 && return 0
    done
    return 1
}

EXTRAS="$TEST_EXTRAS" bash tools/install.sh
if ! have_chromium; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: the report test needs Chromium and there is no apt-get here; install" \
             "chromium with your package manager, or set IMGTRAINER_SKIP_BROWSER=1 to skip" \
             "that test knowingly" >&2
        exit 1
    fi
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        SUDO="sudo"
    fi
    echo "Chromium is missing: installing it with apt-get (the report test renders in it)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
