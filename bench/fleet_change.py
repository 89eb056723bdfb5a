#!/usr/bin/env python3
"""Fleet changes under load: vllm-router and vllm-router 0.1.17 while workers leave and join.

Three simulated workers A, B and C (one `vllm-sim` process each, fresh for every target). The
router starts with A and B on `round_robin`; N client threads send chat requests in a closed
loop for the run's duration, every other one streamed. While they do, the operator's script
changes the fleet:

  t = --remove-a-at  remove A
  t = --add-c-at     add C
  t = --restart-b-at remove B, then re-add it at once (a worker restart as a script does it)

Targets:
  peer/api     vllm-router 0.1.17, `POST /remove_worker?url=` and `POST /add_worker?url=`
  ours/api     ours, the same routes
  ours/config  ours, configured by a native TOML file: every change is a new file renamed over
               it; the re-add of B waits until the router has dropped B (else the two
               renames could fold into no change at all)

Every request carries an `x-bench-seq` header; both routers pass it on, and each simulator
records the headers of every request it got, so each request a worker saw is matched to the
client's start and end times. From that: failures (non-200, connection errors, a stream
without `data: [DONE]` or with an error event, a non-streamed body without choices), requests
that STARTED after A's removal took effect and still reached A (those in flight at removal
finishing there is correct), the same for B in its removed window, how soon C got its first
request after the add call, and requests per worker per second.

A removal "takes effect" when the admin call returned (api targets) or when the router's
`/list_workers` first showed the new fleet (config target; polled every 10 ms after the
rename, which also gives the reload's delay).

Standard library only; normally started by `bench/fleet_change.sh`, which builds and installs
everything this needs and passes the paths.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from procs import (SimFleet, free_port, get_json, log, machine_line, start, stop, tail,
                   version_of, wait_ready)
from quality import DISPLAY, driver_args, fmt, last_line, shell

MODEL = "sim-model"
CHAT = "/v1/chat/completions"
SEQ_HEADER = "x-bench-seq"
WORKER_HEADER = "x-vllm-router-worker"
NAMES = ("A", "B", "C")
TARGETS = ("peer/api", "ours/api", "ours/config")


# ---------------------------------------------------------------------------------------------
# workers


class Fleet(SimFleet):
    """Workers A, B and C, one `vllm-sim` process each."""

    def __init__(self, sim_bin: str, workdir: Path, itl_ms: float):
        super().__init__(sim_bin, workdir)
        self.itl_ms = itl_ms

    def argv(self) -> list[str]:
        return [self.sim_bin, "--host", "127.0.0.1", "--port", "0", "--count", "1",
                "--itl-ms", f"{self.itl_ms:g}", "--log-level", "warn"]

    def workers(self) -> list[tuple[str, list[str]]]:
        return [(name, self.argv()) for name in NAMES]

    def url(self, name: str) -> str:
        return self.urls[NAMES.index(name)]

    def records(self) -> dict[str, list[dict]]:
        return {name: [r for r in get_json(url + "/sim/records", timeout=30) or []
                       if r["path"] == CHAT]
                for name, url in zip(NAMES, self.urls)}


# ---------------------------------------------------------------------------------------------
# the clients


@dataclass
class Req:
    seq: int
    stream: bool
    start: float  # seconds since the load began
    end: float = 0.0
    status: int = 0
    failure: str | None = None  # its kind; None when the answer was complete
    worker_header: str | None = None


def chat_body(seq: int, stream: bool, max_tokens: int) -> bytes:
    return json.dumps({
        "model": MODEL, "max_tokens": max_tokens, "stream": stream,
        "messages": [{"role": "user", "content": f"fleet change request {seq}"}],
    }).encode()


def check_stream(resp: http.client.HTTPResponse) -> str | None:
    """None when the stream ended with `data: [DONE]` after at least one choice and carried no
    error event; else the kind of failure."""
    choices = False
    while True:
        line = resp.readline()
        if not line:
            return "stream ended without [DONE]"
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return None if choices else "stream without a choice"
        try:
            event = json.loads(data)
        except ValueError:
            return "stream: unparsable event"
        if isinstance(event, dict) and "error" in event:
            return "stream: error event"
        choices = choices or bool(event.get("choices"))


class Load:
    """`clients` threads, each on its own keep-alive connection, sending requests until the
    deadline; every other request (by sequence number) is streamed."""

    def __init__(self, url: str, clients: int, duration: float, max_tokens: int,
                 timeout: float):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.clients, self.duration = clients, duration
        self.max_tokens, self.timeout = max_tokens, timeout
        self.reqs: list[Req] = []
        self.lock = threading.Lock()
        self.next_seq = 0
        self.t0 = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def take_seq(self) -> int:
        with self.lock:
            self.next_seq += 1
            return self.next_seq

    def client(self, offset: float) -> None:
        time.sleep(offset)
        conn = None
        while self.now() < self.duration:
            seq = self.take_seq()
            r = Req(seq, seq % 2 == 0, self.now())
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                conn.request("POST", CHAT, body=chat_body(seq, r.stream, self.max_tokens),
                             headers={"content-type": "application/json",
                                      SEQ_HEADER: str(seq)})
                resp = conn.getresponse()
                r.status = resp.status
                r.worker_header = resp.getheader(WORKER_HEADER)
                if resp.status != 200:
                    resp.read()
                    r.failure = f"status {resp.status}"
                elif r.stream:
                    r.failure = check_stream(resp)
                    resp.read()
                else:
                    body = json.loads(resp.read())
                    if not body.get("choices"):
                        r.failure = "answer without choices"
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as e:
                r.failure = f"connection: {type(e).__name__}"
                if conn is not None:
                    conn.close()
                conn = None
            r.end = self.now()
            with self.lock:
                self.reqs.append(r)
        if conn is not None:
            conn.close()

    def run(self, t0: float, spread: float) -> None:
        """Client i starts at i x spread / clients, so that requests of equal length keep
        starting at an even pace rather than in bursts of `clients`."""
        self.t0 = t0
        threads = [threading.Thread(target=self.client, args=(i * spread / self.clients,),
                                    daemon=True)
                   for i in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.duration + self.timeout + 10)


# ---------------------------------------------------------------------------------------------
# the operator


@dataclass
class Action:
    what: str  # "remove A", "add C", "remove B", "add B"
    call: float  # when the call was sent or the file renamed (seconds since the load began)
    done: float  # when the call returned; for a config change, when /list_workers showed it
    outcome: str  # status and answer, or for a file the fleet the router listed
    shell: str  # how to do it by hand
    note: str = ""


def http_call(method: str, url: str, body: bytes | None = None,
              headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, f"{type(e).__name__}: {e}"


def listed(router: str) -> list[str] | None:
    got = get_json(router + "/list_workers", timeout=2)
    return sorted(got["urls"]) if isinstance(got, dict) and "urls" in got else None


def summary(text: str) -> str:
    """An admin answer in a few words: ours answers the worker's entry as JSON."""
    try:
        entry = json.loads(text)
    except ValueError:
        return text.strip()[:120]
    if not isinstance(entry, dict):
        return text.strip()[:120]
    keys = ("removed", "healthy", "in_flight", "error")
    return ", ".join(f"{k} {json.dumps(entry[k])}" for k in keys if k in entry)[:160]


