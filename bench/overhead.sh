#!/usr/bin/env bash
# Proxy overhead benchmark: vllm-router vs the PyPI `vllm-router` package vs nginx, all in
# front of the same two simulated vLLM workers. Extra arguments go to overhead.py, e.g.
#
#   bench/overhead.sh --rounds 5 --duration 10 --out bench/out/overhead.md
#
# Needs cargo, python3 and (to install wrk and nginx when missing) apt-get. The PyPI router is
# installed into a virtualenv at $BENCH_VENV (default ~/.cache/vllm-router-bench).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${BENCH_VENV:-$HOME/.cache/vllm-router-bench}"
peer_version="0.1.17"

cd "$root"
cargo build --release --locked -p vllm-router -p vllm-sim
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
if ((${#missing[@]})); then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "installing ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

if [[ ! -x "$venv/bin/vllm-router" ]]; then
    echo "installing vllm-router==$peer_version into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "vllm-router==$peer_version"
fi

exec python3 "$here/overhead.py" \
    --router-bin "$target_dir/release/vllm-router" \
    --sim-bin "$target_dir/release/vllm-sim" \
    --peer-bin "$venv/bin/vllm-router" \
    --nginx "$nginx_bin" \
    --wrk "$(command -v wrk)" \
    "$@"
