#!/usr/bin/env python3
"""Measure what a proxy adds in front of vLLM: vllm-router vs vllm-router 0.1.17 vs smg vs nginx.

One `vllm-sim` process serves two fast simulated workers. For every round, each target is
started on a free port, warmed up, then loaded with `wrk` twice (non-streaming and streaming
chat completions). `direct` is wrk straight at worker 1 with no proxy: the baseline the added
latency is measured against. Rounds alternate the order of the targets so drift (thermal,
noisy neighbours) does not favour one of them. Medians over rounds are reported.

Standard library only; normally started by `bench/overhead.sh`, which builds and installs
everything this needs and passes the paths.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from procs import (free_port, log, machine_line, nginx_argv, start, start_listening, stop, tail,
                   version_of, wait_ready)

MODEL = "sim-model"
WARMUP_S = 1
MODES = ("non-stream", "stream")
# ours: round_robin, quiet; ours-info: the same with an access line per request on stderr;
# ours-logged: keys checked plus access lines on stderr and in three files; ours-2k and
# ours-default: round_robin and the default policy (cache_aware) on a 2 KB chat prompt.
PROXIES = ("ours", "ours-info", "ours-logged", "ours-2k", "ours-default", "peer", "smg", "nginx")
# Every request carries it; `ours-logged` requires it, the others pass it on or ignore it.
BENCH_KEY = "bench-key"
TARGETS = ("direct",) + PROXIES
# The targets sent the 2 KB prompt; the others get a one-word message.
LONG_PROMPT = ("ours-2k", "ours-default")



# ---------------------------------------------------------------------------------------------
# processes





def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised command name, which may itself hold spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry))
    return found


def family(pid: int) -> list[int]:
    """`pid` and its live descendants (nginx workers, forked helpers)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children(p))
    return found