def config_text(urls: list[str]) -> str:
    lines = ['policy = "round_robin"', ""]
    for u in urls:
        lines += ["[[workers]]", f'url = "{u}"', ""]
    return "\n".join(lines)


class Operator:
    """Changes the fleet at the scheduled moments, through the admin routes or the file."""

    def __init__(self, target: str, router: str, fleet: Fleet, config: Path | None,
                 load: Load, schedule: list[tuple[float, str]], apply_timeout: float):
        self.target, self.router, self.fleet, self.config = target, router, fleet, config
        self.load, self.schedule, self.apply_timeout = load, schedule, apply_timeout
        self.members = ["A", "B"]
        self.actions: list[Action] = []

    def act(self, what: str) -> None:
        verb, name = what.split()
        url = self.fleet.url(name)
        if verb == "remove":
            self.members.remove(name)
        else:
            self.members.append(name)
        if self.config is None:
            path = "/remove_worker" if verb == "remove" else "/add_worker"
            q = urllib.parse.urlencode({"url": url})
            call = self.load.now()
            status, text = http_call("POST", f"{self.router}{path}?{q}")
            done = self.load.now()
            self.actions.append(Action(what, call, done, f"{status} {summary(text)}",
                                       f'curl -X POST "$ROUTER{path}?url=${name}_URL"'))
            return
        want = sorted(self.fleet.url(n) for n in self.members)
        tmp = self.config.with_suffix(".new")
        tmp.write_text(config_text([self.fleet.url(n) for n in self.members]))
        call = self.load.now()
        os.replace(tmp, self.config)
        seen = None
        while self.load.now() - call < self.apply_timeout:
            seen = listed(self.router)
            if seen == want:
                break
            time.sleep(0.01)
        done = self.load.now()
        names = [n for n in NAMES if seen and self.fleet.url(n) in seen]
        outcome = f"listed {'+'.join(names) or 'none'}" + ("" if seen == want else
                                                            " (not the file's fleet in time)")
        self.actions.append(Action(what, call, done, outcome, "mv router.toml.new router.toml",
                                   f"; the new file lists {'+'.join(self.members)}"))

    def run(self) -> None:
        for at, what in self.schedule:
            time.sleep(max(0.0, at - self.load.now()))
            for step in what.split(","):
                self.act(step.strip())


