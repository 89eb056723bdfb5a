#!/usr/bin/env bash
# Fleet changes under load: how many client requests fail, and whether a removed worker keeps
# receiving requests, while workers are removed and added through the admin routes (ours and
# vllm-router 0.1.17) or by rewriting ours' config file. Extra arguments go to fleet_change.py,
# e.g.
#
#   bench/fleet_change.sh --out bench/out/fleet_change.md
#   bench/fleet_change.sh --rounds 1 --targets ours/api,ours/config
#
# Needs cargo and python3. The PyPI router is installed into a virtualenv at $BENCH_VENV
# (default ~/.cache/vllm-router-bench). Logs go to bench/out/fleet_change/ unless --logs says
# otherwise.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
build vllm-router vllm-sim
ensure_peer
exec python3 "$here/fleet_change.py" \
    --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" \
    --peer-bin "$venv/bin/vllm-router" \
    "$@"
