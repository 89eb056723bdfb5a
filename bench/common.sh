# Shared set-up of the benchmark entry points; sourced, not run.
#   build PACKAGE...      release-build the packages; sets $target_dir
#   ensure_tools TOOL...  apt-install whichever of the tools (wrk, nginx) is missing
#   ensure_peer           vllm-router 0.1.17 from PyPI in $venv ($BENCH_VENV)
#   ensure_smg            smg 1.13.0 (SGLang's gateway) from PyPI in $smg_venv ($BENCH_VENV-smg)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="${BENCH_VENV:-$HOME/.cache/vllm-router-bench}"
peer_version="0.1.17"
smg_venv="$venv-smg"
smg_version="1.13.0"
cd "$root"

build() {
    local args=()
    for p in "$@"; do args+=(-p "$p"); done
    cargo build --release --locked "${args[@]}"
    target_dir="$(cargo metadata --format-version 1 --no-deps --locked \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
}

ensure_tools() {
    local missing=()
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" ]] || missing+=("$tool")
    done
    ((${#missing[@]})) || return 0
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "installing ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_peer() {
    [[ -x "$venv/bin/vllm-router" ]] && return 0
    echo "installing vllm-router==$peer_version into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "vllm-router==$peer_version"
}

ensure_smg() {
    [[ -x "$smg_venv/bin/smg" ]] && return 0
    echo "installing smg==$smg_version into $smg_venv" >&2
    python3 -m venv "$smg_venv"
    "$smg_venv/bin/python" -m pip install --quiet --disable-pip-version-check "smg==$smg_version"
}
