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

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${BENCH_VENV:-$HOME/.cache/vllm-router-bench}"
peer_version="0.1.17"

cd "$root"
cargo build --release --locked -p vllm-router -p vllm-sim -p vllm-router-bench
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

if [[ ! -x "$venv/bin/vllm-router" ]]; then
    echo "installing vllm-router==$peer_version into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "vllm-router==$peer_version"
fi

exec python3 "$here/quality.py" \
    --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" \
    --bench-bin "$target_dir/release/vllm-router-bench" \
    --peer-bin "$venv/bin/vllm-router" \
    "$@"
