#!/usr/bin/env python3
"""Soak: mixed traffic through one router for a long while, with faults, and what it leaves.

Clients send chat completions, streamed and not, each with its own request id, while the
faults come round in turn: a worker killed (and restarted on its port), a worker hung
(SIGSTOP, then SIGCONT), answers of 500 that the client asked for (`X-Return-Error`), slow
readers, slow uploads, and config reloads (a worker added and removed, SIGHUP). At the start,
after the warm-up and at the end the router's RSS, file descriptors, requests in flight and
runtime tasks are read (descriptors and tasks net of the pooled connections to workers).

Checks (any failing one makes the exit status 1):
- RSS at the end of the traffic within `--rss-tolerance` (10%) of the RSS after the warm-up;
- descriptors, requests in flight and tasks back to their idle values once traffic stops;
- no request lost (every client request got an answer) and none answered twice (no request
  id completed on two workers);
- every failure a client saw is one a fault explains: an error it asked for, a 408 for a slow
  upload, or a 5xx/cut stream while a worker was killed or hung.

    bench/soak.sh [--duration 600] [--out bench/out/soak.md]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import emit, free_port, log, start, start_listening, stop, tail, wait_ready  # noqa: E402

MODEL = "sim-model"
# A failure within this long after a fault ended is still that fault's.
FAULT_GRACE_S = 4.0


@dataclass
class Outcome:
    rid: str
    stream: bool
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all
    ok: bool
    asked_error: bool = False
    kind: str = ""


@dataclass
class Faults:
    """When each fault was on: (name, start, end)."""

    windows: list[tuple[str, float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, start: float, end: float) -> None:
        with self.lock:
            self.windows.append((name, start, end))

    def explains(self, o: Outcome) -> str | None:
        """The worker fault under way while `o` ran, if any. A reload explains nothing: it
        must be seamless."""
        with self.lock:
            for name, start, end in self.windows:
                if name != "reload" and start <= o.ended and o.started <= end + FAULT_GRACE_S:
                    return name
        return None


class Fleet:
    """Three simulated workers on fixed ports (restarted on the same port after a kill)."""

    def __init__(self, sim_bin: str, work: Path, count: int):
        self.sim_bin, self.work = sim_bin, work
        self.ports = [free_port() for _ in range(count)]
        self.procs: list = [None] * count

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def start(self, i: int) -> None:
        argv = [self.sim_bin, "--port", str(self.ports[i]), "--itl-ms", "4", "--ttft-ms", "20",
                "--log-level", "warn"]
        for attempt in range(50):
            proc = start(argv, self.work / f"sim-{i}.log", append=True)
            if wait_ready(self.url(i) + "/health", proc, timeout=10) is None:
                self.procs[i] = proc
                return
            stop(proc)
            time.sleep(0.2 * (attempt + 1))
        raise SystemExit(f"vllm-sim {i} would not start:\n{tail(self.work / f'sim-{i}.log')}")

    def records(self, i: int) -> list[dict]:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.ports[i], timeout=10)
            conn.request("GET", "/sim/records")
            return json.loads(conn.getresponse().read())
        except (OSError, ValueError):
            return []

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGCONT)
                stop(proc)


def config_text(fleet: Fleet, with_extra: bool, retries: int) -> str:
    urls = [fleet.url(i) for i in range(len(fleet.ports) - 1)]
    if with_extra:
        urls.append(fleet.url(len(fleet.ports) - 1))
    workers = "".join(f'\n[[workers]]\nurl = "{u}"\n' for u in urls)
    return f"retry_max_retries = {retries}\n{workers}"


def metrics(port: int) -> dict[str, float]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def pooled(pid: int, ports: set[int]) -> int:
    """The router's connections to the workers (its idle pool, kept up to 50 s): each is a
    descriptor and a task that are the pool's, not a leak."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        remote_port = int(cols[2].split(":")[1], 16)
        if cols[3] == "01" and remote_port in ports and cols[9] in inodes:
            count += 1
    return count


def sample(pid: int, metrics_port: int, worker_ports: set[int]) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    pool = pooled(pid, worker_ports)
    fds = len(os.listdir(f"/proc/{pid}/fd")) - pool
    m = metrics(metrics_port)
    in_flight = sum(v for k, v in m.items() if k.startswith("vllm_router_worker_in_flight"))
    return {
        "rss_mib": rss_kib / 1024,
        "fds": fds,
        "in_flight": in_flight + m.get("vllm_router_admission_in_use", 0.0),
        "tasks": m.get("vllm_router_runtime_alive_tasks", -1.0) - pool,
        "pooled": pool,
    }


