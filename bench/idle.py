#!/usr/bin/env python3
"""Idle-connection resilience: does a crowd of idle keep-alive clients slow everyone else?

Starts two simulated workers and the router (release builds), measures a normal request's
latency with wrk, then opens N keep-alive connections from a separate process (each sends one
request, reads the answer and stays idle), measures again with the crowd still connected,
and reports the p99 ratio and the router's memory per idle connection.

    bench/idle.sh [--connections 10000] [--duration 10]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from procs import free_port, log, start, stop, tail, wait_ready

HERE = Path(__file__).resolve().parent


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def wrk(url: str, duration: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", "-c8", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    res: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            v = parts[1]
            scale = 1000.0 if v.endswith("ms") else (1.0 if v.endswith("us") else 1e6)
            res[parts[0]] = float(v.rstrip("mus")) * scale / 1000.0
        elif line.strip().startswith("Non-2xx"):
            res["errors"] = float(parts[-1])
    return res


CROWD = r'''
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
async def one(held):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /liveness HTTP/1.1\r\nhost: x\r\n\r\n")
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    await r.readexactly(int(length[0].split(b":")[1]) if length else 0)
    held.append((r, w))
async def main():
    held = []
    for i in range(0, n, 500):
        await asyncio.gather(*(one(held) for _ in range(min(500, n - i))))
    print(f"open {len(held)}", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--router-bin", required=True)
    ap.add_argument("--sim-bin", required=True)
    args = ap.parse_args()
    limit = args.connections + 4096
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    work = Path(tempfile.mkdtemp(prefix="idle-"))
    script = work / "chat.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.body = \'{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"max_tokens":4}\'\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    procs: list[subprocess.Popen] = []
    try:
        ports = [free_port(), free_port()]
        for p in ports:
            procs.append(start([args.sim_bin, "--port", str(p), "--max-tokens", "4", "--log-level", "warn"],
                               work / f"sim-{p}.log"))
        for p in ports:
            if (why := wait_ready(f"http://127.0.0.1:{p}/health", procs[-1])) is not None:
                log(f"worker failed: {why}")
                return 1
        rport = free_port()
        # Idle connections close after the header-read timeout; keep them for the whole run.
        router = start([args.router_bin, "--port", str(rport), "--prometheus-port", "0", "--log-level", "warn",
                        "--header-read-timeout-secs", "300",
                        "--policy", "round_robin", "--worker-urls"] + [f"http://127.0.0.1:{p}" for p in ports],
                       work / "router.log")
        procs.append(router)
        url = f"http://127.0.0.1:{rport}"
        if (why := wait_ready(url + "/v1/models", router)) is not None:
            log(f"router failed: {why}\n{tail(work / 'router.log')}")
            return 1
        wrk(url + "/v1/chat/completions", 2, script)  # warm-up
        base = wrk(url + "/v1/chat/completions", args.duration, script)
        rss0, fds0 = rss_kb(router.pid), open_fds(router.pid)
        log(f"baseline: {base}")

        crowd = subprocess.Popen([sys.executable, "-c", CROWD, str(rport), str(args.connections)],
                                 stdout=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(crowd)
        line = crowd.stdout.readline().strip() if crowd.stdout else ""
        if not line.startswith("open"):
            log(f"the idle crowd failed to connect: {line!r}")
            return 1
        rss1, fds1 = rss_kb(router.pid), open_fds(router.pid)
        loaded = wrk(url + "/v1/chat/completions", args.duration, script)
        log(f"with {line}: {loaded}")
        ratio = loaded["99%"] / base["99%"] if base.get("99%") else float("nan")
        per_conn = (rss1 - rss0) * 1024 / max(1, fds1 - fds0)
        print("| idle connections | req/s | p50 ms | p99 ms | errors |\n|---:|---:|---:|---:|---:|")
        for n, r in ((0, base), (fds1 - fds0, loaded)):
            print(f"| {n} | {r.get('rps', 0):.0f} | {r.get('50%', 0):.2f} | {r.get('99%', 0):.2f} | {r.get('errors', 0):.0f} |")
        print(f"\np99 with the crowd / baseline: {ratio:.2f}x; router memory per idle connection: "
              f"{per_conn / 1024:.1f} KiB ({rss0 // 1024} MiB -> {rss1 // 1024} MiB)")
        return 0
    finally:
        for p in reversed(procs):
            stop(p)


if __name__ == "__main__":
    sys.exit(main())
