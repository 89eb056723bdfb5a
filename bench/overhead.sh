#!/usr/bin/env bash
# Proxy overhead benchmark: vllm-router vs the PyPI `vllm-router` package vs smg vs nginx, all in
# front of the same two simulated vLLM workers. Extra arguments go to overhead.py, e.g.
#
#   bench/overhead.sh --rounds 5 --duration 10 --out bench/out/overhead.md
#
# Needs cargo, python3 and (to install wrk and nginx when missing) apt-get. The PyPI router is
# installed into a virtualenv at $BENCH_VENV (default ~/.cache/vllm-router-bench), smg at
# $BENCH_VENV-smg.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
build vllm-router vllm-sim
ensure_tools wrk nginx
ensure_peer
ensure_smg
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
exec python3 "$here/overhead.py" \
    --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" \
    --peer-bin "$venv/bin/vllm-router" \
    --smg-bin "$smg_venv/bin/smg" \
    --nginx "$nginx_bin" \
    --wrk "$(command -v wrk)" \
    "$@"
