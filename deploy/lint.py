"""Consistency checks of the deployment files that schema validators and linters cannot see.

Schemas say each field is well formed; these checks say the fields agree with each other and
with the router: the ports the router is told to listen on are the ones probed and exposed,
the grace period outlasts the drain, selectors select the router's own pods, the mounted
config is the one passed by --config and parses as TOML, and so on.

    python lint.py kustomization DIR          kustomization.yaml lists exactly the files in DIR
    python lint.py kubernetes RENDERED.yaml   a rendered kustomization (kubectl kustomize)
    python lint.py systemd UNIT ROUTER.toml   the unit and the config file it starts with
    python lint.py docker DOCKERFILE DOCKERIGNORE
    python lint.py grafana DASHBOARD.json     panels laid out, queried through the dashboard's
                                              own data source variable
    python lint.py router-invocation RENDERED.yaml DIR
                                              the router's arguments in the rendered pod, its
                                              config copied into DIR (for --check-config)

Prints one line per problem and exits 1 when there is any.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import dockerfile
import yaml

# The router's defaults, as its --help gives them.
DEFAULT_PORT = 30000
DEFAULT_PROMETHEUS_PORT = 29000
DEFAULT_SHUTDOWN_TIMEOUT_SECS = 30
BINARY = "vllm-router"

problems: list[str] = []


def problem(where: str, message: str) -> None:
    problems.append(f"{where}: {message}")


# ---------------------------------------------------------------- kustomization file lists


def check_kustomization(directory: Path) -> None:
    """Every file of the directory is used by its kustomization.yaml, and every file named
    there exists, so a manifest cannot be added without being deployed, or listed and lost."""
    kfile = directory / "kustomization.yaml"
    where = str(kfile)
    if not kfile.is_file():
        problem(str(directory), "no kustomization.yaml")
        return
    k = yaml.safe_load(kfile.read_text()) or {}
    used: set[str] = set()
    for entry in k.get("resources", []) or []:
        target = directory / entry
        if target.is_dir():
            if not (target / "kustomization.yaml").is_file():
                problem(where, f"resource directory {entry} has no kustomization.yaml")
        elif target.is_file():
            used.add(target.name)
        else:
            problem(where, f"resource {entry} does not exist")
    for patch in k.get("patches", []) or []:
        if isinstance(patch, dict) and "path" in patch:
            used.add(Path(patch["path"]).name)
            if not (directory / patch["path"]).is_file():
                problem(where, f"patch {patch['path']} does not exist")
    for generator in (k.get("configMapGenerator", []) or []) + (
        k.get("secretGenerator", []) or []
    ):
        for entry in generator.get("files", []) or []:
            source = entry.split("=", 1)[-1]
            used.add(Path(source).name)
            if not (directory / source).is_file():
                problem(where, f"generator file {source} does not exist")
    present = {
        p.name for p in directory.iterdir() if p.is_file() and p.name != "kustomization.yaml"
    }
    for name in sorted(present - used):
        problem(where, f"{name} is in the directory but not in the kustomization")


# ---------------------------------------------------------------- Kubernetes


def args_of(container: dict) -> dict[str, str | None]:
    """`--flag=value`, `--flag value` and bare `--flag` arguments, by flag name."""
    out: dict[str, str | None] = {}
    argv = list(container.get("command", []) or []) + list(container.get("args", []) or [])
    i = 0
    while i < len(argv):
        arg = str(argv[i])
        if arg.startswith("--"):
            if "=" in arg:
                key, value = arg[2:].split("=", 1)
                out[key] = value
            elif i + 1 < len(argv) and not str(argv[i + 1]).startswith("--"):
                out[arg[2:]] = str(argv[i + 1])
                i += 1
            else:
                out[arg[2:]] = None
        i += 1
    return out


def matches(selector: dict | None, labels: dict) -> bool:
    """Whether a non-empty matchLabels-style selector selects these labels."""
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def check_router_toml(where: str, text: str) -> dict:
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(where, f"not valid TOML: {e}")
        return {}
    if config.get("service_discovery"):
        if config.get("vllm_pd_disaggregation"):
            for key in ("prefill_selector", "decode_selector"):
                if not config.get(key):
                    problem(where, f"P/D service discovery without {key}")
        elif not config.get("selector"):
            problem(where, "service_discovery without a selector")
        for key in ("selector", "prefill_selector", "decode_selector"):
            for entry in config.get(key, []) or []:
                if not re.fullmatch(r"[A-Za-z0-9._/-]+=[A-Za-z0-9._/-]*", str(entry)):
                    problem(where, f"{key} entry {entry!r} is not key=value")
    for worker in config.get("workers", []) or []:
        if not re.match(r"https?://", str(worker.get("url", ""))):
            problem(where, f"worker url {worker.get('url')!r} is not http(s)://")
    return config


def container_port(container: dict, ref) -> int | None:
    for port in container.get("ports", []) or []:
        if ref in (port.get("name"), port.get("containerPort")):
            return port.get("containerPort")
    return None


def check_kubernetes(rendered: Path) -> None:
    where = str(rendered)
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        meta = doc.get("metadata", {})
        by_kind.setdefault(doc.get("kind"), {})[meta.get("name")] = doc
        if "namespace" in meta:
            problem(where, f"{doc['kind']}/{meta.get('name')} names a namespace; "
                    "the base is applied to whichever namespace is chosen")

    deployments = list(by_kind.get("Deployment", {}).values())
    if len(deployments) != 1:
        problem(where, f"expected one Deployment, found {len(deployments)}")
        return
    deploy = deployments[0]
    dwhere = f"{where}: Deployment/{deploy['metadata']['name']}"
    spec = deploy["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    replicas = spec.get("replicas", 1)

    if not matches(spec["selector"].get("matchLabels"), pod_labels):
        problem(dwhere, "selector does not select the pod template's labels")
    if replicas < 2:
        problem(dwhere, f"replicas {replicas}: a single router is a single point of failure")
    if pod.get("enableServiceLinks") is not False:
        problem(dwhere, "enableServiceLinks must be false: the Service's link variable "
                "VLLM_ROUTER_PORT=tcp://... would be read as the router's --port")

    terms = (pod.get("affinity", {}).get("podAntiAffinity", {})
             .get("preferredDuringSchedulingIgnoredDuringExecution", []))
    if not any(t["podAffinityTerm"].get("topologyKey") == "kubernetes.io/hostname"
               and matches(t["podAffinityTerm"].get("labelSelector", {}).get("matchLabels"),
                           pod_labels) for t in terms):
        problem(dwhere, "no preferred pod anti-affinity across nodes selecting the router pods")

    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser", 0) == 0:
        problem(dwhere, "the pod must run as a non-root numeric user")

    routers = [c for c in pod["containers"] if BINARY in str(c.get("image", ""))]
    if len(routers) != 1:
        problem(dwhere, f"expected one container of the {BINARY} image")
        return
    c = routers[0]
    cwhere = f"{dwhere}: container {c['name']}"
    args = args_of(c)

    csc = c.get("securityContext", {})
    if csc.get("readOnlyRootFilesystem") is not True:
        problem(cwhere, "readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        problem(cwhere, "allowPrivilegeEscalation must be false")
    if "ALL" not in (csc.get("capabilities", {}).get("drop") or []):
        problem(cwhere, "capabilities must drop ALL")
    res = c.get("resources", {})
    if not res.get("requests", {}).get("cpu") or not res.get("requests", {}).get("memory"):
        problem(cwhere, "cpu and memory requests are required")
    if not res.get("limits", {}).get("memory"):
        problem(cwhere, "a memory limit is required")

    # Listeners: what the router is told, what the pod declares, what is probed and exposed.
    if args.get("host") != "0.0.0.0":
        problem(cwhere, "--host must be 0.0.0.0: the default, loopback, is unreachable in a pod")
    if args.get("prometheus-host") != "0.0.0.0":
        problem(cwhere, "--prometheus-host must be 0.0.0.0 for the metrics port to be scraped")
    http_port = int(args.get("port") or DEFAULT_PORT)
    metrics_port = int(args.get("prometheus-port") or DEFAULT_PROMETHEUS_PORT)
    if container_port(c, "http") != http_port:
        problem(cwhere, f"container port 'http' is not the router's --port {http_port}")
    if container_port(c, "metrics") != metrics_port:
        problem(cwhere, f"container port 'metrics' is not --prometheus-port {metrics_port}")
    for probe, path in (("livenessProbe", "/liveness"), ("readinessProbe", "/readiness")):
        get = (c.get(probe) or {}).get("httpGet")
        if not get:
            problem(cwhere, f"{probe} must be an httpGet of {path}")
            continue
        if get.get("path") != path:
            problem(cwhere, f"{probe} path {get.get('path')!r}, expected {path}")
        if container_port(c, get.get("port")) != http_port:
            problem(cwhere, f"{probe} port {get.get('port')!r} is not the router's port")

    # The config passed by --config is the mounted ConfigMap, and it parses.
    config: dict = {}
    config_path = args.get("config")
    if not config_path:
        problem(cwhere, "no --config")
    else:
        cdir, cname = config_path.rsplit("/", 1)
        mount = next((m for m in c.get("volumeMounts", []) or []
                      if m.get("mountPath") == cdir), None)
        if mount is None:
            problem(cwhere, f"nothing is mounted at {cdir}, where --config {config_path} is")
        else:
            if mount.get("subPath"):
                problem(cwhere, "the config is mounted by subPath, which never sees updates")
            volume = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), {})
            cm_name = volume.get("configMap", {}).get("name")
            cm = by_kind.get("ConfigMap", {}).get(cm_name)
            if cm is None:
                problem(cwhere, f"the config volume's ConfigMap {cm_name!r} is not rendered")
            elif cname not in cm.get("data", {}):
                problem(cwhere, f"ConfigMap {cm_name} has no key {cname}")
            else:
                config = check_router_toml(f"{where}: ConfigMap/{cm_name} {cname}",
                                           cm["data"][cname])
        if config.get("service_discovery") and pod.get("automountServiceAccountToken") is False:
            problem(dwhere, "service discovery needs the service account token mounted")

    # Shutdown: preStop sleep, then the drain, all within the grace period.
    pre_stop = (c.get("lifecycle") or {}).get("preStop") or {}
    sleep = 0
    if "sleep" in pre_stop:
        sleep = int(pre_stop["sleep"].get("seconds", 0))
    elif "exec" in pre_stop:
        command = [str(x) for x in pre_stop["exec"].get("command", [])]
        if len(command) == 2 and command[0].rsplit("/", 1)[-1] == "sleep":
            sleep = int(command[1])
    if sleep <= 0:
        problem(cwhere, "preStop must sleep so endpoint removal spreads before the drain")
    drain = int(args.get("shutdown-timeout-secs")
                or config.get("shutdown_timeout_secs", DEFAULT_SHUTDOWN_TIMEOUT_SECS))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= sleep + drain:
        problem(dwhere, f"terminationGracePeriodSeconds {grace} does not outlast the preStop "
                f"sleep ({sleep}) plus the drain ({drain})")

    # Discovery permissions: the pod's service account may get, list and watch pods.
    sa = pod.get("serviceAccountName", "default")
    if sa not in by_kind.get("ServiceAccount", {}):
        problem(dwhere, f"service account {sa} is not rendered")
    granted = False
    for binding in by_kind.get("RoleBinding", {}).values():
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa
                   for s in binding.get("subjects", [])):
            continue
        role = by_kind.get("Role", {}).get(binding["roleRef"]["name"])
        if role is None or binding["roleRef"].get("kind") != "Role":
            problem(where, f"RoleBinding/{binding['metadata']['name']} refers to a Role "
                    "that is not rendered")
            continue
        for rule in role.get("rules", []):
            if "" in rule.get("apiGroups", []) and "pods" in rule.get("resources", []) \
                    and {"get", "list", "watch"} <= set(rule.get("verbs", [])):
                granted = True
    if config.get("service_discovery") and not granted:
        problem(where, f"no Role bound to {sa} grants pods get/list/watch")

    # The Service and the PodDisruptionBudget cover the router's pods.
    services = list(by_kind.get("Service", {}).values())
    if not services:
        problem(where, "no Service")
    for svc in services:
        swhere = f"{where}: Service/{svc['metadata']['name']}"
        if not matches(svc["spec"].get("selector"), pod_labels):
            problem(swhere, "selector does not select the router pods")
        exposed = set()
        for port in svc["spec"].get("ports", []):
            target = container_port(c, port.get("targetPort", port.get("port")))
            if target is None:
                problem(swhere, f"targetPort {port.get('targetPort')!r} is no container port")
            exposed.add(target)
        for needed in (http_port, metrics_port):
            if needed not in exposed:
                problem(swhere, f"container port {needed} is not exposed")
    pdbs = list(by_kind.get("PodDisruptionBudget", {}).values())
    if not pdbs:
        problem(where, "no PodDisruptionBudget")
    for pdb in pdbs:
        pwhere = f"{where}: PodDisruptionBudget/{pdb['metadata']['name']}"
        if not matches(pdb["spec"].get("selector", {}).get("matchLabels"), pod_labels):
            problem(pwhere, "selector does not select the router pods")
        minimum = pdb["spec"].get("minAvailable")
        if not isinstance(minimum, int) or not 1 <= minimum < replicas:
            problem(pwhere, f"minAvailable {minimum!r} must be at least 1 and below the "
                    f"{replicas} replicas, or no node could ever be drained")


# ---------------------------------------------------------------- systemd


def unit_entries(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
        elif "=" in line:
            key, value = line.split("=", 1)
            sections.setdefault(current, []).append((key.strip(), value.strip()))
    return sections


def seconds(value: str) -> float:
    """A systemd time span: `45`, `45s`, `1min 30s`, `2m`."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units.get(unit, float("nan"))
    return total


