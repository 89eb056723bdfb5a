#!/usr/bin/env bash
# The same worker faults in front of our router and vllm-router 0.1.17 (installed into
# $BENCH_VENV, default ~/.cache/vllm-router-bench). Extra arguments go to faults.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
build vllm-router vllm-sim
ensure_peer
exec python3 "$here/faults.py" --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" --peer-bin "$venv/bin/vllm-router" "$@"
