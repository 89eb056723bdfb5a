#!/usr/bin/env python3
"""Slow uploads against an admission limit: does a normal client still get its answers?

Two simulated workers behind one router with `--max-concurrent-requests 8`. A normal client
sends non-streamed chat completions one after another; in the loaded phases, `--uploaders`
(200) other clients each open a request and send its body a byte a second, reconnecting when
the router answers them. Phases alternate (quiet, loaded) for `--rounds` rounds; the report
gives the normal client's median and p99 latency per phase (medians over rounds, with their
spreads), the ratio loaded/quiet, and what the slow uploaders were answered.

    bench/slow_uploads.sh [--rounds 3] [--phase-secs 10] [--out bench/out/slow_uploads.md]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import emit, log, machine_line, start_listening, stop  # noqa: E402

BODY = json.dumps({
    "model": "sim-model", "max_tokens": 8,
    "messages": [{"role": "user", "content": "How are load balancers built?"}],
}).encode()


def normal_client(port: int, seconds: float) -> tuple[list[float], int]:
    """Latencies (ms) of the normal client's answered requests, and how many failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    lat, failed = [], 0
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        try:
            conn.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                lat.append((time.monotonic() - t0) * 1000)
            else:
                failed += 1
        except (OSError, http.client.HTTPException):
            failed += 1
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    return lat, failed


def uploader(port: int, until: list[float], answers: dict[str, int], lock: threading.Lock) -> None:
    while time.monotonic() < until[0]:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: r\r\n"
                          b"content-type: application/json\r\ncontent-length: 4000\r\n\r\n{")
                s.settimeout(1.0)
                line = "no answer"
                while time.monotonic() < until[0]:
                    try:
                        got = s.recv(4096)
                        line = got.split(b"\r\n", 1)[0].decode(errors="replace") if got else "closed"
                        break
                    except socket.timeout:
                        s.sendall(b" ")
        except OSError as e:
            line = f"error: {type(e).__name__}"
        with lock:
            answers[line] = answers.get(line, 0) + 1


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router-bin", required=True)
    ap.add_argument("--sim-bin", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phase-secs", type=float, default=10.0)
    ap.add_argument("--uploaders", type=int, default=200)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="slow-uploads-"))
    sims, workers = start_listening([args.sim_bin, "--port", "0", "--count", "2", "--itl-ms", "5",
                                     "--log-level", "warn"], work / "sim.log", 2)
    router, (url,) = start_listening([args.router_bin, "--port", "0", "--prometheus-port", "0",
                                      "--log-level", "warn", "--max-concurrent-requests", "8",
                                      "--worker-urls", *workers], work / "router.log", 1)
    port = int(url.rsplit(":", 1)[1])
    results: dict[str, list[tuple[float, float, int]]] = {"quiet": [], "loaded": []}
    answers: dict[str, int] = {}
    lock = threading.Lock()
    try:
        normal_client(port, 2.0)  # warm up
        for rnd in range(args.rounds):
            order = ("quiet", "loaded") if rnd % 2 == 0 else ("loaded", "quiet")
            for phase in order:
                until = [time.monotonic() + args.phase_secs + 2.0]
                threads = []
                if phase == "loaded":
                    threads = [threading.Thread(target=uploader, args=(port, until, answers, lock), daemon=True)
                               for _ in range(args.uploaders)]
                    for t in threads:
                        t.start()
                    time.sleep(2.0)  # every uploader connected and sending
                lat, failed = normal_client(port, args.phase_secs)
                until[0] = 0.0
                for t in threads:
                    t.join(timeout=10)
                results[phase].append((statistics.median(lat), pct(lat, 0.99), failed))
                log(f"round {rnd + 1} {phase}: median {statistics.median(lat):.2f} ms, "
                    f"p99 {pct(lat, 0.99):.2f} ms, {len(lat)} answered, {failed} failed")
    finally:
        stop(router)
        stop(sims)

    def summary(phase: str, i: int) -> tuple[float, float, float]:
        xs = [r[i] for r in results[phase]]
        return statistics.median(xs), min(xs), max(xs)

    lines = [f"# Slow uploads: {args.uploaders} clients uploading a byte a second, "
             f"`--max-concurrent-requests 8`", "", f"Machine: {machine_line()}; {args.rounds} rounds "
             f"of {args.phase_secs:.0f} s per phase, alternating.", "",
             "| phase | median latency, ms (min-max) | p99, ms (min-max) | failed |", "|---|---|---|---|"]
    for phase in ("quiet", "loaded"):
        m, p = summary(phase, 0), summary(phase, 1)
        failed = sum(r[2] for r in results[phase])
        lines.append(f"| {phase} | {m[0]:.2f} ({m[1]:.2f}-{m[2]:.2f}) | {p[0]:.2f} ({p[1]:.2f}-{p[2]:.2f}) | {failed} |")
    ratio_m = summary("loaded", 0)[0] / summary("quiet", 0)[0]
    ratio_p = summary("loaded", 1)[0] / summary("quiet", 1)[0]
    failed = sum(r[2] for r in results["loaded"])
    ok = ratio_m <= 1.2 and failed == 0
    lines += ["", f"Loaded / quiet: median {ratio_m:.2f}x, p99 {ratio_p:.2f}x "
              f"({'PASS' if ok else 'FAIL'}: median within 20%, no failed request).", "",
              "The slow uploaders were answered: " + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))]
    emit(lines, args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
