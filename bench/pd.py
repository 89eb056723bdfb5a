#!/usr/bin/env python3
"""Measure prefill/decode disaggregation: vllm-router and vllm-router 0.1.17 in P/D mode.

Simulated prefill and decode workers (one `vllm-sim --role prefill|decode` process each): a
prefill worker computes the prompt's uncached tokens and answers one token with the transfer
parameters; a decode worker given `do_remote_prefill` skips the prompt's cost and streams the
answer, and otherwise computes the uncached prompt tokens itself against its own prefix cache.
For every target (a router with its P/D policies) the workers are restarted, so every target
starts with cold caches; then the router is started, `vllm-router-bench` runs the scenario's
seeded workload through it, and the router is stopped. Targets run one at a time, in rounds
whose order alternates so that drift on a shared machine spreads evenly.

Scenarios:
  pd           multi-turn chats with shared system prompts, prefill caches that hold the
               working set only when each conversation stays on one prefill worker: ours with
               its default P/D policies and with round_robin, the peer with its default
               (cache_aware) and with round_robin.
  conditional  ours only, the same chats with short turns, with and without conditional
               prefill (`--pd-min-uncached-tokens`), with the default decode policy and with
               one that follows the prefix.

Figures per target come from the client (TTFT, req/s, errors), from the workers' `/sim/stats`
(where prompt tokens were computed) and from our router's `vllm_router_pd_plans_total`, each
taken over the measured window (from the end of the warm-up to the end of the run).

Standard library only; normally started by `bench/pd.sh`, which builds and installs everything
this needs and passes the paths.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from procs import (SimFleet, free_port, get_json, http_get, log, pin_binaries, start, stop, tail,
                   wait_ready)
from quality import (DISPLAY, ROLE_MARKER_TOKENS, commands_block, driver_args, fmt, last_line,
                     report_head, shell)

MODEL = "sim-model"
ROLES = ("prefill", "decode")
# Bytes of workload text per simulated token: the load generator's words are four letters and
# a space, one token each; the router estimates tokens at four bytes each.
WORKLOAD_BYTES_PER_TOKEN = 5
ROUTER_BYTES_PER_TOKEN = 4
PLAN_CAUSES = ("prefilled", "skipped", "recomputed")
# A worker computing at least this many of a prompt's tokens missed more than the turn or two
# a request adds: a conversation's history or a system prompt was not in its cache.
LONG_MISS_TOKENS = 256
CHAT = "/v1/chat/completions"


# ---------------------------------------------------------------------------------------------
# the fleet


@dataclass
class FleetSpec:
    prefill: int
    decode: int
    ttft_ms: float
    prefill_us_per_token: float
    itl_ms: float
    itl_batch_factor: float
    block_size: int
    blocks: dict[str, int]
    max_num_seqs: dict[str, int]

    def roles(self) -> list[str]:
        return ["prefill"] * self.prefill + ["decode"] * self.decode

    def argv(self, sim_bin: str, role: str) -> list[str]:
        return [
            sim_bin, "--host", "127.0.0.1", "--port", "0", "--count", "1", "--role", role,
            "--ttft-ms", f"{self.ttft_ms:g}",
            "--prefill-us-per-token", f"{self.prefill_us_per_token:g}",
            "--itl-ms", f"{self.itl_ms:g}", "--itl-batch-factor", f"{self.itl_batch_factor:g}",
            "--num-blocks", str(self.blocks[role]), "--block-size", str(self.block_size),
            "--max-num-seqs", str(self.max_num_seqs[role]), "--log-level", "warn",
        ]


class Fleet(SimFleet):
    """The running `vllm-sim` processes, one worker each, prefill workers first."""

    def __init__(self, spec: FleetSpec, sim_bin: str, workdir: Path):
        super().__init__(sim_bin, workdir)
        self.spec = spec

    def workers(self) -> list[tuple[str, list[str]]]:
        return [(f"{role}-{w}", self.spec.argv(self.sim_bin, role))
                for w, role in enumerate(self.spec.roles())]

    def of(self, role: str) -> list[str]:
        return [u for u, r in zip(self.urls, self.spec.roles()) if r == role]

    def records(self) -> list[list[dict]]:
        """Every worker's recorded chat requests, in arrival order."""
        return [[r for r in get_json(url + "/sim/records", timeout=30) or [] if r["path"] == CHAT]
                for url in self.urls]


# ---------------------------------------------------------------------------------------------
# scenarios


@dataclass
class Target:
    router: str  # "ours" or "peer"
    name: str
    policies: str  # as the report shows them: "prefill / decode"
    flags: list[str] = field(default_factory=list)