def check_systemd(unit: Path, router_toml: Path) -> None:
    where = str(unit)
    service = dict()
    entries = unit_entries(unit.read_text()).get("Service", [])
    for key, value in entries:
        service.setdefault(key, []).append(value)

    def one(key: str) -> str:
        return (service.get(key) or [""])[-1]

    start = one("ExecStart").split()
    if not start or start[0] != f"/usr/local/bin/{BINARY}":
        problem(where, f"ExecStart must run /usr/local/bin/{BINARY}")
    config_path = start[start.index("--config") + 1] if "--config" in start[:-1] else None
    if config_path is None:
        problem(where, "ExecStart passes no --config")
    elif Path(config_path).name != router_toml.name:
        problem(where, f"ExecStart's --config {config_path} is not the example {router_toml}")
    if not any("kill -HUP $MAINPID" in r for r in service.get("ExecReload", [])):
        problem(where, "ExecReload must send SIGHUP to $MAINPID")
    if one("KillSignal") != "SIGTERM":
        problem(where, "KillSignal must be SIGTERM, which drains")
    if one("Restart") != "on-failure":
        problem(where, "Restart must be on-failure")
    if one("DynamicUser") != "yes" and one("User") in ("", "root", "0"):
        problem(where, "the service must not run as root")
    for key, wanted in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict")):
        if one(key) != wanted:
            problem(where, f"{key} must be {wanted}")

    try:
        config = tomllib.loads(router_toml.read_text())
    except tomllib.TOMLDecodeError as e:
        problem(str(router_toml), f"not valid TOML: {e}")
        return
    check_router_toml(str(router_toml), router_toml.read_text())
    drain = config.get("shutdown_timeout_secs", DEFAULT_SHUTDOWN_TIMEOUT_SECS)
    stop = seconds(one("TimeoutStopSec") or "90")
    if not stop > drain:
        problem(where, f"TimeoutStopSec ({stop:g} s) must exceed the drain, "
                f"shutdown_timeout_secs = {drain} in {router_toml}")


