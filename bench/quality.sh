#!/usr/bin/env bash
# Routing-quality benchmark: time to first token and prefix-cache hit rate of vllm-router's
# policies and of the PyPI `vllm-router` package's, over a fleet of simulated vLLM workers with
# bounded prefix caches. Extra arguments go to quality.py, e.g.
#
#   bench/quality.sh --scenario cache --duration-secs 40 --out bench/out/quality.md
#
# Needs cargo and python3. The PyPI router is installed into a virtualenv at $BENCH_VENV
# (default ~/.cache/vllm-router-bench).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
build vllm-router vllm-sim vllm-router-bench
ensure_peer
exec python3 "$here/quality.py" \
    --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" \
    --bench-bin "$target_dir/release/vllm-router-bench" \
    --peer-bin "$venv/bin/vllm-router" \
    "$@"
