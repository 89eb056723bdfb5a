#!/usr/bin/env bash
# Idle-connection benchmark: a normal request's latency with and without 10,000 idle
# keep-alive clients connected from another process. Extra arguments go to idle.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
cargo build --release --locked -p vllm-router -p vllm-sim
command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
exec python3 "$here/idle.py" --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" "$@"
