#!/usr/bin/env bash
# The same worker faults in front of our router and vllm-router 0.1.17 (installed into
# $BENCH_VENV, default ~/.cache/vllm-router-bench). Extra arguments go to faults.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
venv="${BENCH_VENV:-$HOME/.cache/vllm-router-bench}"
cargo build --release --locked -p vllm-router -p vllm-sim
if [[ ! -x "$venv/bin/vllm-router" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "vllm-router==0.1.17"
fi
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
exec python3 "$here/faults.py" --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" --peer-bin "$venv/bin/vllm-router" "$@"
