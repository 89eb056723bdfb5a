#!/usr/bin/env bash
# End-to-end tests of vllm-router with real peers: the official `openai` Python client (also
# as a client process killed mid-request, with uvicorn and FastAPI as a vLLM-like engine), pyzmq
# as the vLLM side of ZMQ discovery, Prometheus (promtool and a scraping server), headless
# Chromium for the /dashboard page, and tmux as the terminal of `vllm-router top`.
#
#   tests/openai/run.sh [PYTEST_ARGS...]
#
# Creates (or reuses) a virtualenv at .venv-e2e in the repository root, installs the pinned
# client and pytest, installs Debian's `prometheus` package when promtool or prometheus is
# missing, Debian's `chromium` when no Chromium is found and `tmux` when tmux is, builds the
# debug binaries of vllm-router and vllm-sim, then runs pytest.
# Exits non-zero on any failure, including a run in which no test was collected.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/.venv-e2e"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating virtualenv $venv" >&2
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

packages=()
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    packages+=(prometheus)
fi
if ! command -v tmux >/dev/null; then
    packages+=(tmux)
fi
if ! command -v chromium >/dev/null && ! command -v chromium-headless-shell >/dev/null \
    && ! command -v chromium-browser >/dev/null; then
    packages+=(chromium)
fi
if [[ ${#packages[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "error: Debian packages needed: ${packages[*]}" >&2
        exit 1
    fi
    echo "installing Debian packages: ${packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; }
fi

cd "$root"
cargo build --locked -p vllm-router -p vllm-sim --bins

# Where cargo put the binaries: honours CARGO_TARGET_DIR and any cargo config.
target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
    | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
export VLLM_ROUTER_BIN="$target_dir/debug/vllm-router"
export VLLM_SIM_BIN="$target_dir/debug/vllm-sim"
for bin in "$VLLM_ROUTER_BIN" "$VLLM_SIM_BIN"; do
    if [[ ! -x "$bin" ]]; then
        echo "error: $bin was not built" >&2
        exit 1
    fi
done

status=0
"$venv/bin/python" -m pytest -p no:cacheprovider -ra --rootdir "$here" "$here" "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
