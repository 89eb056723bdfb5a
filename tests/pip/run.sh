#!/usr/bin/env bash
# The pip path, as vllm-project/router's users take it: build the wheel with maturin, install it
# into a fresh virtualenv, then use what it installed (the `vllm-router` command, `python -m
# vllm_router.launch_router`, `Router(...).start()` and `vllm-router demo`) in tests/pip/check.py.
#
#   tests/pip/run.sh
#
# The wheel is built with cargo's dev profile, so it reuses the test build; `pip install .`
# builds the same wheel with the release profile.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/build"
"$work/build/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
cd "$root"
"$work/build/bin/maturin" build --quiet --locked --profile dev --out "$work/dist"
cargo build --quiet --locked -p vllm-sim --bin vllm-sim
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work"/dist/*.whl
# From elsewhere than the source tree: the installed package, not ./python, is imported.
cd "$work"
VLLM_SIM_BIN="$target_dir/debug/vllm-sim" "$work/venv/bin/python" "$here/check.py"