# ---------------------------------------------------------------------------------------------
# one run


@dataclass
class Result:
    target: str
    round: int
    router_cmd: list[str]
    config: str | None = None
    failure: str | None = None  # the run itself went wrong
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    failed_in_flight_on_a: int = 0
    in_flight_on_a: int = 0
    late_on_a: list[int] = field(default_factory=list)  # seqs started after A's removal
    lag_on_a: int = 0  # started on A between the removal call and its effect
    late_on_b: list[int] = field(default_factory=list)  # started while B was out
    in_flight_on_b: int = 0  # on B when it was removed for its restart
    failed_in_flight_on_b: int = 0
    c_first_ms: float | None = None  # first request on C, from the add call
    c_passed: int | None = None  # requests started after the add took effect before C's first
    c_share_after: float | None = None  # C's share of requests started 1 s after its add
    rps: float = 0.0
    actions: list[Action] = field(default_factory=list)
    timeline: dict[str, list[int]] = field(default_factory=dict)  # starts per worker per second
    unmatched: int = 0  # requests no worker recorded
    header_mismatch: int = 0  # ours: answer header naming another worker than the record
    failed_seqs: list[tuple[int, float, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def router_argv(target: str, paths: argparse.Namespace, port: int, fleet: Fleet,
                config: Path | None) -> list[str]:
    if target.startswith("peer"):
        return [paths.peer_bin, "--host", "127.0.0.1", "--port", str(port), "--prometheus-port",
                str(free_port()), "--log-level", "info", "--policy", "round_robin",
                "--worker-urls", fleet.url("A"), fleet.url("B")]
    argv = [paths.router_bin, "--host", "127.0.0.1", "--port", str(port), "--prometheus-port",
            "0", "--log-level", "info"]
    if config is not None:
        return argv + ["--config", str(config)]
    return argv + ["--policy", "round_robin", "--worker-urls", fleet.url("A"), fleet.url("B")]


def measure(target: str, rnd: int, fleet: Fleet, workdir: Path,
            args: argparse.Namespace) -> Result:
    fleet.restart()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tag = f"{target.replace('/', '-')}-r{rnd + 1}"
    config = None
    if target.endswith("/config"):
        cdir = workdir / f"{tag}.config"
        cdir.mkdir(parents=True, exist_ok=True)
        config = cdir / "router.toml"
        config.write_text(config_text([fleet.url("A"), fleet.url("B")]))
    argv = router_argv(target, args, port, fleet, config)
    result = Result(target, rnd, argv, config=config.read_text() if config else None)
    logf = workdir / f"{tag}.router.log"
    proc = start(argv, logf)
    try:
        why = wait_ready(url + "/v1/models", proc)
        if why:
            result.failure = f"did not start: {why}: {last_line(tail(logf))}"
            return result
        if listed(url) != sorted([fleet.url("A"), fleet.url("B")]):
            result.failure = f"/list_workers at start: {listed(url)}"
            return result
        load = Load(url, args.clients, args.duration_secs, args.max_tokens, args.request_timeout)
        schedule = [(args.remove_a_at, "remove A"), (args.add_c_at, "add C"),
                    (args.restart_b_at, "remove B, add B")]
        op = Operator(target, url, fleet, config, load, schedule, args.apply_timeout)
        t0 = time.monotonic()
        load.t0 = t0
        runner = threading.Thread(target=op.run, daemon=True)
        runner.start()
        load.run(t0, args.max_tokens * args.itl_ms / 1000)
        runner.join(30)
        result.actions = op.actions
        fleet.check_alive()
        if proc.poll() is not None:
            result.failure = f"exited during the run with status {proc.returncode}"
        settle(result, load, fleet, args)
        (workdir / f"{tag}.requests.json").write_text(json.dumps({
            "actions": [vars(a) for a in op.actions],
            "requests": [vars(r) for r in sorted(load.reqs, key=lambda r: r.seq)],
        }, indent=0))
        return result
    finally:
        stop(proc)


def settle(result: Result, load: Load, fleet: Fleet, args: argparse.Namespace) -> None:
    reqs = {r.seq: r for r in load.reqs}
    result.requests = len(reqs)
    ok = [r for r in reqs.values() if r.failure is None]
    result.rps = len(ok) / args.duration_secs
    for r in reqs.values():
        if r.failure:
            result.failures[r.failure] = result.failures.get(r.failure, 0) + 1
            result.failed_seqs.append((r.seq, r.start, r.failure))
    # Which worker saw each request (a retried request may show up on two).
    seen: dict[int, list[str]] = {}
    for name, recs in fleet.records().items():
        for rec in recs:
            seq = dict(rec["headers"]).get(SEQ_HEADER)
            if seq and seq.isdigit():
                seen.setdefault(int(seq), []).append(name)
    result.unmatched = sum(1 for s in reqs if s not in seen)
    by_url = {fleet.url(n): n for n in NAMES}
    result.header_mismatch = sum(
        1 for r in reqs.values()
        if r.worker_header and by_url.get(r.worker_header.rstrip("/")) not in seen.get(r.seq, []))
    seconds = int(args.duration_secs + 0.999)
    result.timeline = {n: [0] * seconds for n in NAMES}
    for seq, names in seen.items():
        r = reqs.get(seq)
        if r is None:
            continue
        for n in names:
            result.timeline[n][min(seconds - 1, int(r.start))] += 1
    on = lambda name: [reqs[s] for s, ns in seen.items() if name in ns and s in reqs]
    rm_a = next((a for a in result.actions if a.what == "remove A"), None)
    if rm_a:
        for r in on("A"):
            if r.start > rm_a.done:
                result.late_on_a.append(r.seq)
            elif r.start > rm_a.call:
                result.lag_on_a += 1
            elif r.end > rm_a.call:
                result.in_flight_on_a += 1
                result.failed_in_flight_on_a += r.failure is not None
    rm_b = next((a for a in result.actions if a.what == "remove B"), None)
    add_b = next((a for a in result.actions if a.what == "add B"), None)
    if rm_b and add_b:
        result.late_on_b = [r.seq for r in on("B") if rm_b.done < r.start < add_b.call]
        for r in on("B"):
            if r.start <= rm_b.call < r.end:
                result.in_flight_on_b += 1
                result.failed_in_flight_on_b += r.failure is not None
    add_c = next((a for a in result.actions if a.what == "add C"), None)
    if add_c:
        starts = sorted(r.start for r in on("C"))
        if starts:
            result.c_first_ms = (starts[0] - add_c.call) * 1000
            result.c_passed = sum(1 for r in reqs.values()
                                  if add_c.done < r.start < starts[0])
        window = [r for r in reqs.values() if add_c.done + 1 <= r.start]
        if window:
            result.c_share_after = sum(1 for r in window if "C" in seen.get(r.seq, [])) / len(window)
    result.failed_seqs.sort()


# ---------------------------------------------------------------------------------------------
# the report


def kinds(failures: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(failures.items(), key=lambda kv: -kv[1])) or "-"


def action_delay(r: Result, what: str) -> str:
    a = next((a for a in r.actions if a.what == what), None)
    return "n/a" if a is None else f"{(a.done - a.call) * 1000:.0f}"


def results_table(results: list[Result]) -> list[str]:
    lines = ["| round | target | requests | failed | failure rate | failure kinds | req/s |",
             "|---:|---|---:|---:|---:|---|---:|"]
    for r in results:
        if r.failure and not r.requests:
            lines.append(f"| {r.round + 1} | {r.target} | run failed: {r.failure} | | | | |")
            continue
        lines.append(
            f"| {r.round + 1} | {r.target} | {r.requests} | {r.failed} | "
            f"{r.failed / r.requests:.2%} | {kinds(r.failures)} | {r.rps:.1f} |")
    return lines


def fleet_table(results: list[Result]) -> list[str]:
    lines = ["| round | target | A: started after its removal took effect | A: started between "
             "the call and its effect | A: in flight at removal (failed) | B: in flight at its "
             "removal (failed) | B: reached while removed | C: first request, ms after the add "
             "call (requests past it first) | C: share from 1 s after the add | remove A / add "
             "C / remove B / add B: call to effect, ms |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if r.failure and not r.requests:
            continue
        took = " / ".join(action_delay(r, w) for w in ("remove A", "add C", "remove B", "add B"))
        c = "never" if r.c_first_ms is None else f"{r.c_first_ms:.0f} ({r.c_passed})"
        lines.append(
            f"| {r.round + 1} | {r.target} | {len(r.late_on_a)} | {r.lag_on_a} | "
            f"{r.in_flight_on_a} ({r.failed_in_flight_on_a}) | "
            f"{r.in_flight_on_b} ({r.failed_in_flight_on_b}) | {len(r.late_on_b)} | {c} | "
            f"{'n/a' if r.c_share_after is None else f'{r.c_share_after:.0%}'} | {took} |")
    return lines


def diff_table(results: list[Result]) -> list[str]:
    lines = ["| round | ours vs peer | failed (ours − peer) | started on A after removal "
             "(ours − peer) | C's first request, ms (ours − peer) | req/s (ours ÷ peer) |",
             "|---:|---|---:|---:|---:|---:|"]
    rounds = sorted({r.round for r in results})
    for rnd in rounds:
        peer = next((r for r in results if r.round == rnd and r.target == "peer/api"
                     and r.requests), None)
        for ours in (r for r in results if r.round == rnd and r.target.startswith("ours")
                     and r.requests):
            if peer is None:
                continue
            c = ("n/a" if ours.c_first_ms is None or peer.c_first_ms is None
                 else f"{ours.c_first_ms - peer.c_first_ms:+.0f}")
            rps = f"{ours.rps / peer.rps:.2f}x" if peer.rps else "n/a"
            lines.append(
                f"| {rnd + 1} | {ours.target} vs {peer.target} | {ours.failed - peer.failed:+d} | "
                f"{len(ours.late_on_a) - len(peer.late_on_a):+d} | {c} | {rps} |")
    return lines


def timeline_block(results: list[Result], args: argparse.Namespace) -> list[str]:
    lines = [f"Requests started per second on each worker (seconds 0..{int(args.duration_secs)}; "
             f"A removed at {args.remove_a_at:g} s, C added at {args.add_c_at:g} s, B removed "
             f"and re-added at {args.restart_b_at:g} s):", "", "```"]
    for r in results:
        if not r.timeline:
            continue
        lines.append(f"round {r.round + 1} {r.target}")
        for n in NAMES:
            lines.append(f"  {n}: " + " ".join(f"{c:3d}" for c in r.timeline[n]))
    return lines + ["```", ""]


def actions_block(results: list[Result]) -> list[str]:
    lines = ["Fleet changes as made, seconds since the load began (call → effective) and what "
             "the router answered:", "", "```"]
    for r in results:
        lines.append(f"round {r.round + 1} {r.target}")
        for a in r.actions:
            lines.append(f"  {a.call:6.3f} → {a.done:6.3f}  {a.what:9s} {a.outcome}")
    return lines + ["```", ""]


def failures_block(results: list[Result]) -> list[str]:
    lines = []
    for r in results:
        if r.failure:
            lines.append(f"- round {r.round + 1} {r.target}: the run: {r.failure}")
        if r.failed_seqs:
            first = ", ".join(f"#{s} at {t:.2f} s ({k})" for s, t, k in r.failed_seqs[:6])
            more = f" and {len(r.failed_seqs) - 6} more" if len(r.failed_seqs) > 6 else ""
            lines.append(f"- round {r.round + 1} {r.target}: failed requests {first}{more}")
        if r.late_on_a:
            lines.append(f"- round {r.round + 1} {r.target}: reached A after its removal: "
                         f"#{', #'.join(map(str, r.late_on_a[:10]))}")
        if r.late_on_b:
            lines.append(f"- round {r.round + 1} {r.target}: reached B while removed: "
                         f"#{', #'.join(map(str, r.late_on_b[:10]))}")
        if r.unmatched:
            lines.append(f"- round {r.round + 1} {r.target}: {r.unmatched} request(s) no worker "
                         "recorded")
        if r.header_mismatch:
            lines.append(f"- round {r.round + 1} {r.target}: {r.header_mismatch} answer(s) whose "
                         f"`{WORKER_HEADER}` names another worker than the one that recorded it")
    return (["Details:", ""] + lines + [""]) if lines else []


def commands_block(results: list[Result], fleet_argv: list[str]) -> list[str]:
    lines = ["Commands, in run order (worker URLs and ports differ per run; A_URL, B_URL, C_URL "
             "are the workers'):", "", "```",
             f"{shell(fleet_argv)}   # x 3: A, B, C, fresh for every run"]
    for r in results:
        lines += [f"# round {r.round + 1} {r.target}", shell(r.router_cmd)]
        if r.config is not None:
            lines.append("# router.toml at start: " + " ".join(
                ln for ln in r.config.splitlines() if ln.strip()))
        lines += [f"{a.shell}   # {a.what}, at {a.call:.1f} s{a.note}" for a in r.actions]
    return lines + ["```", ""]


def peer_version(peer_bin: str) -> str:
    py = Path(peer_bin).parent / "python"
    v = version_of([str(py), "-c", "import importlib.metadata as m; "
                    "print(m.version('vllm-router'))"])
    return v if v and v[0].isdigit() else "0.1.17"


def report(results: list[Result], args: argparse.Namespace, argv: list[str],
           fleet_argv: list[str]) -> str:
    lines = [
        "# Fleet changes under load", "",
        f"Machine: {machine_line()}. Every process (workers, router, clients) shares it.", "",
        f"Ours = `{version_of([args.router_bin, '--version'])}`; peer = `vllm-router` "
        f"{peer_version(args.peer_bin)} from PyPI; workers = "
        f"`{version_of([args.sim_bin, '--version'])}`; load = {args.clients} Python client "
        f"threads, closed loop, keep-alive, every other request streamed, {args.max_tokens} "
        f"tokens per answer at {args.itl_ms:g} ms each.", "",
        f"Driver: `{shell(['bench/fleet_change.sh', *driver_args(argv)])}`", "",
        f"Both routers on `round_robin`, starting with A and B; {args.duration_secs:g} s of "
        f"load; A removed at {args.remove_a_at:g} s, C added at {args.add_c_at:g} s, B removed "
        f"and re-added at {args.restart_b_at:g} s. A request counts as failed on a non-200, a "
        f"connection error, a stream without `data: [DONE]` or with an error event, or a body "
        f"without choices. \"Started on A after its removal\" counts requests the client sent "
        f"after the removal took effect (the call returned; for the config target, "
        f"`/list_workers` showed it) that A's simulator still recorded; requests in flight at "
        f"the removal finishing on A are counted apart, as they should finish.", "",
    ]
    lines += ["The client's view:", ""] + results_table(results)
    lines += ["", "The fleet's view (from the workers' records of each request's "
              f"`{SEQ_HEADER}`, against the client's start times):", ""] + fleet_table(results)
    lines += ["", "Against the peer in the same round:", ""] + diff_table(results) + [""]
    lines += actions_block(results) + timeline_block(results, args) + failures_block(results)
    lines += commands_block(results, fleet_argv)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------


def pin(args: argparse.Namespace, dest: Path) -> None:
    """Copies of our binaries, so that a rebuild in the tree during the run cannot swap them
    between targets."""
    dest.mkdir(parents=True, exist_ok=True)
    for what in ("router_bin", "sim_bin"):
        src = Path(shutil.which(getattr(args, what)) or getattr(args, what))
        shutil.copy2(src, dest / src.name)
        setattr(args, what, str(dest / src.name))


def main() -> int:
    here = Path(__file__).resolve().parent
    root = here.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--logs", type=Path, default=here / "out" / "fleet_change",
                    help="directory for worker and router logs and per-request JSON")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds; each runs every target in --targets order")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma-separated, of {', '.join(TARGETS)}")
    g = ap.add_argument_group("load")
    g.add_argument("--clients", type=int, default=16)
    g.add_argument("--duration-secs", type=float, default=15.0)
    g.add_argument("--max-tokens", type=int, default=20)
    g.add_argument("--itl-ms", type=float, default=20.0)
    g.add_argument("--request-timeout", type=float, default=30.0,
                   help="client socket timeout, seconds")
    g = ap.add_argument_group("fleet changes (seconds since the load began)")
    g.add_argument("--remove-a-at", type=float, default=4.0)
    g.add_argument("--add-c-at", type=float, default=8.0)
    g.add_argument("--restart-b-at", type=float, default=11.0)
    g.add_argument("--apply-timeout", type=float, default=5.0,
                   help="config target: how long to wait for /list_workers to show a change")
    g = ap.add_argument_group("binaries")
    g.add_argument("--router-bin", default=str(root / "target/release/vllm-router"))
    g.add_argument("--sim-bin", default=str(root / "target/release/vllm-sim"))
    g.add_argument("--peer-bin",
                   default=str(Path.home() / ".cache/vllm-router-bench/bin/vllm-router"))
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets or any(t not in TARGETS for t in targets):
        ap.error(f"--targets: of {', '.join(TARGETS)}")
    if args.rounds < 1 or args.clients < 1 or args.max_tokens < 1:
        ap.error("--rounds, --clients and --max-tokens must be at least 1")
    if not 0 < args.remove_a_at < args.add_c_at < args.restart_b_at < args.duration_secs:
        ap.error("need 0 < --remove-a-at < --add-c-at < --restart-b-at < --duration-secs")
    for what in ("router_bin", "sim_bin", "peer_bin"):
        p = getattr(args, what)
        if not (os.access(p, os.X_OK) or shutil.which(p)):
            ap.error(f"--{what.replace('_', '-')}: {p} is not an executable")

    workdir = args.logs.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    built = Path(args.router_bin).resolve().parent
    pin(args, workdir / "bin")
    DISPLAY[:] = [
        (str(workdir / "bin"), str(built)),
        (str(workdir), "$LOGS"),
        (str(Path(args.peer_bin).resolve().parent.parent), "$BENCH_VENV"),
        (str(root) + "/", ""),
    ]
    fleet = Fleet(args.sim_bin, workdir, args.itl_ms)
    results: list[Result] = []
    try:
        for rnd in range(args.rounds):
            for t in targets:
                log(f"round {rnd + 1}/{args.rounds}: {t}")
                r = measure(t, rnd, fleet, workdir, args)
                results.append(r)
                if r.failure:
                    log(f"  FAILED: {r.failure}")
                log(f"  {r.requests} requests, {r.failed} failed ({kinds(r.failures)}), "
                    f"{len(r.late_on_a)} on A after its removal, {len(r.late_on_b)} on B while "
                    f"out, C first after {fmt(r.c_first_ms, 0)} ms, {r.rps:.1f} req/s")
    finally:
        fleet.stop()

    text = report(results, args, sys.argv[1:], fleet.argv())
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 1 if any(r.failure for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