def cpu_secs(pid: int) -> float:
    """User plus system CPU time of `pid` and its live descendants, in seconds."""
    total = 0
    for p in family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime and stime are fields 14 and 15; the split starts at field 3.
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_kb(pid: int) -> int:
    """VmHWM of `pid` plus that of all its descendants (nginx workers, forked helpers)."""
    total = 0
    for p in family(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total





def start_sim(sim_bin: str, workdir: Path) -> tuple[subprocess.Popen, list[str]]:
    argv = [sim_bin, "--port", "0", "--count", "2", "--max-tokens", "4", "--log-level", "warn"]
    return start_listening(argv, workdir / "sim.log", 2)


# ---------------------------------------------------------------------------------------------
# the targets


@dataclass
class Paths:
    router: str
    sim: str
    peer: str
    nginx: str
    wrk: str
    smg: str | None = None
    baseline: str | None = None


@dataclass
class Running:
    url: str
    proc: subprocess.Popen | None
    log: Path


def start_target(name: str, paths: Paths, workers: list[str], workdir: Path) -> Running:
    logf = workdir / f"{name}.log"
    if name == "direct":
        return Running(workers[0], None, logf)
    port = free_port()
    quiet = ["--host", "127.0.0.1", "--port", str(port), "--prometheus-port", "0",
             "--worker-urls", *workers]
    if name in ("ours", "baseline", "ours-2k"):
        router = paths.router if name != "baseline" else paths.baseline
        argv = [router, *quiet, "--policy", "round_robin", "--log-level", "warn"]
    elif name == "ours-default":
        argv = [paths.router, *quiet, "--log-level", "warn"]
    elif name == "ours-info":
        argv = [paths.router, *quiet, "--policy", "round_robin", "--log-level", "info"]
    elif name == "ours-logged":
        # Production-like: client keys checked, and one access line per request written to
        # stderr and to the three log files.
        argv = [
            paths.router, *quiet, "--policy", "round_robin", "--log-level", "info",
            "--api-keys", BENCH_KEY, "--log-dir", str(workdir / "logs"),
        ]
    elif name == "peer":
        argv = [
            paths.peer, "--worker-urls", *workers, "--policy", "round_robin",
            "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(free_port()),
            "--log-level", "warning",
        ]
    elif name == "smg":
        # As bench/quality.py starts it: metrics on loopback, a short drain at shutdown.
        argv = [
            paths.smg, "launch", "--host", "127.0.0.1", "--port", str(port),
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
            "--shutdown-grace-period-secs", "1", "--log-level", "warn",
            "--worker-urls", *workers, "--policy", "round_robin",
        ]
    elif name == "nginx":
        argv = nginx_argv(paths.nginx, port, workers, workdir / "nginx")
    else:
        raise ValueError(name)
    return Running(f"http://127.0.0.1:{port}", start(argv, logf), logf)




# ---------------------------------------------------------------------------------------------
# wrk


def chat_body(mode: str, long_prompt: bool) -> dict:
    if long_prompt:
        # About 2 KB of chat: a system prompt and a question.
        system = "You are a careful assistant. Answer briefly and cite the document you use. " * 20
        user = "Please summarise the attached quarterly report in three short points. " * 6
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    else:
        messages = [{"role": "user", "content": "hello"}]
    body = {"model": MODEL, "messages": messages, "max_tokens": 4}
    if mode == "stream":
        body["stream"] = True
    return body


def write_lua(workdir: Path) -> dict[tuple[str, bool], Path]:
    scripts = {}
    for mode in MODES:
        for long_prompt in (False, True):
            body = json.dumps(chat_body(mode, long_prompt), separators=(",", ":"))
            path = workdir / f"{mode}{'-2k' if long_prompt else ''}.lua"
            # `done` runs once at the end (no per-request Lua cost) and reports the count of
            # non-2xx/3xx answers and socket errors in a line of its own.
            path.write_text(textwrap.dedent(f"""\
                wrk.method = "POST"
                wrk.body = '{body}'
                wrk.headers["Content-Type"] = "application/json"
                wrk.headers["Authorization"] = "Bearer {BENCH_KEY}"

                function done(summary, latency, requests)
                   local e = summary.errors
                   io.write(string.format("bench-errors status=%d connect=%d read=%d write=%d timeout=%d\\n",
                      e.status, e.connect, e.read, e.write, e.timeout))
                end
            """))
            scripts[(mode, long_prompt)] = path
    return scripts


UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unparseable latency {text!r}")
    return float(m.group(1)) * UNIT_MS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    # The proxy's CPU time per answered request, in microseconds (None for `direct`).
    cpu_us: float | None = None


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", out, re.M)
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    if not (rps and p50 and p99):
        raise ValueError("wrk output lacks Requests/sec or the latency distribution")
    counted = re.search(
        r"^bench-errors status=(\d+) connect=(\d+) read=(\d+) write=(\d+) timeout=(\d+)", out, re.M
    )
    if counted:
        errors = sum(int(x) for x in counted.groups())
    else:  # the printed summary says the same, when there is anything to say
        non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
        sock = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        errors = (int(non2xx.group(1)) if non2xx else 0) + (
            sum(int(x) for x in sock.groups()) if sock else 0
        )
    return WrkResult(float(rps.group(1)), to_ms(p50.group(1)), to_ms(p99.group(1)), errors)


def run_wrk(wrk: str, url: str, script: Path, duration: int, connections: int) -> WrkResult:
    argv = [
        wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
        url + "/v1/chat/completions",
    ]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    if res.returncode != 0:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stderr.strip() or res.stdout}")
    return parse_wrk(res.stdout)


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Sample:
    results: dict[str, WrkResult] = field(default_factory=dict)
    rss_kb: int | None = None