# ---------------------------------------------------------------- Dockerfile


def check_docker(path: Path, ignore: Path) -> None:
    where = str(path)
    try:
        commands = dockerfile.parse_file(str(path))
    except dockerfile.GoParseError as e:
        problem(where, f"does not parse: {e}")
        return
    stages: list[list] = []
    for cmd in commands:
        if cmd.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(cmd)
    if len(stages) < 2:
        problem(where, "expected a build stage and a runtime stage")
        return
    builder, final = stages[0], stages[-1]
    builder_name = builder[0].value[-1] if "AS" in [v.upper() for v in builder[0].value] else "0"
    if not any(c.cmd == "RUN" and re.search(
            rf"cargo build\b.*--release\b.*--locked\b.*-p {BINARY}\b", " ".join(c.value))
            for c in builder):
        problem(where, f"the build stage must run `cargo build --release --locked -p {BINARY}`")
    if not any(c.cmd == "COPY" and f"--from={builder_name}" in c.flags for c in final):
        problem(where, "the runtime stage must copy the binary from the build stage")
    users = [c for c in final if c.cmd == "USER"]
    user = users[-1].value[0].split(":")[0] if users else "0"
    if not user.isdigit() or int(user) == 0:
        problem(where, f"the runtime stage must end with a numeric non-root USER, not {user!r}")
    exposed = {v.split("/")[0] for c in final if c.cmd == "EXPOSE" for v in c.value}
    for port in (str(DEFAULT_PORT), str(DEFAULT_PROMETHEUS_PORT)):
        if port not in exposed:
            problem(where, f"port {port} is not EXPOSEd")
    entry = [c for c in final if c.cmd == "ENTRYPOINT"]
    if not entry or not entry[-1].json or entry[-1].value[0].rsplit("/", 1)[-1] != BINARY:
        problem(where, f"ENTRYPOINT must be the exec form of {BINARY}, so it gets SIGTERM")

    patterns = [line.strip().rstrip("/") for line in ignore.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in ("target", ".git"):
        if needed not in patterns:
            problem(str(ignore), f"{needed} must be excluded from the build context")
    root = path.parent
    for c in builder:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            for source in c.value[:-1]:
                if not (root / source).exists():
                    problem(where, f"COPY source {source} does not exist")
                if source.rstrip("/") in patterns:
                    problem(where, f"COPY source {source} is excluded by {ignore}")


def router_invocation(rendered: Path, outdir: Path) -> int:
    """Print the router container's arguments, one per line, with --config pointing at a copy
    of the rendered ConfigMap's file in OUTDIR, so the router can --check-config exactly what
    the pod would run."""
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    deploy = next(d for d in docs if d.get("kind") == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if BINARY in str(c.get("image", "")))
    args = [str(a) for a in c.get("args", [])]
    config_path = args_of(c).get("config") or ""
    cdir, cname = config_path.rsplit("/", 1)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == cdir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = next(d for d in docs if d.get("kind") == "ConfigMap"
              and d["metadata"]["name"] == volume["configMap"]["name"])
    local = outdir / cname
    local.write_text(cm["data"][cname])
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--config":
            out.append(f"--config={local}")
            skip = True
        elif arg.startswith("--config="):
            out.append(f"--config={local}")
        else:
            out.append(arg)
    print("\n".join(out))
    return 0


# ---------------------------------------------------------------- Grafana


def check_grafana(path: Path) -> None:
    """The dashboard imports anywhere: ids are unique, panels do not overlap on the 24-column
    grid, every query names the `datasource` variable (no data source uid of one site) and
    only the router's own series, and the variables it uses are defined. (That the queries
    are valid PromQL over series the router exports is tested against a live Prometheus.)"""
    import json

    where = str(path)
    try:
        dash = json.loads(path.read_text())
    except ValueError as e:
        problem(where, f"not JSON: {e}")
        return
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dash:
            problem(where, f"no {key}")
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    if "datasource" not in variables:
        problem(where, "no datasource variable")
    ids: set[int] = set()
    cells: dict[tuple[int, int], int] = {}
    for panel in dash.get("panels", []):
        pid = panel.get("id")
        name = f"{where}: panel {pid} ({panel.get('title')})"
        if pid in ids:
            problem(name, "id used twice")
        ids.add(pid)
        grid = panel.get("gridPos", {})
        x, y, w, h = (grid.get(k, -1) for k in ("x", "y", "w", "h"))
        if min(x, y, w, h) < 0 or x + w > 24:
            problem(name, f"gridPos {grid} is off the 24-column grid")
        for cx in range(max(x, 0), max(x + w, 0)):
            for cy in range(max(y, 0), max(y + h, 0)):
                if (cx, cy) in cells:
                    problem(name, f"overlaps panel {cells[(cx, cy)]}")
                    break
                cells[(cx, cy)] = pid
            else:
                continue
            break
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problem(name, "does not query the ${datasource} variable")
        targets = panel.get("targets") or []
        if not targets:
            problem(name, "no query")
        for target in targets:
            expr = target.get("expr", "")
            if "vllm_router_" not in expr:
                problem(name, f"query {expr!r} reads none of the router's series")
            for var in re.findall(r"\$(\w+)", expr):
                if not var.startswith("__") and var not in variables:
                    problem(name, f"query uses undefined variable ${var}")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    what, paths = argv[1], [Path(p) for p in argv[2:]]
    if what == "kustomization" and len(paths) == 1:
        check_kustomization(paths[0])
    elif what == "kubernetes" and len(paths) == 1:
        check_kubernetes(paths[0])
    elif what == "systemd" and len(paths) == 2:
        check_systemd(*paths)
    elif what == "router-invocation" and len(paths) == 2:
        return router_invocation(*paths)
    elif what == "docker" and len(paths) == 2:
        check_docker(*paths)
    elif what == "grafana" and len(paths) == 1:
        check_grafana(paths[0])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
