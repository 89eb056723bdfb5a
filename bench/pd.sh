#!/usr/bin/env bash
# Prefill/decode disaggregation benchmark: time to first token and throughput of vllm-router
# in P/D mode against the PyPI `vllm-router` package's, over simulated prefill and decode
# workers, and what conditional prefill (--pd-min-uncached-tokens) changes. Extra arguments go
# to pd.py, e.g.
#
#   bench/pd.sh --out bench/out/pd.md
#   bench/pd.sh --scenario conditional --duration-secs 30
#
# Needs cargo and python3. The PyPI router is installed into a virtualenv at $BENCH_VENV
# (default ~/.cache/vllm-router-bench). Logs go to bench/out/pd/ unless --logs says otherwise.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
build vllm-router vllm-sim vllm-router-bench
ensure_peer
exec python3 "$here/pd.py" \
    --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" \
    --bench-bin "$target_dir/release/vllm-router-bench" \
    --peer-bin "$venv/bin/vllm-router" \
    "$@"
