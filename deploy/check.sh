#!/usr/bin/env bash
# Checks the deployment files: the Kubernetes manifests (each file and each rendered
# kustomization), the systemd unit and its example config, and the Dockerfile. Runs every
# check, prints what failed, exits 1 if anything did.
#
# Python tools are installed, at pinned versions (deploy/check-requirements.txt), into a
# virtualenv cached under ${XDG_CACHE_HOME:-~/.cache}/vllm-router-deploy-check; re-runs reuse it.
# kubectl (or kustomize) and systemd-analyze come from the system; without them the steps that
# need them are reported as skipped, and DEPLOY_CHECK_STRICT=1 turns a skip into a failure.
# The router's own --check-config runs on the example configs when a built binary is found
# ($VLLM_ROUTER_BIN, else target/debug or target/release).
set -euo pipefail
cd "$(dirname "$0")/.."

# Oldest and newest Kubernetes versions the manifests are validated against.
KUBERNETES_VERSIONS=(1.28.0 1.37.0)
# systemd-analyze security's exposure score, times ten, above which the unit fails.
SYSTEMD_EXPOSURE_MAX=20

failures=()
skips=()
fail() { failures+=("$1"); echo "FAIL: $1"; }
skip() {
    skips+=("$1")
    echo "SKIP: $1"
}
# step NAME COMMAND...: run, and record a failure without stopping.
step() {
    local name=$1
    shift
    if "$@"; then echo "ok: $name"; else fail "$name"; fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------- tools

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "deploy/check.sh needs Python 3.11 or newer (tomllib)" >&2
    exit 2
fi
cache=${XDG_CACHE_HOME:-$HOME/.cache}/vllm-router-deploy-check
key=$({ cat deploy/check-requirements.txt; "$python" --version; uname -m; } | sha256sum | cut -c1-16)
venv=$cache/venv-$key
if [[ ! -f $venv/.installed ]]; then
    echo "== installing the check's tools into $venv"
    rm -rf "$cache"/venv-*  # this one, half-built, or others of older requirements
    mkdir -p "$cache"
    "$python" -m venv "$venv"
    if ! "$venv/bin/pip" install --quiet --disable-pip-version-check \
        -r deploy/check-requirements.txt; then
        rm -rf "$venv"
        echo "installing deploy/check-requirements.txt failed" >&2
        exit 2
    fi
    touch "$venv/.installed"
fi
bin=$venv/bin
lint() { "$bin/python" deploy/lint.py "$@"; }

# ---------------------------------------------------------------- YAML

echo "== yamllint $("$bin/yamllint" --version | cut -d' ' -f2)"
mapfile -t yaml_files < <(find deploy -name '*.yaml' -o -name '*.yml' | sort)
step "yamllint" "$bin/yamllint" --strict -c deploy/yamllint.yaml "${yaml_files[@]}"

# ---------------------------------------------------------------- this script

echo "== $("$bin/shellcheck" --version | sed -n 's/^version: /shellcheck /p')"
step "deploy/check.sh: shellcheck" "$bin/shellcheck" deploy/check.sh

# ---------------------------------------------------------------- Kubernetes

validate() {
    local version
    for version in "${KUBERNETES_VERSIONS[@]}"; do
        "$bin/kubernetes-validate" --strict --quiet -k "$version" "$@" || return 1
    done
}

kustomize=()
rendered=()
if command -v kustomize >/dev/null; then
    kustomize=(kustomize build)
    kustomize_version=$(kustomize version 2>/dev/null || true)
elif command -v kubectl >/dev/null; then
    kustomize=(kubectl kustomize)
    kustomize_version=$(kubectl version --client 2>/dev/null | tr '\n' ' ' || true)
fi
render() {  # render DIR OUT: the kustomization, failing on any warning too
    if ! "${kustomize[@]}" "$1" >"$2" 2>"$tmp/render.err" || [[ -s $tmp/render.err ]]; then
        cat "$tmp/render.err"
        return 1
    fi
}

echo "== Kubernetes: kubernetes-validate $("$bin/kubernetes-validate" --version 2>&1 | tail -1)" \
    "(strict schemas of ${KUBERNETES_VERSIONS[*]})"
mapfile -t kustomizations < <(find deploy/kubernetes -name kustomization.yaml -printf '%h\n' | sort)
for dir in "${kustomizations[@]}"; do
    step "$dir: kustomization lists exactly its files" lint kustomization "$dir"
    mapfile -t manifests < <(find "$dir" -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml \
        | sort)
    if ((${#manifests[@]})); then
        step "$dir: each manifest against the schemas" validate "${manifests[@]}"
    fi
    if ((${#kustomize[@]})); then
        out=$tmp/$(echo "$dir" | tr / _).yaml
        if render "$dir" "$out"; then
            echo "ok: $dir: rendered by ${kustomize[*]}"
            rendered+=("$dir=$out")
            step "$dir: rendered objects against the schemas" validate "$out"
            step "$dir: rendered objects agree (ports, probes, grace, selectors, RBAC, config)" \
                lint kubernetes "$out"
        else
            fail "$dir: ${kustomize[*]}"
        fi
    fi
done
if ((${#kustomize[@]})); then
    echo "   (rendered by ${kustomize[*]}: ${kustomize_version:-version unknown})"
else
    skip "kustomizations not rendered: neither kustomize nor kubectl is installed"
fi

# ---------------------------------------------------------------- Grafana

echo "== Grafana dashboards"
for dashboard in deploy/grafana/*.json; do
    step "$dashboard: layout, data source, variables" lint grafana "$dashboard"
done

# ---------------------------------------------------------------- systemd

echo "== systemd unit"
unit=deploy/systemd/vllm-router.service
step "$unit: agrees with router.toml (drain, reload, hardening)" \
    lint systemd "$unit" deploy/systemd/router.toml
if command -v systemd-analyze >/dev/null && [[ -d /usr/lib/systemd/system ]]; then
    echo "   ($(systemd-analyze --version | head -1))"
    # An offline root holding the distribution's units (the targets this one orders itself
    # after), the unit, and a stand-in for the binary, which is not installed here:
    # `verify` refuses a unit whose ExecStart does not exist.
    root=$tmp/root
    mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/usr/local/bin"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    printf '#!/bin/sh\nexit 0\n' >"$root/usr/local/bin/vllm-router"
    chmod +x "$root/usr/local/bin/vllm-router"
    cp "$unit" "$root/etc/systemd/system/"
    # verify only warns (exit 0) on unknown keys and bad values: any output is a failure.
    verify() {
        local out
        if ! out=$(systemd-analyze verify --root="$root" --man=no vllm-router.service 2>&1) \
            || [[ -n $out ]]; then
            echo "$out"
            return 1
        fi
    }
    step "$unit: systemd-analyze verify" verify
    security() {
        local out
        if ! out=$(systemd-analyze security --offline=true --root="$root" \
            --threshold="$SYSTEMD_EXPOSURE_MAX" --no-pager vllm-router.service 2>&1); then
            grep -E '^✗|Overall' <<<"$out"
            return 1
        fi
        echo "   $(grep Overall <<<"$out")"
    }
    step "$unit: systemd-analyze security, exposure at most $SYSTEMD_EXPOSURE_MAX/100" security
else
    skip "$unit: systemd-analyze verify and security (systemd is not installed)"
fi

# ---------------------------------------------------------------- Dockerfile

echo "== Dockerfile: $("$bin/hadolint" --version)"
step "Dockerfile: hadolint" "$bin/hadolint" --no-color --failure-threshold info Dockerfile
step "Dockerfile: BuildKit's parser; stages, user, ports, entrypoint, build context" \
    lint docker Dockerfile .dockerignore

# ---------------------------------------------------------------- the router's own view

echo "== router --check-config"
router=${VLLM_ROUTER_BIN:-}
if [[ -z $router ]]; then
    for candidate in target/debug/vllm-router target/release/vllm-router; do
        if [[ -x $candidate ]]; then router=$candidate; break; fi
    done
fi
if [[ -n $router ]] && "$router" --help 2>/dev/null | grep -q -- '--check-config'; then
    echo "   ($router)"
    # check_config ARG...: the router validates these arguments and the file they name, in a
    # clean environment (no VLLM_ROUTER_* variable of this shell may mask the file). A binary
    # that serves instead of checking is stopped by the timeout, and fails.
    check_config() {
        local out
        if ! out=$(env -i PATH="$PATH" timeout 30 "$router" --check-config "$@" 2>&1); then
            echo "$out"
            return 1
        fi
    }
    step "deploy/systemd/router.toml: --check-config, as the unit starts it" \
        check_config --config deploy/systemd/router.toml
    for entry in "${rendered[@]}"; do
        dir=${entry%%=*}
        mkdir -p "$tmp/config/$dir"
        if mapfile -t args < <(lint router-invocation "${entry#*=}" "$tmp/config/$dir") \
            && ((${#args[@]})); then
            step "$dir: --check-config, with the pod's arguments and ConfigMap" \
                check_config "${args[@]}"
        else
            fail "$dir: the router's arguments could not be read from the rendered Deployment"
        fi
    done
else
    skip "router configs not checked by the router: no built vllm-router with --check-config"
fi

# ---------------------------------------------------------------- summary

echo
if ((${#skips[@]})); then
    printf 'skipped: %s\n' "${skips[@]}"
    if [[ ${DEPLOY_CHECK_STRICT:-0} == 1 ]]; then
        failures+=("${skips[@]}")
    fi
fi
if ((${#failures[@]})); then
    printf 'FAILED: %s\n' "${failures[@]}"
    exit 1
fi
echo "deployment files: all checks passed"