@dataclass
class Scenario:
    name: str
    title: str
    fleet: FleetSpec
    bench_flags: list[str]
    targets: list[Target]
    rounds: int
    notes: list[str] = field(default_factory=list)


def working_set(args: argparse.Namespace, user_words: int) -> tuple[int, list[str]]:
    """Blocks per worker for multi-turn chats with `user_words` per turn, and how they were
    chosen."""
    m, b = ROLE_MARKER_TOKENS, args.block_size
    shared = m + args.system_prompt_words
    context = (shared + args.turns * (m + user_words)
               + (args.turns - 1) * (m + args.max_tokens) + m)
    shared_blocks = shared // b
    private_blocks = math.ceil(context / b) - shared_blocks
    groups = min(args.groups, args.users)
    ws = groups * shared_blocks + args.users * private_blocks
    per_worker = math.ceil(args.cache_fleet_factor * ws / args.prefill_workers)
    notes = [
        f"A conversation at its last turn holds {context} tokens ({shared} shared: the system "
        f"prompt and its role marker; {args.turns} user turns of {m + user_words}; "
        f"{args.turns - 1} replies of {m + args.max_tokens}): {shared_blocks} shared + "
        f"{private_blocks} private blocks of {b} tokens. {args.users} users over {groups} "
        f"groups: a working set of {groups} x {shared_blocks} + {args.users} x "
        f"{private_blocks} = **{ws} blocks**.",
        f"Every worker, prefill or decode, caches **{per_worker} blocks** "
        f"({args.cache_fleet_factor:g} x the working set / {args.prefill_workers} prefill "
        f"workers): the prefill side holds the working set when each group and conversation "
        f"stays on one prefill worker, not when every worker sees every conversation.",
    ]
    return per_worker, notes


def fleet_spec(args: argparse.Namespace, blocks: int) -> FleetSpec:
    return FleetSpec(
        prefill=args.prefill_workers, decode=args.decode_workers, ttft_ms=args.ttft_ms,
        prefill_us_per_token=args.prefill_us_per_token, itl_ms=args.itl_ms,
        itl_batch_factor=args.itl_batch_factor, block_size=args.block_size,
        blocks={"prefill": blocks, "decode": blocks},
        max_num_seqs={"prefill": args.prefill_max_num_seqs, "decode": args.decode_max_num_seqs},
    )


def timing_note(args: argparse.Namespace) -> str:
    return (
        f"Workers: {args.prefill_workers} prefill + {args.decode_workers} decode. A request's "
        f"first token costs {args.ttft_ms:g} ms plus {args.prefill_us_per_token:g} µs per "
        f"uncached prompt token (nothing on a decode worker handed `do_remote_prefill`); then "
        f"a token every {args.itl_ms:g} ms x (1 + {args.itl_batch_factor:g} x (running - 1)). "
        f"A prefill worker runs at most {args.prefill_max_num_seqs} prompts at once and queues "
        f"the rest, a decode worker {args.decode_max_num_seqs} requests; each runs its batch "
        f"in steps with a shared token budget, so prompts on one worker prefill in turn and "
        f"slow the batch's decoding."
    )


