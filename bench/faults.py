#!/usr/bin/env python3
"""The same worker faults, in front of our router and vllm-router 0.1.17: what the client sees.

Each scenario starts fresh `vllm-sim` processes and one router, injects one fault, and
records the client's view. Scenarios: a refused connection, a worker killed mid-stream, a
hung worker (both routers given a 2 s timeout), a client that leaves mid-stream, a worker
answering 500, and /health with one of two workers down.

    bench/faults.sh
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from procs import free_port, http_get, log, start, stop, wait_ready

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class Env:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work, self.procs = args, work, []

    def sim(self, *flags: str) -> tuple[str, subprocess.Popen]:
        port = free_port()
        proc = start([self.args.sim_bin, "--port", str(port), "--log-level", "warn", *flags],
                     self.work / f"sim-{port}.log")
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        if wait_ready(url + "/health", proc) is not None:
            raise RuntimeError("sim failed to start")
        return url, proc

    def router(self, which: str, workers: list[str], *extra: str) -> str:
        port = free_port()
        if which == "ours":
            argv = [self.args.router_bin, "--prometheus-port", "0", "--log-level", "warn"]
        else:
            argv = [self.args.peer_bin, "--prometheus-port", str(free_port()), "--log-level", "warning"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin",
                 "--worker-urls", *workers, *extra]
        proc = start(argv, self.work / f"{which}-{port}.log")
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        if wait_ready(url + "/liveness" if which == "ours" else url + "/health", proc, 60) is not None:
            wait_ready(url + "/v1/models", proc, 30)
        return url

    def close(self) -> None:
        for p in reversed(self.procs):
            stop(p)
        self.procs.clear()


def post(url: str, body: dict, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:  # noqa: BLE001 - the client's view is the result
        return 0, str(e).encode()


def raw_stream(url: str, kill_after_first: subprocess.Popen | None = None, leave: bool = False) -> str:
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": "sim-model", "prompt": "x", "max_tokens": 40, "stream": True})
    s = socket.create_connection((host, int(port)), timeout=15)
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\n"
               f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}").encode())
    got = b""
    while b"data: " not in got:
        chunk = s.recv(4096)
        if not chunk:
            return "closed before the first event"
        got += chunk
    if leave:
        s.close()
        return "left"
    if kill_after_first is not None:
        kill_after_first.send_signal(signal.SIGKILL)
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError as e:
        return f"socket error ({e.__class__.__name__})"
    text = got.decode(errors="replace")
    if "data: [DONE]" in text:
        return "complete"
    if '"error"' in text.split("data: ", 1)[-1] or 'data: {"error"' in text:
        return "error event, no [DONE]"
    return "silently truncated: clean end, no [DONE], no error"


def scenarios(env: Env, which: str) -> dict[str, str]:
    out: dict[str, str] = {}
    # 1. One of two workers refuses connections.
    a, _ = env.sim()
    b, pb = env.sim()
    r = env.router(which, [a, b])
    stop(pb)
    codes = [post(r + "/v1/chat/completions", CHAT)[0] for _ in range(10)]
    out["worker refuses connections (1 of 2)"] = f"{codes.count(200)}/10 answered 200 ({sorted(set(codes))})"
    h = http_get(r + "/health")[0]
    out["/health with 1 of 2 workers down"] = f"{h}"
    env.close()
    # 2. The serving worker is killed mid-stream.
    a, pa = env.sim("--itl-ms", "100")
    r = env.router(which, [a])
    out["worker killed mid-stream"] = raw_stream(r, kill_after_first=pa)
    env.close()
    # 3. A hung worker next to a good one; both routers get a 2 s timeout.
    a, _ = env.sim("--hang")
    b, _ = env.sim()
    flags = ("--first-byte-timeout-secs", "2") if which == "ours" else ("--request-timeout-secs", "2")
    r = env.router(which, [a, b], *flags)
    t0 = time.monotonic()
    codes = [post(r + "/v1/chat/completions", CHAT, timeout=15)[0] for _ in range(4)]
    out["one worker hangs (2 s timeout)"] = f"{codes.count(200)}/4 answered 200 ({sorted(set(codes))}) in {time.monotonic() - t0:.1f}s"
    env.close()
    # 4. The client leaves mid-stream: is the worker's request cancelled?
    a, _ = env.sim("--itl-ms", "100")
    r = env.router(which, [a])
    raw_stream(r, leave=True)
    time.sleep(0.5)
    records = json.loads(http_get(a + "/sim/records")[1] or b"[]")
    cancelled = [x for x in records if x.get("cancelled")]
    out["client leaves mid-stream"] = "worker request cancelled" if cancelled else "worker kept generating"
    env.close()
    # 5. A worker answering 500 to everything, next to a good one.
    a, _ = env.sim("--error-rate", "1")
    b, _ = env.sim()
    r = env.router(which, [a, b])
    codes = [post(r + "/v1/chat/completions", CHAT)[0] for _ in range(20)]
    out["worker answers 500 (1 of 2), 20 requests"] = f"{codes.count(200)}/20 answered 200"
    env.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router-bin", required=True)
    ap.add_argument("--sim-bin", required=True)
    ap.add_argument("--peer-bin", required=True)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    env = Env(args, work)
    results = {}
    try:
        for which in ("ours", "peer"):
            log(f"== {which}")
            results[which] = scenarios(env, which)
            for k, v in results[which].items():
                log(f"  {k}: {v}")
    finally:
        env.close()
    print("| fault | ours | vllm-router 0.1.17 |\n|---|---|---|")
    for k in results["ours"]:
        print(f"| {k} | {results['ours'][k]} | {results['peer'].get(k, '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
