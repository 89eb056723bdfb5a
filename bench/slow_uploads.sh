#!/usr/bin/env bash
# Slow uploads against --max-concurrent-requests 8: a normal client's latency, quiet and with
# 200 clients uploading a byte a second, alternating. Extra arguments go to slow_uploads.py:
#
#   bench/slow_uploads.sh --rounds 3 --phase-secs 10 --out bench/out/slow_uploads.md
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
build vllm-router vllm-sim
exec python3 "$here/slow_uploads.py" \
    --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" \
    "$@"