def wait_smg_workers(url: str, proc: subprocess.Popen, workers: int, timeout: float = 60.0) -> str | None:
    """smg answers /readiness once one worker is healthy: wait for all of them."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/readiness", timeout=5) as resp:
                healthy = json.loads(resp.read() or b"{}").get("healthy_workers", 0)
        except (OSError, ValueError, urllib.error.URLError):
            healthy = 0
        if healthy >= workers:
            return None
        if time.monotonic() > deadline or proc.poll() is not None:
            return f"{healthy} of {workers} workers healthy"
        time.sleep(0.1)


def measure(name: str, paths: Paths, workers: list[str], workdir: Path,
            scripts: dict[tuple[str, bool], Path], args: argparse.Namespace) -> Sample:
    target = start_target(name, paths, workers, workdir)
    long_prompt = name in LONG_PROMPT
    try:
        # The keyed target's /v1/models needs the key; its readiness says the same.
        ready = "/readiness" if name in ("ours-logged", "smg") else "/v1/models"
        why = wait_ready(target.url + ready, target.proc)
        if not why and name == "smg":
            why = wait_smg_workers(target.url, target.proc, len(workers))
        if why:
            raise RuntimeError(f"{name} did not become ready: {why}\n{tail(target.log)}")
        run_wrk(paths.wrk, target.url, scripts[("non-stream", long_prompt)], WARMUP_S,
                args.connections)
        sample = Sample()
        for mode in MODES:
            before = cpu_secs(target.proc.pid) if target.proc is not None else None
            result = run_wrk(
                paths.wrk, target.url, scripts[(mode, long_prompt)], args.duration,
                args.connections
            )
            if before is not None and result.rps > 0:
                spent = cpu_secs(target.proc.pid) - before
                result.cpu_us = spent * 1e6 / (result.rps * args.duration)
            sample.results[mode] = result
        if target.proc is not None:
            sample.rss_kb = peak_rss_kb(target.proc.pid)
        return sample
    finally:
        if target.proc is not None:
            stop(target.proc)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}x"




def report(samples: dict[str, list[Sample]], failures: dict[str, str],
           args: argparse.Namespace, paths: Paths, targets: tuple[str, ...]) -> str:
    agg: dict[tuple[str, str], dict[str, float | None]] = {}
    for name in targets:
        for mode in MODES:
            rs = [s.results[mode] for s in samples[name] if mode in s.results]
            agg[(name, mode)] = {
                "rps": median([r.rps for r in rs]),
                "p50": median([r.p50_ms for r in rs]),
                "p99": median([r.p99_ms for r in rs]),
                "errors": sum(r.errors for r in rs) if rs else None,
                "cpu": median([r.cpu_us for r in rs if r.cpu_us is not None]),
            }
    rss = {
        name: max((s.rss_kb for s in samples[name] if s.rss_kb is not None), default=None)
        for name in targets
    }

    lines = [
        "# Proxy overhead",
        "",
        f"Machine: {machine_line()}.",
        "",
        f"Load: `wrk -t1 -c{args.connections} -d{args.duration}s`, {args.rounds} round(s) in "
        f"alternating order, medians over rounds. Backend: one `vllm-sim` process with two "
        f"workers (`--max-tokens 4`, no simulated delays). Body: chat completion, "
        f"`max_tokens: 4`, with and without `stream: true`.",
        "",
        f"Proxies: ours = `{version_of([paths.router, '--version'])}` (round_robin, "
        f"`--log-level warn`); ours-info = the same at `--log-level info` (an access line per "
        f"request on stderr); ours-logged = the same with `--api-keys` checked on every "
        f"request and `--log-dir` (the access line on stderr and in three files); ours-2k and "
        f"ours-default = round_robin and the default policy (cache_aware) on a chat body with "
        f"a 2 KB prompt (a system prompt and a question), the other targets a one-word "
        f"message; peer = `vllm-router` 0.1.17 from PyPI (round_robin); smg = "
        f"`{version_of([paths.smg, '--version']) if paths.smg else 'not run'}` (round_robin); "
        f"nginx = `{version_of([paths.nginx, '-v'])}` (least_conn, keepalive 64, 1 worker). "
        f"Load generator: `{version_of([paths.wrk, '-v'])}`.",
        "",
        "Added latency is the target's median minus the median of `direct` (wrk straight at one "
        "worker); a negative value means the difference is within run-to-run noise. Peak RSS is "
        "VmHWM of the proxy's processes (the Python process hosting the peer; nginx master and "
        "worker), the largest over rounds. CPU is the proxy's processes' user and system time "
        "during the run over the requests answered, in microseconds: what a request costs the "
        "proxy whatever the machine's saturation. Errors are non-2xx answers plus socket "
        "errors, summed.",
        "",
        "| target | mode | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU µs/req "
        "| peak RSS MB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in targets:
        rss_mb = "-" if name == "direct" else fmt(None if rss[name] is None else rss[name] / 1024, 1)
        for mode in MODES:
            a, d = agg[(name, mode)], agg[("direct", mode)]

            def added(key: str) -> str:
                if name == "direct":
                    return "-"
                return fmt(None if a[key] is None or d[key] is None else a[key] - d[key])

            errors = "n/a" if a["errors"] is None else str(int(a["errors"]))
            lines.append(
                f"| {name} | {mode} | {fmt(a['rps'], 0)} | {fmt(a['p50'])} | {fmt(a['p99'])} | "
                f"{added('p50')} | {added('p99')} | {fmt(a['cpu'], 1)} | {rss_mb} | {errors} |"
            )
    def row(label: str, a: str, b: str, key: str = "rps") -> list[str]:
        if a not in targets or b not in targets:
            return []
        return [f"| {label} | "
                + " | ".join(ratio(agg[(a, m)][key], agg[(b, m)][key]) for m in MODES) + " |"]

    def mb(name: str) -> str:
        return fmt(None if rss.get(name) is None else rss[name] / 1024, 1)

    lines += ["", "| ratio | non-stream | stream |", "|---|---:|---:|"]
    lines += row("throughput ours/nginx (higher is better)", "ours", "nginx")
    lines += row("p99 ours/nginx (lower is better)", "ours", "nginx", "p99")
    lines += row("CPU per request ours/nginx (lower is better)", "ours", "nginx", "cpu")
    lines += row("throughput ours/peer (higher is better)", "ours", "peer")
    lines += row("p99 ours/peer (lower is better)", "ours", "peer", "p99")
    lines += row("throughput ours/smg (higher is better)", "ours", "smg")
    lines += row("p99 ours/smg (lower is better)", "ours", "smg", "p99")
    lines += row("throughput ours-default/ours-2k (the default policy's cost, 2 KB prompt)",
                 "ours-default", "ours-2k")
    lines += row("throughput ours-info/ours (the cost of access lines)", "ours-info", "ours")
    lines += row("throughput ours-logged/ours (keys, access lines and log files)",
                 "ours-logged", "ours")
    lines += row("throughput ours-logged/peer (higher is better)", "ours-logged", "peer")
    for other in ("peer", "smg", "nginx"):
        if "ours" in targets and other in targets:
            lines += ["", f"Peak RSS ours/{other} (lower is better): "
                      f"{ratio(rss['ours'], rss[other])} ({mb('ours')} MB vs {mb(other)} MB)."]
    if "baseline" in targets:
        lines += [
            "",
            f"Baseline: `{paths.baseline}`, flags as ours. Throughput ours/baseline: "
            + ", ".join(f"{m} {ratio(agg[('ours', m)]['rps'], agg[('baseline', m)]['rps'])}"
                        for m in MODES) + ".",
        ]
    if failures:
        lines += ["", "Failures:", ""]
        lines += [f"- {name}: {why.splitlines()[0]}" for name, why in failures.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    here = Path(__file__).resolve().parent
    root = here.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run (whole seconds)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--router-bin", default=str(root / "target/release/vllm-router"))
    ap.add_argument("--sim-bin", default=str(root / "target/release/vllm-sim"))
    ap.add_argument("--peer-bin", default=str(Path.home() / ".cache/vllm-router-bench/bin/vllm-router"))
    ap.add_argument("--nginx", default=shutil.which("nginx") or "nginx")
    ap.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    ap.add_argument("--smg-bin", default=str(Path.home() / ".cache/vllm-router-bench-smg/bin/smg"))
    ap.add_argument("--targets", help="comma list of targets to run (default: all; `direct` "
                    "always runs, added latency is measured against it)")
    ap.add_argument("--baseline-bin", help="also measure this build of the router (e.g. an "
                    "earlier commit) as `baseline`, with the same flags as `ours`")
    args = ap.parse_args()
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        ap.error("--rounds, --duration and --connections must be positive")
    targets = TARGETS + (("baseline",) if args.baseline_bin else ())
    if args.targets:
        chosen = set(args.targets.split(","))
        unknown = chosen - set(targets)
        if unknown:
            ap.error(f"--targets: unknown {', '.join(sorted(unknown))}; known: {', '.join(targets)}")
        targets = tuple(t for t in targets if t == "direct" or t in chosen)
    paths = Paths(args.router_bin, args.sim_bin, args.peer_bin, args.nginx, args.wrk,
                  args.smg_bin if "smg" in targets else None, args.baseline_bin)
    for what, p in vars(paths).items():
        if p is None:
            continue
        if not (os.access(p, os.X_OK) or shutil.which(p)):
            ap.error(f"{what}: {p} is not an executable")

    samples: dict[str, list[Sample]] = {name: [] for name in targets}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vllm-router-bench-") as tmp:
        workdir = Path(tmp)
        scripts = write_lua(workdir)
        sim, workers = start_sim(paths.sim, workdir)
        try:
            log(f"workers: {' '.join(workers)}")
            for rnd in range(args.rounds):
                order = targets if rnd % 2 == 0 else tuple(reversed(targets))
                for name in order:
                    if name in failures:
                        continue
                    log(f"round {rnd + 1}/{args.rounds}: {name}")
                    try:
                        sample = measure(name, paths, workers, workdir, scripts, args)
                    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as err:
                        failures[name] = str(err)
                        log(f"  FAILED: {err}")
                        continue
                    samples[name].append(sample)
                    for mode, r in sample.results.items():
                        log(f"  {mode:10} {r.rps:9.0f} req/s  p50 {r.p50_ms:7.2f} ms  "
                            f"p99 {r.p99_ms:7.2f} ms  errors {r.errors}")
                    if sample.rss_kb is not None:
                        log(f"  peak RSS {sample.rss_kb / 1024:.1f} MB")
                if sim.poll() is not None:
                    raise SystemExit(f"vllm-sim exited mid-run:\n{tail(workdir / 'sim.log')}")
        finally:
            stop(sim)

    text = report(samples, failures, args, paths, targets)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
