#!/usr/bin/env bash
# Routing-quality suite: time to first token and prefix-cache hit rate of vllm-router's
# policies, smg 1.13.0's (SGLang's gateway), the PyPI `vllm-router` 0.1.17's and nginx's
# least_conn, over fleets of simulated vLLM workers with bounded prefix caches. Workloads:
# chat (plus a sweep of groups, users and cache size), shared-prefix, random, hetero, burst;
# each point runs in rounds with the targets' order alternating. Extra arguments go to
# quality.py (`--help` lists them), e.g.
#
#   bench/quality.sh --workloads all --out bench/out/quality.md      # the whole suite
#   bench/quality.sh --workloads base --out bench/out/quality.md     # one point per workload
#   bench/quality.sh --workloads chat,random --targets shortlist --rounds 1
#
# `--out FILE.md` also writes FILE.json (every round's raw figures) and SVG charts beside it.
# The estimated run time is printed before the first run.
#
# Needs cargo, python3 and (to install nginx when missing) apt-get. The PyPI routers are
# installed into virtualenvs of their own: vllm-router at $BENCH_VENV (default
# ~/.cache/vllm-router-bench), smg at $BENCH_VENV-smg.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
build vllm-router vllm-sim vllm-router-bench
ensure_tools nginx
ensure_peer
ensure_smg
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
exec python3 "$here/quality.py" \
    --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" \
    --bench-bin "$target_dir/release/vllm-router-bench" \
    --vllm-router-bin "$venv/bin/vllm-router" \
    --smg-bin "$smg_venv/bin/smg" \
    --nginx-bin "$nginx_bin" \
    "$@"