def bench_common(args: argparse.Namespace) -> list[str]:
    return ["--seed", str(args.seed), "--duration-secs", f"{args.duration_secs:g}",
            "--warmup-secs", f"{args.warmup_secs:g}", "--max-tokens", str(args.max_tokens),
            "--model", MODEL, "--workload", "multi-turn", "--users", str(args.users),
            "--groups", str(args.groups), "--turns", str(args.turns),
            "--system-prompt-words", str(args.system_prompt_words)]


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    out = []
    if args.scenario in ("pd", "all"):
        blocks, notes = working_set(args, args.user_words)
        out.append(Scenario(
            name="pd",
            title="pd: multi-turn chats, ours and vllm-router 0.1.17",
            fleet=fleet_spec(args, blocks),
            bench_flags=bench_common(args) + ["--user-words", str(args.user_words)],
            targets=[
                Target("ours", "ours/default", "cache_aware / cache_aware"),
                Target("peer", "peer/default", "cache_aware / cache_aware"),
                Target("ours", "ours/decode least_load", "cache_aware / least_load",
                       ["--decode-policy", "least_load"]),
                Target("ours", "ours/round_robin", "round_robin / round_robin",
                       ["--policy", "round_robin"]),
                Target("peer", "peer/round_robin", "round_robin / round_robin",
                       ["--policy", "round_robin"]),
            ],
            rounds=args.rounds,
            notes=[timing_note(args)] + notes + [
                f"{args.users} users, closed loop, {args.groups} groups sharing a "
                f"{args.system_prompt_words}-word system prompt, {args.turns} turns of "
                f"{args.user_words} words, {args.max_tokens} tokens per answer; then a new "
                f"conversation. Ours runs with no conditional prefill (every request is "
                f"prefilled), like the peer.",
            ],
        ))
    if args.scenario in ("conditional", "all"):
        blocks, notes = working_set(args, args.cond_user_words)
        n = args.min_uncached_tokens
        follow = args.cond_decode_policy
        turn_tokens = ROLE_MARKER_TOKENS * 2 + args.cond_user_words + args.max_tokens
        turn_estimate = math.ceil(turn_tokens * WORKLOAD_BYTES_PER_TOKEN / ROUTER_BYTES_PER_TOKEN)
        sim_tokens = n * ROUTER_BYTES_PER_TOKEN // WORKLOAD_BYTES_PER_TOKEN
        out.append(Scenario(
            name="conditional",
            title=f"conditional: short turns, ours with and without --pd-min-uncached-tokens {n}",
            fleet=fleet_spec(args, blocks),
            bench_flags=bench_common(args) + ["--user-words", str(args.cond_user_words)],
            targets=[
                Target("ours", "ours/default", "cache_aware / cache_aware"),
                Target("ours", f"ours/default min{n}", "cache_aware / cache_aware",
                       ["--pd-min-uncached-tokens", str(n)]),
                Target("ours", f"ours/decode {follow}", f"cache_aware / {follow}",
                       ["--decode-policy", follow]),
                Target("ours", f"ours/decode {follow} min{n}", f"cache_aware / {follow}",
                       ["--decode-policy", follow, "--pd-min-uncached-tokens", str(n)]),
            ],
            rounds=args.cond_rounds,
            notes=[timing_note(args)] + notes + [
                f"Each turn adds about {turn_tokens} tokens (a {args.cond_user_words}-word user "
                f"turn and the previous {args.max_tokens}-token answer, with their role "
                f"markers); the router estimates prompt tokens at {ROUTER_BYTES_PER_TOKEN} bytes "
                f"each and this workload's words take {WORKLOAD_BYTES_PER_TOKEN} bytes, so it "
                f"counts about {turn_estimate} tokens per turn and `--pd-min-uncached-tokens {n}` "
                f"skips the prefill leg when the decode worker is expected to miss fewer than "
                f"about {sim_tokens} simulated tokens: a decode worker that holds the "
                f"conversation up to {max(1, sim_tokens // turn_tokens)} turn(s) back computes "
                f"the rest itself.",
                f"Why {n}: a few hundred new tokens fit in one step of a decode engine's "
                f"chunked-prefill budget next to the running decodes, while the prefill leg "
                f"costs a round trip, a prefill worker's scheduling step and a KV transfer; "
                f"past that, the prompt's compute starts to stall the decode worker's batch.",
            ],
        ))
    return out


# ---------------------------------------------------------------------------------------------
# one target


@dataclass
class Paths:
    router: str
    sim: str
    peer: str
    bench: str


@dataclass
class Snapshot:
    sims: list[dict]
    plans: dict[str, float] | None


@dataclass
class Result:
    target: Target
    round: int
    router_cmd: list[str]
    bench_cmd: list[str]
    figures: dict | None = None
    per_worker: dict[str, list[int]] = field(default_factory=dict)
    # Prompt tokens and cached tokens summed over each role's workers.
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)
    plans: dict[str, float] | None = None
    # Per role: requests whose worker computed LONG_MISS_TOKENS or more of the prompt, and
    # requests whose worker computed any of it.
    long_misses: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Follow-up turns whose prefill went to another worker than the turn before, and follow-up
    # turns; None when the router does not forward the session header.
    moved: tuple[int, int] | None = None
    failure: str | None = None


def router_argv(t: Target, paths: Paths, port: int, metrics_port: int, fleet: Fleet) -> list[str]:
    workers = []
    for url in fleet.of("prefill"):
        workers += ["--prefill", url]
    for url in fleet.of("decode"):
        workers += ["--decode", url]
    if t.router == "ours":
        return [paths.router, "--host", "127.0.0.1", "--port", str(port), "--prometheus-port",
                str(metrics_port), "--log-level", "warn", "--vllm-pd-disaggregation",
                *workers, *t.flags]
    return [paths.peer, "--host", "127.0.0.1", "--port", str(port), "--prometheus-port",
            str(metrics_port), "--log-level", "warning", "--vllm-pd-disaggregation",
            *workers, *t.flags]