def chat_body(stream: bool, tokens: int) -> bytes:
    return json.dumps({
        "model": MODEL, "stream": stream, "max_tokens": tokens,
        "messages": [{"role": "user", "content": "soak " * random.randint(1, 40)}],
    }).encode()


def one_request(port: int, rid: str, stream: bool, asked_error: bool, slow_read: bool) -> Outcome:
    started = time.time()
    headers = {"content-type": "application/json", "x-request-id": rid}
    if asked_error:
        headers["x-return-error"] = "500"
    o = Outcome(rid, stream, started, started, 0, False, asked_error)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=90)
        conn.request("POST", "/v1/chat/completions", chat_body(stream, random.randint(4, 48)), headers)
        resp = conn.getresponse()
        o.status = resp.status
        if stream and resp.status == 200:
            text = b""
            while chunk := resp.read1(256 if slow_read else 65536):
                text += chunk
                if slow_read:
                    time.sleep(0.05)
            o.ok = b"data: [DONE]" in text and b'"error"' not in text
            o.kind = "" if o.ok else "stream cut"
        else:
            resp.read()
            o.ok = resp.status == 200
            o.kind = "" if o.ok else f"status {resp.status}"
        conn.close()
    except (OSError, http.client.HTTPException) as e:
        o.kind = f"no answer: {type(e).__name__}"
    o.ended = time.time()
    return o


