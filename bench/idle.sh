#!/usr/bin/env bash
# Idle-connection benchmark: a normal request's latency with and without 10,000 idle
# keep-alive clients connected from another process. Extra arguments go to idle.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
build vllm-router vllm-sim
ensure_tools wrk
exec python3 "$here/idle.py" --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" "$@"