def plans(metrics_url: str) -> dict[str, float] | None:
    status, body = http_get(metrics_url)
    if status != 200:
        return None
    out = {cause: 0.0 for cause in PLAN_CAUSES}
    pattern = r'^vllm_router_pd_plans_total\{cause="(\w+)"\}\s+(\S+)'
    for m in re.finditer(pattern, body.decode(errors="replace"), re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def snapshot(fleet: Fleet, metrics_url: str | None) -> Snapshot:
    return Snapshot(fleet.stats(), plans(metrics_url) if metrics_url else None)


def settle(result: Result, fleet: Fleet, before: Snapshot, after: Snapshot) -> None:
    """Fills in what the workers and the router counted between two snapshots."""
    roles = fleet.spec.roles()
    for role in ROLES:
        result.per_worker[role] = []
        prompt = cached = 0
        for r, a, b in zip(roles, before.sims, after.sims):
            if r != role:
                continue
            count = lambda s: s.get("by_path", {}).get(CHAT, 0)
            result.per_worker[role].append(count(b) - count(a))
            prompt += b.get("prompt_tokens_total", 0) - a.get("prompt_tokens_total", 0)
            cached += b.get("cached_tokens_total", 0) - a.get("cached_tokens_total", 0)
        result.tokens[role] = (prompt, cached)
    if before.plans is not None and after.plans is not None:
        result.plans = {c: after.plans[c] - before.plans[c] for c in PLAN_CAUSES}
    read_records(result, fleet, before)


def read_records(result: Result, fleet: Fleet, before: Snapshot) -> None:
    """Fills in long misses and moved turns from the workers' request records."""
    roles = fleet.spec.roles()
    # The records of the measured window: those after the chat requests counted at its start.
    window = [recs[b.get("by_path", {}).get(CHAT, 0):]
              for recs, b in zip(fleet.records(), before.sims)]
    turns: dict[str, list[tuple[int, int]]] = {}
    for role in ROLES:
        long = computed = 0
        for w, (r, recs) in enumerate(zip(roles, window)):
            if r != role:
                continue
            for rec in recs:
                if not rec["prompt_tokens"] or rec.get("status") not in (200, 0):
                    continue
                if role == "prefill":
                    session = dict(rec["headers"]).get("x-session-id")
                    if session:
                        turns.setdefault(session, []).append((rec["prompt_tokens"], w))
                miss = rec["prompt_tokens"] - rec["cached_tokens"]
                if miss > 0:
                    computed += 1
                    long += miss >= LONG_MISS_TOKENS
        result.long_misses[role] = (long, computed)
    if turns:
        follow_ups = moved = 0
        for seen in turns.values():
            seen.sort()
            for (_, a), (_, b) in zip(seen, seen[1:]):
                follow_ups += 1
                moved += a != b
        result.moved = (moved, follow_ups)


def measure(t: Target, rnd: int, sc: Scenario, fleet: Fleet, paths: Paths, workdir: Path,
            args: argparse.Namespace) -> Result:
    fleet.restart()
    port, metrics_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    tag = f"{sc.name}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', t.name)}-r{rnd + 1}"
    argv = router_argv(t, paths, port, metrics_port, fleet)
    json_out = workdir / f"{tag}.json"
    bench = [paths.bench, "--target", f"{t.name}={url}", "--json-out", str(json_out),
             *sc.bench_flags]
    result = Result(t, rnd, argv, bench)
    logf = workdir / f"{tag}.router.log"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics" if t.router == "ours" else None
    json_out.unlink(missing_ok=True)
    proc = start(argv, logf)
    try:
        why = wait_ready(url + "/v1/models", proc)
        if why:
            result.failure = f"did not start: {why}: {last_line(tail(logf))}"
            return result
        began = time.monotonic()
        with open(workdir / f"{tag}.bench.log", "wb") as out:
            load = subprocess.Popen(bench, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            time.sleep(max(0.0, args.warmup_secs - (time.monotonic() - began)))
            before = snapshot(fleet, metrics_url)
            code = load.wait(timeout=args.warmup_secs + args.duration_secs + 300)
        except subprocess.TimeoutExpired:
            stop(load)
            result.failure = "vllm-router-bench did not finish in time"
            return result
        after = snapshot(fleet, metrics_url)
        if code != 0 or not json_out.exists():
            result.failure = (f"vllm-router-bench exited with {code}: "
                              f"{last_line(tail(workdir / f'{tag}.bench.log'))}")
            return result
        result.figures = json.loads(json_out.read_text())["targets"][0]
        settle(result, fleet, before, after)
        if proc.poll() is not None:
            result.failure = f"exited during the run with status {proc.returncode}"
        fleet.check_alive()
        return result
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------------
# aggregation over rounds


@dataclass
class Agg:
    """One target's figures over its rounds: counts summed, the TTFT mean weighted by
    requests, percentiles and rates averaged over rounds."""
    target: Target
    rounds: int
    requests: int = 0
    errors: int = 0
    rps: float | None = None
    ttft: dict[str, float | None] = field(default_factory=dict)
    e2e: dict[str, float | None] = field(default_factory=dict)
    per_worker: dict[str, list[int]] = field(default_factory=dict)
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)
    plans: dict[str, float] | None = None
    long_misses: dict[str, tuple[int, int]] = field(default_factory=dict)
    moved: tuple[int, int] | None = None
    error_kinds: dict[str, int] = field(default_factory=dict)


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def aggregate(t: Target, results: list[Result]) -> Agg:
    ok = [r for r in results if r.figures]
    a = Agg(t, len(ok))
    if not ok:
        return a
    figs = [r.figures for r in ok]
    a.requests = sum(f["requests"] for f in figs)
    a.errors = sum(f["errors"] for f in figs)
    a.rps = mean([f["ok_per_sec"] for f in figs])
    for key, dest in (("ttft_ms", a.ttft), ("e2e_ms", a.e2e)):
        timed = [f for f in figs if f.get(key)]
        weights = sum(f["ok"] for f in timed)
        dest["mean"] = (sum(f[key]["mean"] * f["ok"] for f in timed) / weights) if weights else None
        for p in ("p50", "p99"):
            dest[p] = mean([f[key][p] for f in timed])
    for role in ROLES:
        a.per_worker[role] = [sum(xs) for xs in zip(*(r.per_worker.get(role, []) for r in ok))]
        a.tokens[role] = (sum(r.tokens.get(role, (0, 0))[0] for r in ok),
                          sum(r.tokens.get(role, (0, 0))[1] for r in ok))
    if all(r.plans is not None for r in ok):
        a.plans = {c: sum(r.plans[c] for r in ok) for c in PLAN_CAUSES}
    for role in ROLES:
        a.long_misses[role] = (sum(r.long_misses.get(role, (0, 0))[0] for r in ok),
                               sum(r.long_misses.get(role, (0, 0))[1] for r in ok))
    if all(r.moved is not None for r in ok):
        a.moved = (sum(r.moved[0] for r in ok), sum(r.moved[1] for r in ok))
    for f in figs:
        for kind, n in (f.get("error_kinds") or {}).items():
            a.error_kinds[kind] = a.error_kinds.get(kind, 0) + n
    return a


def requests_seen(a: Agg) -> int:
    return sum(a.per_worker.get("decode", []))


def computed_per_request(a: Agg, role: str) -> float | None:
    prompt, cached = a.tokens.get(role, (0, 0))
    n = requests_seen(a)
    return (prompt - cached) / n if n else None


def prefill_hit(a: Agg) -> float | None:
    prompt, cached = a.tokens.get("prefill", (0, 0))
    return cached / prompt if prompt else None


def share(pair: tuple[int, int] | None) -> float | None:
    return pair[0] / pair[1] if pair and pair[1] else None


def long_misses_per_request(a: Agg, role: str) -> float | None:
    n = requests_seen(a)
    return a.long_misses.get(role, (0, 0))[0] / n if n else None


def skipped_share(a: Agg) -> float | None:
    if a.plans is None:
        return None
    total = sum(a.plans.values())
    return a.plans["skipped"] / total if total else None


# ---------------------------------------------------------------------------------------------
# the report


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def ratio(num: float | None, den: float | None) -> str:
    return "n/a" if num is None or not den else f"{num / den:.2f}x"


def figures_table(aggs: list[Agg]) -> list[str]:
    lines = [
        "| target | policies (prefill / decode) | rounds | requests | req/s | TTFT mean ms "
        "| TTFT p50 ms | TTFT p99 ms | e2e mean ms | e2e p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in aggs:
        if not a.rounds:
            lines.append(f"| {a.target.name} | {a.target.policies} | 0 | failed | | | | | | | |")
            continue
        lines.append(
            f"| {a.target.name} | {a.target.policies} | {a.rounds} | {a.requests} | "
            f"{fmt(a.rps)} | {fmt(a.ttft.get('mean'))} | {fmt(a.ttft.get('p50'))} | "
            f"{fmt(a.ttft.get('p99'))} | {fmt(a.e2e.get('mean'))} | {fmt(a.e2e.get('p99'))} | "
            f"{a.errors} |"
        )
    return lines


def placement_table(aggs: list[Agg], with_plans: bool) -> list[str]:
    head = ("| target | prefill-side cache hit | prompt tokens computed per request: prefill "
            f"/ decode side | requests missing {LONG_MISS_TOKENS}+ tokens: prefill / decode "
            "side | follow-up turns prefilled on another worker | requests per prefill worker "
            "| requests per decode worker |")
    rule = "|---|---:|---:|---:|---:|---|---|"
    if with_plans:
        head += " plans: prefilled / skipped / recomputed | skipped |"
        rule += "---|---:|"
    lines = [head, rule]
    for a in aggs:
        if not a.rounds:
            continue
        row = (f"| {a.target.name} | {pct(prefill_hit(a))} | "
               f"{fmt(computed_per_request(a, 'prefill'), 0)} / "
               f"{fmt(computed_per_request(a, 'decode'), 0)} | "
               f"{pct(long_misses_per_request(a, 'prefill'))} / "
               f"{pct(long_misses_per_request(a, 'decode'))} | "
               f"{f'{pct(share(a.moved))} of {a.moved[1]}' if share(a.moved) is not None else 'n/a'} | "
               f"{'/'.join(map(str, a.per_worker.get('prefill', [])))} | "
               f"{'/'.join(map(str, a.per_worker.get('decode', [])))} |")
        if with_plans:
            p = a.plans
            row += (" n/a | n/a |" if p is None else
                    f" {' / '.join(str(int(p[c])) for c in PLAN_CAUSES)} | "
                    f"{pct(skipped_share(a))} |")
        lines.append(row)
    return lines


def rounds_table(results: list[Result]) -> list[str]:
    lines = ["| round | target | requests | req/s | TTFT mean ms | TTFT p50 ms | TTFT p99 ms "
             "| errors |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: r.round):
        f = r.figures
        if f is None:
            lines.append(f"| {r.round + 1} | {r.target.name} | failed | | | | | |")
            continue
        t = f.get("ttft_ms") or {}
        lines.append(f"| {r.round + 1} | {r.target.name} | {f['requests']} | "
                     f"{fmt(f['ok_per_sec'])} | {fmt(t.get('mean'))} | {fmt(t.get('p50'))} | "
                     f"{fmt(t.get('p99'))} | {f['errors']} |")
    return lines


def ratio_rows(label: str, ours: Agg | None, peer: Agg | None) -> str:
    """TTFT as peer ÷ ours and req/s as ours ÷ peer: above 1 means ours is better."""
    if ours is None or peer is None:
        return f"| {label} | n/a | n/a | n/a | n/a |"
    cells = [ratio(peer.ttft.get(k), ours.ttft.get(k)) for k in ("mean", "p50", "p99")]
    return (f"| {label} ({ours.target.name} vs {peer.target.name}) | "
            f"{' | '.join(cells)} | {ratio(ours.rps, peer.rps)} |")


def clean(aggs: list[Agg]) -> list[Agg]:
    return [a for a in aggs if a.rounds and a.errors == 0 and a.ttft.get("mean") is not None]


def scenario_report(sc: Scenario, results: list[Result], paths: Paths) -> list[str]:
    aggs = [aggregate(t, [r for r in results if r.target is t]) for t in sc.targets]
    lines = [f"## Scenario {sc.title}", ""]
    lines += [f"- {n}" for n in sc.notes]
    lines += ["", "Workers (one process each, restarted before every target):", "", "```"]
    lines += [shell(sc.fleet.argv(paths.sim, role)) + f"   # x {count}"
              for role, count in (("prefill", sc.fleet.prefill), ("decode", sc.fleet.decode))]
    lines += ["```", ""]
    lines += [f"{sc.rounds} round(s); the TTFT mean is over every request of every round, "
              "p50, p99 and req/s are averaged over rounds.", ""]
    lines += figures_table(aggs)
    lines += ["", "Where the prompt was computed, over the measured windows (the decode side "
              "counts only what a decode worker computed itself; a remote prefill counts as "
              "cached there). Shares of requests missing "
              f"{LONG_MISS_TOKENS}+ tokens are of all requests; moved turns come from the "
              "`x-session-id` header the router forwards (n/a when it does not):", ""]
    lines += placement_table(aggs, with_plans=(sc.name == "conditional"))
    by_name = {a.target.name: a for a in aggs if a.rounds}
    if any(t.router == "peer" for t in sc.targets):
        ours = clean([a for a in aggs if a.target.router == "ours"])
        peer = clean([a for a in aggs if a.target.router == "peer"])
        best = lambda xs: min(xs, key=lambda a: a.ttft["mean"], default=None)
        lines += [
            "", "Ratios against vllm-router 0.1.17 in the same run (TTFT: peer ÷ ours; req/s: "
            "ours ÷ peer; above 1.00x ours is better, below it the peer is):", "",
            "| comparison | TTFT mean | TTFT p50 | TTFT p99 | req/s |",
            "|---|---:|---:|---:|---:|",
            ratio_rows("defaults", by_name.get("ours/default"), by_name.get("peer/default")),
            ratio_rows("round_robin", by_name.get("ours/round_robin"),
                       by_name.get("peer/round_robin")),
            ratio_rows("best mean TTFT of each", best(ours), best(peer)),
        ]
    else:
        base = by_name.get("ours/default")
        lines += ["", "Against `ours/default` (no conditional prefill) in the same run "
                  "(TTFT: baseline ÷ target; req/s: target ÷ baseline; above 1.00x the target "
                  "is better):", "",
                  "| target | TTFT mean | TTFT p50 | TTFT p99 | req/s | skipped |",
                  "|---|---:|---:|---:|---:|---:|"]
        for a in aggs:
            if a is base or not a.rounds or base is None:
                continue
            cells = [ratio(base.ttft.get(k), a.ttft.get(k)) for k in ("mean", "p50", "p99")]
            lines.append(f"| {a.target.name} | {' | '.join(cells)} | {ratio(a.rps, base.rps)} "
                         f"| {pct(skipped_share(a))} |")
    bad = [r for r in results if r.failure]
    bad_errors = [a for a in aggs if a.errors]
    if bad or bad_errors:
        lines += ["", "Failures and errors:", ""]
        lines += [f"- {r.target.name} round {r.round + 1}: {r.failure}" for r in bad]
        for a in bad_errors:
            firsts = {r.figures.get("first_error") for r in results
                      if r.target is a.target and r.figures and r.figures.get("first_error")}
            lines.append(f"- {a.target.name}: {a.errors} errors {a.error_kinds}; first: "
                         f"{'; '.join(sorted(firsts)) or 'n/a'}")
    if sc.rounds > 1:
        lines += ["", "Per round:", ""] + rounds_table(results)
    return lines + commands_block(results)


def report(runs: list[tuple[Scenario, list[Result]]], paths: Paths, argv: list[str]) -> str:
    lines = report_head("Prefill/decode disaggregation", paths) + [
        "TTFT is measured by the client to the first chunk carrying a choice, so in P/D mode it "
        "covers the prefill leg, the hand-over and the decode worker's first token. The "
        "simulator moves no KV cache: a decode worker handed `do_remote_prefill` starts as if "
        "the blocks had arrived, so no transfer cost is in these figures.",
        "",
        f"Driver: `{shell(['bench/pd.sh', *driver_args(argv)])}`",
        "",
    ]
    for sc, results in runs:
        lines += scenario_report(sc, results, paths)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------


def pin(paths: Paths, dest: Path) -> Paths:
    """Our binaries copied into `dest` (see `pin_binaries`); the peer's stays where it is."""
    router, sim, bench = pin_binaries(dest, [paths.router, paths.sim, paths.bench])
    return Paths(router, sim, paths.peer, bench)


def run_order(sc: Scenario) -> list[tuple[int, Target]]:
    """Every target once per round; odd rounds in reverse, so no target always goes first."""
    order = []
    for rnd in range(sc.rounds):
        targets = sc.targets if rnd % 2 == 0 else list(reversed(sc.targets))
        order += [(rnd, t) for t in targets]
    return order


def main() -> int:
    here = Path(__file__).resolve().parent
    root = here.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=("pd", "conditional", "all"), default="all")
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--logs", type=Path, default=here / "out" / "pd",
                    help="directory for worker, router and load logs and JSON results")
    ap.add_argument("--rounds", type=int, default=2, help="pd scenario: rounds over the targets")
    ap.add_argument("--cond-rounds", type=int, default=1,
                    help="conditional scenario: rounds over the targets")
    ap.add_argument("--only", default="",
                    help="comma-separated target names to run (default: every target)")
    g = ap.add_argument_group("fleet")
    g.add_argument("--prefill-workers", type=int, default=2)
    g.add_argument("--decode-workers", type=int, default=2)
    g.add_argument("--ttft-ms", type=float, default=5.0)
    g.add_argument("--prefill-us-per-token", type=float, default=300.0)
    g.add_argument("--itl-ms", type=float, default=8.0)
    g.add_argument("--itl-batch-factor", type=float, default=0.05)
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--prefill-max-num-seqs", type=int, default=4)
    g.add_argument("--decode-max-num-seqs", type=int, default=16)
    g.add_argument("--cache-fleet-factor", type=float, default=1.2,
                   help="the prefill fleet's cache as a multiple of the working set (decode "
                        "workers cache as much as prefill workers)")
    g = ap.add_argument_group("workload")
    g.add_argument("--duration-secs", type=float, default=20.0)
    g.add_argument("--warmup-secs", type=float, default=5.0)
    g.add_argument("--users", type=int, default=16)
    g.add_argument("--groups", type=int, default=4)
    g.add_argument("--turns", type=int, default=6)
    g.add_argument("--system-prompt-words", type=int, default=600)
    g.add_argument("--user-words", type=int, default=40, help="pd scenario: words per user turn")
    g.add_argument("--cond-user-words", type=int, default=20,
                   help="conditional scenario: words per user turn")
    g.add_argument("--max-tokens", type=int, default=16)
    g.add_argument("--seed", type=int, default=1)
    g = ap.add_argument_group("conditional prefill")
    g.add_argument("--min-uncached-tokens", type=int, default=256,
                   help="--pd-min-uncached-tokens of the conditional targets")
    g.add_argument("--cond-decode-policy", default="least_load",
                   help="the other decode policy the conditional targets are run with (the default decode policy is cache_aware)")
    g = ap.add_argument_group("binaries")
    g.add_argument("--router-bin", default=str(root / "target/release/vllm-router"))
    g.add_argument("--sim-bin", default=str(root / "target/release/vllm-sim"))
    g.add_argument("--bench-bin", default=str(root / "target/release/vllm-router-bench"))
    g.add_argument("--peer-bin",
                   default=str(Path.home() / ".cache/vllm-router-bench/bin/vllm-router"))
    args = ap.parse_args()
    positive = ("rounds", "cond_rounds", "prefill_workers", "decode_workers", "users", "groups",
                "turns", "max_tokens", "block_size", "prefill_max_num_seqs",
                "decode_max_num_seqs", "min_uncached_tokens")
    for name in positive:
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration_secs <= 0 or args.warmup_secs < 0 or args.cache_fleet_factor <= 0:
        ap.error("--duration-secs and --cache-fleet-factor must be positive, --warmup-secs not "
                 "negative")
    paths = Paths(args.router_bin, args.sim_bin, args.peer_bin, args.bench_bin)
    for what, p in vars(paths).items():
        if not (os.access(p, os.X_OK) or shutil.which(p)):
            ap.error(f"{what}: {p} is not an executable")

    workdir = args.logs.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    built = Path(paths.router).resolve().parent
    paths = pin(paths, workdir / "bin")
    DISPLAY[:] = [
        (str(workdir / "bin"), str(built)),
        (str(Path(paths.peer).resolve().parent.parent), "$BENCH_VENV"),
        (str(root) + "/", ""),
    ]
    runs: list[tuple[Scenario, list[Result]]] = []
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    for sc in scenarios(args):
        if only:
            sc.targets = [t for t in sc.targets if t.name in only]
            if not sc.targets:
                continue
        fleet = Fleet(sc.fleet, paths.sim, workdir)
        results: list[Result] = []
        try:
            for rnd, t in run_order(sc):
                log(f"{sc.name} round {rnd + 1}/{sc.rounds}: {t.name}")
                r = measure(t, rnd, sc, fleet, paths, workdir, args)
                results.append(r)
                if r.failure:
                    log(f"  FAILED: {r.failure}")
                if r.figures:
                    f, tt = r.figures, r.figures.get("ttft_ms") or {}
                    skipped = "" if r.plans is None else \
                        f", plans {'/'.join(str(int(r.plans[c])) for c in PLAN_CAUSES)}"
                    log(f"  {f['requests']} requests, {fmt(f['ok_per_sec'])} req/s, TTFT mean "
                        f"{fmt(tt.get('mean'))} ms p99 {fmt(tt.get('p99'))} ms, errors "
                        f"{f['errors']}, prefill {'/'.join(map(str, r.per_worker['prefill']))}, "
                        f"decode {'/'.join(map(str, r.per_worker['decode']))}{skipped}")
        finally:
            fleet.stop()
        runs.append((sc, results))

    text = report(runs, paths, sys.argv[1:])
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    failed = [r for _, rs in runs for r in rs if r.failure or not r.figures or r.figures["errors"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