def slow_upload(port: int) -> str:
    """Send a body at a byte every half second: the router answers 408."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: r\r\n"
                      b"content-type: application/json\r\ncontent-length: 500\r\n\r\n{")
            s.settimeout(0.5)
            received = b""
            for _ in range(120):
                try:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    received += chunk
                except socket.timeout:
                    try:
                        s.sendall(b" ")
                    except OSError:
                        break
            return received.split(b"\r\n", 1)[0].decode(errors="replace")
    except OSError as e:
        return f"error {e}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router-bin", required=True)
    ap.add_argument("--sim-bin", required=True)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--fault-every", type=float, default=8.0, help="seconds between faults")
    ap.add_argument("--rss-tolerance", type=float, default=0.10)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    random.seed(args.seed)

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    fleet = Fleet(args.sim_bin, work, 4)
    for i in range(len(fleet.ports)):
        fleet.start(i)
    config = work / "router.toml"
    config.write_text(config_text(fleet, False, 3))
    metrics_port = free_port()
    router, (url,) = start_listening([
        args.router_bin, "--config", str(config), "--port", "0",
        "--prometheus-port", str(metrics_port), "--log-level", "warn",
        "--first-byte-timeout-secs", "2", "--stream-idle-timeout-secs", "3",
        "--health-check-interval-secs", "1", "--health-check-timeout-secs", "1",
        "--max-concurrent-requests", "64", "--body-read-timeout-secs", "10",
    ], work / "router.log", 1)
    port = int(url.rsplit(":", 1)[1])
    time.sleep(1.0)
    idle_start = sample(router.pid, metrics_port, set(fleet.ports))
    log(f"soak: {args.duration:.0f}s of traffic, idle {idle_start}")

    faults = Faults()
    outcomes: list[Outcome] = []
    uploads: list[str] = []
    lock = threading.Lock()
    stop_at = time.time() + args.duration
    counter = iter(range(10**9))

    def client(n: int) -> None:
        slow = n % 8 == 7  # one in eight clients reads slowly
        while time.time() < stop_at:
            with lock:
                rid = f"soak-{next(counter)}"
            o = one_request(port, rid, random.random() < 0.6, random.random() < 0.03, slow)
            with lock:
                outcomes.append(o)

    def uploader() -> None:
        while time.time() < stop_at:
            line = slow_upload(port)
            with lock:
                uploads.append(line)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(args.clients)]
    threads += [threading.Thread(target=uploader, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()

    warm: dict[str, float] | None = None
    extra, retries, turn = False, 3, 0
    next_fault = time.time() + args.fault_every
    while time.time() < stop_at:
        time.sleep(0.2)
        if warm is None and time.time() >= stop_at - args.duration + args.warmup:
            warm = sample(router.pid, metrics_port, set(fleet.ports))
            log(f"soak: after the warm-up {warm}")
        if time.time() < next_fault or time.time() > stop_at - 6:
            continue
        kind = ("kill", "hang", "reload")[turn % 3]
        victim = turn % (len(fleet.ports) - 1)  # never the worker that reloads add and remove
        turn += 1
        began = time.time()
        if kind == "kill":
            os.killpg(fleet.procs[victim].pid, signal.SIGKILL)
            fleet.procs[victim].wait()
            time.sleep(2.0)
            fleet.start(victim)
        elif kind == "hang":
            os.killpg(fleet.procs[victim].pid, signal.SIGSTOP)
            time.sleep(3.0)
            os.killpg(fleet.procs[victim].pid, signal.SIGCONT)
        else:
            extra, retries = not extra, 5 - retries
            config.write_text(config_text(fleet, extra, retries))
            os.kill(router.pid, signal.SIGHUP)
        faults.add(f"{kind} worker {victim}" if kind != "reload" else "reload", began, time.time())
        log(f"soak: {kind} at {began - (stop_at - args.duration):.0f}s")
        next_fault = time.time() + args.fault_every

    for t in threads:
        t.join(timeout=120)
    time.sleep(3.0)
    end_busy = sample(router.pid, metrics_port, set(fleet.ports))
    time.sleep(2.0)
    idle_end = sample(router.pid, metrics_port, set(fleet.ports))

    # Who answered what, from the workers still holding their records.
    completed: dict[str, int] = {}
    for i in range(len(fleet.ports)):
        for r in fleet.records(i):
            if r.get("status") == 200 and not r.get("cancelled") and r.get("request_id"):
                completed[r["request_id"]] = completed.get(r["request_id"], 0) + 1
    twice = sorted(rid for rid, n in completed.items() if n > 1)

    failures: dict[str, int] = {}
    unexplained: list[Outcome] = []
    lost = 0
    for o in outcomes:
        if o.ok or (o.asked_error and o.status == 500):
            continue
        if o.status == 0:
            lost += 1
        cause = faults.explains(o)
        key = f"{o.kind} ({cause})" if cause else f"{o.kind} (unexplained)"
        failures[key] = failures.get(key, 0) + 1
        if cause is None:
            unexplained.append(o)
    uploads_by: dict[str, int] = {}
    for line in uploads:
        uploads_by[line] = uploads_by.get(line, 0) + 1

    stop(router)
    fleet.stop()

    rss_growth = (end_busy["rss_mib"] - warm["rss_mib"]) / warm["rss_mib"] if warm else None
    checks = [
        ("RSS within tolerance after the warm-up", rss_growth is not None and rss_growth <= args.rss_tolerance,
         f"{warm and warm['rss_mib']:.1f} -> {end_busy['rss_mib']:.1f} MiB ({(rss_growth or 0) * 100:+.1f}%)"),
        ("descriptors back to idle", idle_end["fds"] <= idle_start["fds"],
         f"{idle_start['fds']:.0f} -> {idle_end['fds']:.0f}"),
        ("in flight back to idle", idle_end["in_flight"] == idle_start["in_flight"],
         f"{idle_start['in_flight']:.0f} -> {idle_end['in_flight']:.0f}"),
        ("tasks back to idle", idle_end["tasks"] <= idle_start["tasks"],
         f"{idle_start['tasks']:.0f} -> {idle_end['tasks']:.0f}"),
        ("no request lost", lost == 0 or all(faults.explains(o) for o in outcomes if o.status == 0 and not o.ok),
         f"{lost} without an answer, all during a fault" if lost else "0"),
        ("no request answered twice", not twice, ", ".join(twice[:5]) or "0"),
        ("every failure explained by a fault", not unexplained,
         "; ".join(f"{o.rid} {o.kind}" for o in unexplained[:5]) or "all"),
        ("slow uploads answered 408", all("408" in k for k in uploads_by) and bool(uploads_by),
         ", ".join(f"{k or 'nothing'}: {v}" for k, v in uploads_by.items())),
    ]
    ok = all(passed for _, passed, _ in checks)
    served = sum(1 for o in outcomes if o.ok)
    lines = [
        f"# Soak: {args.duration:.0f} s, {args.clients} clients, a fault every {args.fault_every:.0f} s",
        "",
        f"{len(outcomes)} requests ({served} answered whole, "
        f"{sum(1 for o in outcomes if o.asked_error)} asking for a 500), "
        f"{len(uploads)} slow uploads, {len(faults.windows)} faults.",
        "",
        "| | start (idle) | after warm-up | end of traffic | end (idle) |",
        "|---|---|---|---|---|",
    ]
    for key, unit in (("rss_mib", "MiB"), ("fds", ""), ("in_flight", ""), ("tasks", ""), ("pooled", "")):
        vals = [idle_start, warm or {}, end_busy, idle_end]
        lines.append(f"| {key} | " + " | ".join(f"{v.get(key, float('nan')):.1f} {unit}".strip() for v in vals) + " |")
    lines += ["", "| check | | |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if passed else 'FAIL'} | {detail} |" for name, passed, detail in checks]
    lines += ["", "Failures the clients saw, by cause:", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(failures.items())] or ["- none"]
    emit(lines, args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
