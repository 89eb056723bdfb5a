#!/usr/bin/env bash
# Soak: ten minutes of mixed traffic with worker kills, hangs, 5xx, slow readers, slow uploads
# and reloads; reports RSS, descriptors, in-flight requests and tasks at start and end, and
# every failure a client saw by cause. Extra arguments go to soak.py, e.g.
#
#   bench/soak.sh --duration 600 --out bench/out/soak.md
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
build vllm-router vllm-sim
exec python3 "$here/soak.py" \
    --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" \
    "$@"
