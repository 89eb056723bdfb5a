#!/usr/bin/env python3
"""Measure routing quality: a suite of workloads, each run through every router and policy.

A fleet of simulated vLLM workers (one `vllm-sim` process each, so each can run at its own
speed and cache size) with a finite prefix cache and a prefill cost per uncached prompt token.
A target is one router with one policy (`router/policy`): ours (`vllm-router` from this tree),
smg 1.13.0 (SGLang's gateway), vllm-router 0.1.17 (the PyPI package) and nginx (least_conn).

Workloads (points), each documented in the report with its parameters:
  chat           multi-turn chats with group-shared system prompts, caches sized from the
                 working set, closed loop; plus a one-at-a-time sweep (chat-g2, chat-g16,
                 chat-u24, chat-u128, chat-c50, chat-c150: groups, users, cache)
  shared-prefix  many long shared prefixes with one question each (few-shot), open loop near
                 the fleet's saturation
  random         random prompts, nothing to reuse, more users than batch slots
  hetero         multi-turn chats on a fleet with one slow worker and one small cache
  burst          an idle fleet hit by many new conversations at once, measured from the start

Every point runs in rounds: in each round every target runs once, each on freshly restarted
workers (cold caches), and the order of the targets alternates from round to round (every
other round reversed, each pair of rounds rotated) so that drift on a shared machine spreads
evenly. The report gives medians
over rounds with the spread (min-max) of the TTFT mean and p99, verdicts per point, a summary
across points, the raw figures of every round as JSON, and SVG charts.

Standard library only; normally started by `bench/quality.sh`, which builds and installs
everything this needs and passes the paths.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import charts
from procs import (SimFleet, free_port, get_json, log, machine_line, nginx_argv, pin_binaries,
                   start, stop, tail, version_of, wait_ready)

MODEL = "sim-model"
# The simulator's chat template wraps each message in `<|role|>` (five tokens) and ends the
# prompt with `<|assistant|>` (five more).
ROLE_MARKER_TOKENS = 5
CHAT = "/v1/chat/completions"

# The router's default policy, chosen by this benchmark (see docs/benchmarks.md).
OURS_DEFAULT = "cache_aware"
SMG_VERSION = "1.13.0"
VLLM_ROUTER_VERSION = "0.1.17"

# Every policy of each router that fits these workloads, the default first.
POLICIES: dict[str, tuple[str, ...]] = {
    "ours": ("cache_aware", "consistent_hash", "least_load", "power_of_two", "round_robin"),
    "smg": ("cache_aware", "prefix_hash", "consistent_hashing", "power_of_two", "round_robin"),
    "vllm-router": ("cache_aware", "consistent_hash", "power_of_two", "round_robin"),
    "nginx": ("least_conn",),
    # Another build of ours (`--baseline-bin`), for a before/after run of a router change in
    # one alternating session; never a peer, never in `all` or `shortlist`.
    "base": ("cache_aware", "consistent_hash", "least_load", "power_of_two", "round_robin"),
}
# Policies that look only at load (nothing of the request's content or session).
LOAD_ONLY = frozenset({"round_robin", "power_of_two", "least_load", "least_conn"})
# The shortlist's fixed members; it adds the best load-only policy of each router, taken from
# the workload's base point when that ran first, else from LOAD_ONLY_FALLBACK.
SHORTLIST = ("ours/" + OURS_DEFAULT, "ours/consistent_hash", "smg/cache_aware",
             "smg/prefix_hash", "vllm-router/cache_aware", "vllm-router/consistent_hash")
LOAD_ONLY_FALLBACK = {"ours": "least_load", "smg": "power_of_two",
                      "vllm-router": "power_of_two", "nginx": "least_conn"}
# smg's consistent_hashing keys on a header; the load generator sends `x-session-id: conv-N`.
SESSION_HEADER = "x-session-id"

# Seconds a run costs beyond its warm-up and measured window: restarting the workers, starting
# the router and waiting until it routes, stopping it. For the estimate printed at the start.
OVERHEAD_SECS = {"ours": 2.0, "smg": 3.0, "vllm-router": 3.0, "nginx": 2.0, "base": 2.0}

# The verdicts' goals.
GOAL_VS_VLLM_ROUTER = 1.3
LOAD_ONLY_TOLERANCE = 0.05


# ---------------------------------------------------------------------------------------------
# targets


@dataclass(frozen=True)
class Target:
    router: str
    policy: str

    @property
    def name(self) -> str:
        return f"{self.router}/{self.policy}"

    @property
    def load_only(self) -> bool:
        return self.policy in LOAD_ONLY

    @property
    def is_ours_default(self) -> bool:
        return self.router == "ours" and self.policy == OURS_DEFAULT


def every_target() -> list[Target]:
    return [Target(r, p) for r, ps in POLICIES.items() if r != "base" for p in ps]


def parse_target(text: str) -> Target:
    router, sep, policy = text.strip().partition("/")
    if not sep or router not in POLICIES or not policy:
        raise ValueError(f"{text!r}: a target is ROUTER/POLICY with ROUTER one of "
                         f"{', '.join(POLICIES)}")
    return Target(router, policy)


def resolve_targets(spec: str, load_only_best: dict[str, str] | None = None) -> list[Target]:
    """`all`, `shortlist` or a comma list of ROUTER/POLICY (which may include `shortlist`)."""
    out: list[Target] = []
    for item in split(spec):
        if item == "all":
            new = every_target()
        elif item == "shortlist":
            best = {**LOAD_ONLY_FALLBACK, **(load_only_best or {})}
            new = [parse_target(t) for t in SHORTLIST] + [Target(r, best[r]) for r in POLICIES
                                                           if r != "base"]
        else:
            new = [parse_target(item)]
        out += [t for t in new if t not in out]
    return out


def split(csv: str) -> list[str]:
    return [p.strip() for p in csv.split(",") if p.strip()]


# ---------------------------------------------------------------------------------------------
# the fleet


@dataclass
class SimTimings:
    ttft_ms: float
    prefill_us_per_token: float
    itl_ms: float

    def scaled(self, factor: float) -> "SimTimings":
        return SimTimings(self.ttft_ms * factor, self.prefill_us_per_token * factor,
                          self.itl_ms * factor)


@dataclass
class WorkerSpec:
    timings: SimTimings
    num_blocks: int


@dataclass
class FleetSpec:
    workers: list[WorkerSpec]
    block_size: int
    max_num_seqs: int
    # Passed only when the simulator has the flag.
    itl_batch_factor: float | None = None
    max_num_batched_tokens: int | None = None

    def argv(self, sim_bin: str, worker: int) -> list[str]:
        w = self.workers[worker]
        t = w.timings
        out = [
            sim_bin, "--host", "127.0.0.1", "--port", "0", "--count", "1",
            "--ttft-ms", f"{t.ttft_ms:g}", "--prefill-us-per-token", f"{t.prefill_us_per_token:g}",
            "--itl-ms", f"{t.itl_ms:g}",
        ]
        if self.itl_batch_factor is not None:
            out += ["--itl-batch-factor", f"{self.itl_batch_factor:g}"]
        if self.max_num_batched_tokens is not None:
            out += ["--max-num-batched-tokens", str(self.max_num_batched_tokens)]
        return out + ["--num-blocks", str(w.num_blocks), "--block-size", str(self.block_size),
                      "--max-num-seqs", str(self.max_num_seqs), "--log-level", "warn"]


class Fleet(SimFleet):
    """The running `vllm-sim` processes, one worker each."""

    def __init__(self, spec: FleetSpec, sim_bin: str, workdir: Path):
        super().__init__(sim_bin, workdir)
        self.spec = spec

    def workers(self) -> list[tuple[str, list[str]]]:
        return [(str(w), self.spec.argv(self.sim_bin, w)) for w in range(len(self.spec.workers))]


@dataclass
class SimFeatures:
    """What the simulator build accepts, read from `vllm-sim --help`."""
    itl_batch_factor: bool
    max_num_batched_tokens: bool

    @staticmethod
    def of(sim_bin: str) -> "SimFeatures":
        try:
            text = subprocess.run([sim_bin, "--help"], capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            text = ""
        return SimFeatures("--itl-batch-factor" in text, "--max-num-batched-tokens" in text)


# ---------------------------------------------------------------------------------------------
# workload points


@dataclass
class Point:
    name: str  # e.g. chat-g2
    workload: str  # chat, shared-prefix, random, hetero, burst
    title: str
    fleet: FleetSpec
    bench_flags: list[str]
    warmup_secs: float
    duration_secs: float
    targets_spec: str
    base: bool
    # A load run before the measured one on the same fleet and router, not counted: caches
    # filled at a rate the fleet absorbs, so an open loop near saturation starts from a
    # steady state instead of a cold-start backlog it could never drain.
    prewarm_flags: list[str] | None = None
    prewarm_secs: float = 0.0
    params: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)  # resolved when the point runs


WORKLOADS = ("chat", "shared-prefix", "random", "hetero", "burst")


def chat_working_set(groups: int, users: int, turns: int, system_words: int, user_words: int,
                     max_tokens: int, block_size: int, workers: int, factor: float,
                     num_blocks: int = 0) -> tuple[int, list[str]]:
    """Blocks per worker for multi-turn chats, and how they were chosen."""
    m, b = ROLE_MARKER_TOKENS, block_size
    shared = m + system_words
    # At its last turn a conversation holds the system prompt, every user turn, every earlier
    # reply and the closing assistant marker.
    context = shared + turns * (m + user_words) + (turns - 1) * (m + max_tokens) + m
    shared_blocks = shared // b
    private_blocks = math.ceil(context / b) - shared_blocks
    groups_live = min(groups, users)
    working_set = groups_live * shared_blocks + users * private_blocks
    per_worker = num_blocks or math.ceil(factor * working_set / workers)
    fleet_total = per_worker * workers
    share = math.ceil(groups_live / workers) * shared_blocks + \
        math.ceil(users / workers) * private_blocks
    notes = [
        f"Context of one conversation at its last turn: {shared} shared tokens (system prompt "
        f"plus its role marker) + {turns} user turns x {m + user_words} + {turns - 1} replies "
        f"x {m + max_tokens} + {m} (closing marker) = {context} tokens, i.e. {shared_blocks} "
        f"shared + {private_blocks} private blocks of {b} tokens.",
        f"Live working set of {users} concurrent users over {groups_live} groups: "
        f"{groups_live} x {shared_blocks} + {users} x {private_blocks} = "
        f"**{working_set} blocks**.",
        f"Each worker caches **{per_worker} blocks** "
        + ("(set by --num-blocks)" if num_blocks else
           f"(= {factor:g} x working set / {workers} workers)")
        + f": one worker holds {per_worker / working_set:.0%} of the working set, the fleet "
        f"{fleet_total} blocks ({fleet_total / working_set:.0%}). A router that keeps each "
        f"group and conversation on one worker needs about {share} blocks per worker "
        f"({math.ceil(groups_live / workers)} group(s) and {math.ceil(users / workers)} "
        f"conversations); one that spreads them asks every worker for all {working_set}.",
    ]
    return per_worker, notes


def few_shot_tokens(words_total: int) -> int:
    """Tokens of the load generator's few-shot prefix of about `words_total` words: examples of
    `question` + 12 words + `answer` + 6 words until the total is reached (crates/bench)."""
    written = 0
    while written < words_total:
        written += min(12, words_total - written) + 6 + 2
    return written


def service_ms(t: SimTimings, uncached: int, max_tokens: int, args) -> float:
    """Milliseconds of a worker's time one request costs with `uncached` prompt tokens to
    compute, with the batch full (`max_num_seqs` running)."""
    n = args.max_num_seqs
    itl = t.itl_ms * (1 + args.itl_batch_factor * (n - 1))
    prefill = uncached * t.prefill_us_per_token / 1000
    if args.step_model:
        # Steps shared by the batch: a prompt's tokens add to the step that computes them (in
        # an open loop, arrivals rarely share one: a step of its own, which also pays a decode
        # step for the batch), and one decode step gives every running sequence a token.
        return itl + prefill + max_tokens * itl / n
    # Independent slots: a request holds one of `max_num_seqs` slots for its whole life.
    return (t.ttft_ms + prefill + max_tokens * itl) / n


def points(args: argparse.Namespace) -> list[Point]:
    timings = SimTimings(args.ttft_ms, args.prefill_us_per_token, args.itl_ms)
    sim_extra = dict(
        itl_batch_factor=args.itl_batch_factor if args.sim.itl_batch_factor else None,
        max_num_batched_tokens=(args.max_num_batched_tokens
                                if args.sim.max_num_batched_tokens else None),
    )

    def fleet(blocks: list[int], slow: dict[int, float] | None = None) -> FleetSpec:
        slow = slow or {}
        return FleetSpec([WorkerSpec(timings.scaled(slow.get(w, 1.0)), b)
                          for w, b in enumerate(blocks)],
                         args.block_size, args.max_num_seqs, **sim_extra)

    def common(warmup: float, duration: float) -> list[str]:
        return ["--seed", str(args.seed), "--duration-secs", f"{duration:g}",
                "--warmup-secs", f"{warmup:g}", "--max-tokens", str(args.max_tokens),
                "--model", MODEL]

    w = args.workers
    closed = "closed loop"
    out: list[Point] = []

    def chat(name: str, groups: int, users: int, factor: float, base: bool) -> Point:
        blocks, notes = chat_working_set(groups, users, args.turns, args.system_prompt_words,
                                         args.user_words, args.max_tokens, args.block_size, w,
                                         factor, args.num_blocks if base else 0)
        return Point(
            name=name, workload="chat",
            title=f"{name}: multi-turn chat, {groups} groups, {users} users, cache "
                  f"{factor:.0%} of the working set",
            fleet=fleet([blocks] * w),
            bench_flags=["--workload", "multi-turn", "--users", str(users), "--groups",
                         str(groups), "--turns", str(args.turns), "--system-prompt-words",
                         str(args.system_prompt_words), "--user-words", str(args.user_words)]
            + common(args.warmup_secs, args.duration_secs),
            warmup_secs=args.warmup_secs, duration_secs=args.duration_secs,
            targets_spec=args.targets if base else args.sweep_targets, base=base,
            params=[("workload", "multi-turn (`--workload multi-turn`)"),
                    ("load", f"{closed}, {users} users"), ("groups", str(groups)),
                    ("system prompt", f"{args.system_prompt_words} words, shared by a group"),
                    ("turns", f"{args.turns} of {args.user_words} words, then a new "
                              "conversation"),
                    ("answer", f"{args.max_tokens} tokens"),
                    ("workers", f"{w} equal"), ("cache", f"{factor:g} x the working set")],
            notes=notes,
        )

    base_chat = chat("chat", args.groups, args.users, args.cache_fleet_factor, True)
    out.append(base_chat)
    for g in args.sweep_groups:
        out.append(chat(f"chat-g{g}", g, args.users, args.cache_fleet_factor, False))
    for u in args.sweep_users:
        out.append(chat(f"chat-u{u}", args.groups, u, args.cache_fleet_factor, False))
    for c in args.sweep_cache:
        out.append(chat(f"chat-c{round(c * 100)}", args.groups, args.users, c, False))

    # shared-prefix: llm-d's precise-prefix-cache guide scaled down.
    m, b = ROLE_MARKER_TOKENS, args.block_size
    prefix = m + few_shot_tokens(args.sp_prefix_words)
    prefix_blocks = prefix // b
    request = prefix + m + args.sp_question_words + m
    private = math.ceil(request / b) - prefix_blocks
    sp_blocks = (math.ceil(args.sp_cache_factor * args.sp_groups * prefix_blocks / w)
                 + args.max_num_seqs * private)
    hit_ms = service_ms(timings, request - prefix_blocks * b, args.max_tokens, args)
    miss_ms = service_ms(timings, request, args.max_tokens, args)
    capacity = w * 1000 / hit_ms
    rate = args.sp_rate or round(args.sp_load * capacity, 1)
    prewarm_rate = round(rate * args.sp_prewarm_fraction, 1)
    sp_flags = ["--workload", "few-shot", "--groups", str(args.sp_groups),
                "--system-prompt-words", str(args.sp_prefix_words),
                "--user-words", str(args.sp_question_words)]
    model = ("steps shared by the batch (`--max-num-batched-tokens`): prefill adds to the step, "
             "a decode step serves the whole batch" if args.step_model else
             "independent slots: a request holds one of the `--max-num-seqs` slots from arrival "
             "to its last token")
    out.append(Point(
        name="shared-prefix", workload="shared-prefix",
        title=f"shared-prefix: {args.sp_groups} long shared prefixes, one question each, "
              f"open loop at {rate:g} req/s",
        fleet=fleet([sp_blocks] * w),
        bench_flags=sp_flags + ["--rate", f"{rate:g}"]
        + common(args.warmup_secs, args.duration_secs),
        warmup_secs=args.warmup_secs, duration_secs=args.duration_secs,
        targets_spec=args.targets, base=True,
        prewarm_flags=(sp_flags + ["--rate", f"{prewarm_rate:g}", "--seed", str(args.seed + 1000),
                                   "--prefix-seed", str(args.seed),
                                   "--duration-secs", f"{args.sp_prewarm_secs:g}",
                                   "--max-tokens", str(args.max_tokens), "--model", MODEL]
                       if args.sp_prewarm_secs > 0 else None),
        prewarm_secs=args.sp_prewarm_secs,
        params=[("workload", "few-shot (`--workload few-shot`): each request is one of the "
                             "groups' prefixes, drawn at random, plus a fresh question"),
                ("load", f"open loop, Poisson arrivals at {rate:g} req/s"
                         + ("" if args.sp_rate else
                            f" (= {args.sp_load:g} x the estimated capacity below)")
                         + (f", after a pre-warm of {args.sp_prewarm_secs:g} s at "
                            f"{prewarm_rate:g} req/s (the same prefixes, other questions and "
                            "arrivals, not counted) on the same workers and router"
                            if args.sp_prewarm_secs > 0 else "")),
                ("groups", f"{args.sp_groups} prefixes of {args.sp_prefix_words} words "
                           f"({prefix} tokens with the role marker)"),
                ("question", f"{args.sp_question_words} words"),
                ("answer", f"{args.max_tokens} tokens"),
                ("workers", f"{w} equal"),
                ("cache", f"{args.sp_cache_factor:g} x all prefixes / {w} workers, plus "
                          f"room for {args.max_num_seqs} running requests")],
        notes=[
            f"A request is {request} tokens: the {prefix}-token prefix ({prefix_blocks} full "
            f"blocks of {b}) and {request - prefix_blocks * b} more. All {args.sp_groups} "
            f"prefixes take {args.sp_groups * prefix_blocks} blocks; each worker caches "
            f"**{sp_blocks} blocks**, room for about "
            f"{(sp_blocks - args.max_num_seqs * private) // max(1, prefix_blocks)} prefixes: "
            f"a router that splits the groups among the workers ({math.ceil(args.sp_groups / w)} "
            f"each) keeps every prefix cached; one that spreads them makes every worker cycle "
            f"through all {args.sp_groups}.",
            f"Estimated capacity, simulator model {model}: a request costs a worker "
            f"{hit_ms:.1f} ms with its prefix cached and {miss_ms:.1f} ms without, so the fleet "
            f"serves at most about {capacity:.0f} req/s when every prefix hits and "
            f"{w * 1000 / miss_ms:.0f} req/s when none does. That is an upper bound (queueing "
            f"grows steeply well before it), hence the default rate of {args.sp_load:g} x the "
            f"first: a router that keeps the prefixes cached sustains it, one that does not "
            f"falls behind and its queues grow for the whole run.",
        ],
    ))

    out.append(Point(
        name="random", workload="random",
        title=f"random: random prompts, nothing to reuse, {args.random_users} users on "
              f"{w} equal workers",
        fleet=fleet([args.random_num_blocks] * w),
        bench_flags=["--workload", "random", "--users", str(args.random_users),
                     "--prompt-words", str(args.prompt_words)]
        + common(args.warmup_secs, args.duration_secs),
        warmup_secs=args.warmup_secs, duration_secs=args.duration_secs,
        targets_spec=args.targets, base=True,
        params=[("workload", "random (`--workload random`): every prompt random words"),
                ("load", f"{closed}, {args.random_users} users (the fleet runs "
                         f"{w * args.max_num_seqs} at once; the rest queue)"),
                ("prompt", f"{args.prompt_words} words"), ("answer", f"{args.max_tokens} tokens"),
                ("workers", f"{w} equal"), ("cache", f"{args.random_num_blocks} blocks each")],
        notes=["Nothing is shared, so only load balancing matters: the default policy should "
               f"be within {LOAD_ONLY_TOLERANCE:.0%} of the best load-only policy."],
    ))

    slow = args.slow_worker_factor
    small = max(1, round(base_chat.fleet.workers[0].num_blocks * args.small_cache_factor))
    hetero_blocks = [base_chat.fleet.workers[0].num_blocks] * w
    if w > 1:
        hetero_blocks[1] = small
    out.append(Point(
        name="hetero", workload="hetero",
        title=f"hetero: multi-turn chat, worker 0 {slow:g}x slower, worker 1 with "
              f"{args.small_cache_factor:.0%} of the cache",
        fleet=fleet(hetero_blocks, {0: slow}),
        bench_flags=base_chat.bench_flags, warmup_secs=args.warmup_secs,
        duration_secs=args.duration_secs, targets_spec=args.targets, base=True,
        params=[p for p in base_chat.params if p[0] not in ("workers", "cache")]
        + [("workers", f"{w}: worker 0's TTFT, prefill and inter-token time x {slow:g}; "
                       f"worker 1 caches {small} blocks instead of "
                       f"{base_chat.fleet.workers[0].num_blocks}"),
           ("cache", f"{args.cache_fleet_factor:g} x the working set per worker (as `chat`), "
                     "but worker 1")],
        notes=base_chat.notes[:2],
    ))

    burst_blocks, burst_notes = chat_working_set(
        args.groups, args.burst_users, args.burst_turns, args.system_prompt_words,
        args.user_words, args.max_tokens, args.block_size, w, args.cache_fleet_factor)
    out.append(Point(
        name="burst", workload="burst",
        title=f"burst: {args.burst_users} new conversations at once on an idle fleet, "
              "measured from the start",
        fleet=fleet([burst_blocks] * w),
        bench_flags=["--workload", "multi-turn", "--users", str(args.burst_users), "--groups",
                     str(args.groups), "--turns", str(args.burst_turns), "--system-prompt-words",
                     str(args.system_prompt_words), "--user-words", str(args.user_words)]
        + common(0, args.burst_duration_secs),
        warmup_secs=0, duration_secs=args.burst_duration_secs, targets_spec=args.targets,
        base=True,
        params=[("workload", "multi-turn (`--workload multi-turn`)"),
                ("load", f"{closed}, {args.burst_users} users all starting at once, no warm-up "
                         f"(`--warmup-secs 0`), {args.burst_duration_secs:g} s measured"),
                ("groups", str(args.groups)),
                ("system prompt", f"{args.system_prompt_words} words, shared by a group"),
                ("turns", f"{args.burst_turns} of {args.user_words} words, then a new "
                          "conversation"),
                ("answer", f"{args.max_tokens} tokens"), ("workers", f"{w} equal"),
                ("cache", f"{args.cache_fleet_factor:g} x the working set")],
        notes=burst_notes[1:] + ["The first wave is every user's first turn on cold caches "
                                 f"({args.burst_users} requests for "
                                 f"{w * args.max_num_seqs} batch slots)."],
    ))
    return out


def select_points(all_points: list[Point], spec: str) -> list[Point]:
    by_name = {p.name: p for p in all_points}
    names: list[str] = []
    for item in split(spec):
        if item == "all":
            new = list(by_name)
        elif item == "base":
            new = [p.name for p in all_points if p.base]
        elif item == "chat-sweep":
            new = [p.name for p in all_points if p.workload == "chat"]
        elif item in by_name:
            new = [item]
        else:
            raise ValueError(f"unknown workload point {item!r}; known: all, base, chat-sweep, "
                             f"{', '.join(by_name)}")
        names += [n for n in new if n not in names]
    # In the suite's order: a chat sweep point after the chat base point, whose results pick
    # the shortlist's load-only policies.
    return [p for p in all_points if p.name in names]


# ---------------------------------------------------------------------------------------------
# routers


@dataclass
class Paths:
    router: str
    sim: str
    bench: str
    vllm_router: str
    smg: str
    nginx: str
    baseline: str | None = None


def router_argv(t: Target, paths: Paths, port: int, workers: list[str], workdir: Path,
                tag: str, metrics_port: int = 0) -> list[str]:
    if t.router in ("ours", "base"):
        binary = paths.router if t.router == "ours" else paths.baseline
        return [binary, "--host", "127.0.0.1", "--port", str(port),
                "--prometheus-port", str(metrics_port), "--log-level", "warn",
                "--worker-urls", *workers, "--policy", t.policy]
    if t.router == "vllm-router":
        return [paths.vllm_router, "--host", "127.0.0.1", "--port", str(port),
                "--prometheus-port", str(free_port()), "--log-level", "warning",
                "--worker-urls", *workers, "--policy", t.policy]
    if t.router == "smg":
        # smg 1.13.0 needs nothing beyond its defaults for vLLM-compatible HTTP workers: it
        # probes each one at registration and detects the vLLM runtime by itself (no
        # --backend, which only matters over gRPC/ZMQ; no --disable-tokenizer-autoload, since
        # its HTTP cache_aware and prefix_hash work on the request's characters). It
        # registers workers in the background after it starts listening, so readiness is
        # /readiness counting every worker healthy (see wait_routable). Its metrics listener
        # is bound to loopback, and it is given 1 s instead of 180 s to drain at shutdown
        # (by default it lingers about 5 s after SIGTERM with nothing in flight); neither
        # changes routing.
        extra = ["--routing-key-headers", SESSION_HEADER] if t.policy == "consistent_hashing" \
            else []
        return [paths.smg, "launch", "--host", "127.0.0.1", "--port", str(port),
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
                "--shutdown-grace-period-secs", "1", "--log-level", "warn",
                "--worker-urls", *workers, "--policy", t.policy, *extra]
    if t.router == "nginx":
        return nginx_argv(paths.nginx, port, workers, workdir / f"{tag}.nginx", read_timeout_s=300)
    raise ValueError(t.router)




def post_json(url: str, body: dict, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (OSError, urllib.error.URLError) as err:
        return 0, str(err).encode()


def wait_routable(t: Target, url: str, proc: subprocess.Popen, workers: int,
                  timeout: float = 60.0) -> str | None:
    """None once the router answers and routes a chat request; otherwise why not."""
    deadline = time.monotonic() + timeout
    why = wait_ready(url + ("/readiness" if t.router == "smg" else "/v1/models"), proc, timeout)
    if why:
        return why
    if t.router == "smg":
        # smg answers /readiness as soon as one worker is healthy; wait for all of them.
        while True:
            ready = get_json(url + "/readiness") or {}
            if ready.get("healthy_workers", 0) >= workers:
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                return f"{ready.get('healthy_workers', 0)} of {workers} workers healthy"
            time.sleep(0.1)
    probe = {"model": MODEL, "messages": [{"role": "user", "content": "readiness probe"}],
             "max_tokens": 1}
    status, body = 0, b""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        status, body = post_json(url + CHAT, probe)
        if status == 200:
            return None
        time.sleep(0.2)
    text = body[:200].decode(errors="replace")
    return f"a probe chat request got {status or 'no answer'}: {text}"


# ---------------------------------------------------------------------------------------------
# one run


@dataclass
class Run:
    target: Target
    round: int
    position: int
    router_cmd: list[str]
    bench_cmd: list[str]
    figures: dict | None = None
    per_worker: list[int] = field(default_factory=list)
    failure: str | None = None
    seconds: float = 0.0
    prewarm_cmd: list[str] | None = None
    prewarm: dict | None = None  # the pre-warm's figures, not counted
    decisions: dict[str, int] = field(default_factory=dict)  # ours: decisions by reason


DECISION = re.compile(r'^vllm_router_routing_decisions_total\{[^}]*reason="([^"]*)"[^}]*\} (\S+)$')


def save_decisions(metrics_port: int, path: Path) -> dict[str, int]:
    """Keeps ours' metrics page in `path`; gives its routing decisions by reason."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            page = r.read().decode()
    except (OSError, urllib.error.URLError):
        return {}
    path.write_text(page)
    found = (DECISION.match(line) for line in page.splitlines())
    return {m.group(1): int(float(m.group(2))) for m in found if m}


def measure(t: Target, rnd: int, position: int, point: Point, fleet: Fleet, paths: Paths,
            workdir: Path) -> Run:
    began = time.monotonic()
    fleet.restart()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tag = f"{point.name}-{t.router}-{t.policy}-r{rnd + 1}"
    # Ours keeps its metrics page after the run (decisions by reason, per-worker figures).
    metrics_port = free_port() if t.router in ("ours", "base") else 0
    argv = router_argv(t, paths, port, fleet.urls, workdir, tag, metrics_port)
    json_out = workdir / f"{tag}.json"
    json_out.unlink(missing_ok=True)
    bench = [paths.bench, "--target", f"{t.name}={url}", "--json-out", str(json_out),
             *point.bench_flags]
    run = Run(t, rnd, position, argv, bench)
    logf = workdir / f"{tag}.router.log"
    proc = start(argv, logf)
    try:
        why = wait_routable(t, url, proc, len(fleet.urls))
        if why:
            run.failure = f"not routing: {why}: {last_line(tail(logf))}"
            return run
        if point.prewarm_flags:
            pre_json = workdir / f"{tag}.prewarm.json"
            pre = [paths.bench, "--target", f"{t.name}={url}", "--json-out", str(pre_json),
                   *point.prewarm_flags]
            run.prewarm_cmd = pre
            with open(workdir / f"{tag}.prewarm.log", "wb") as out:
                res = subprocess.run(pre, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, timeout=point.prewarm_secs + 300)
            if res.returncode != 0 or not pre_json.exists():
                run.failure = (f"pre-warm vllm-router-bench exited with {res.returncode}: "
                               f"{last_line(tail(workdir / f'{tag}.prewarm.log'))}")
                return run
            run.prewarm = json.loads(pre_json.read_text())["targets"][0]
        before = fleet.stats()
        budget = point.warmup_secs + point.duration_secs + 300
        with open(workdir / f"{tag}.bench.log", "wb") as out:
            res = subprocess.run(bench, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, timeout=budget)
        if res.returncode != 0 or not json_out.exists():
            run.failure = (f"vllm-router-bench exited with {res.returncode}: "
                           f"{last_line(tail(workdir / f'{tag}.bench.log'))}")
            return run
        run.figures = json.loads(json_out.read_text())["targets"][0]
        count = lambda s: s.get("by_path", {}).get(CHAT, 0)
        run.per_worker = [count(b) - count(a) for a, b in zip(before, fleet.stats())]
        if metrics_port:
            run.decisions = save_decisions(metrics_port, workdir / f"{tag}.metrics.txt")
        if proc.poll() is not None:
            run.failure = f"exited during the run with status {proc.returncode}"
        fleet.check_alive()
        return run
    except subprocess.TimeoutExpired:
        run.failure = "vllm-router-bench did not finish in time"
        return run
    finally:
        stop(proc)
        run.seconds = time.monotonic() - began


def round_order(targets: list[Target], rnd: int, rounds: int) -> list[Target]:
    """Round `rnd`'s order. Rounds go in pairs: the second of a pair runs the first's order
    reversed, so over the pair every target's mean position is the middle; each pair starts
    from the list rotated by another share of it (2 x pair x n / rounds places), so that an
    odd last round does not favour the same targets."""
    n = len(targets)
    shift = ((rnd // 2) * 2 * n) // rounds % n if n else 0
    order = targets[shift:] + targets[:shift]
    return order[::-1] if rnd % 2 else order


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


# ---------------------------------------------------------------------------------------------
# medians over rounds

METRICS = ("ttft_mean", "ttft_p50", "ttft_p99", "e2e_mean", "hit", "rps")


def metric(f: dict, key: str) -> float | None:
    t, e = f.get("ttft_ms") or {}, f.get("e2e_ms") or {}
    return {
        "ttft_mean": t.get("mean"), "ttft_p50": t.get("p50"), "ttft_p99": t.get("p99"),
        "e2e_mean": e.get("mean"), "hit": f.get("cache_hit_rate"), "rps": f.get("ok_per_sec"),
    }[key]


@dataclass
class Agg:
    """One target's figures over its rounds: medians, spreads, sums."""
    target: Target
    rounds: int  # rounds with figures
    failed: int  # rounds without
    med: dict[str, float | None] = field(default_factory=dict)
    spread: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    shed: int = 0
    per_worker: list[float] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Every round measured, no errors and nothing shed: eligible as a point's best."""
        return (self.rounds > 0 and not self.failed and self.errors == 0 and self.shed == 0
                and self.med.get("ttft_mean") is not None)


def aggregate(t: Target, runs: list[Run]) -> Agg:
    ok = [r for r in runs if r.figures]
    a = Agg(t, len(ok), len(runs) - len(ok))
    figs = [r.figures for r in ok]
    for key in METRICS:
        vals = [v for v in (metric(f, key) for f in figs) if v is not None]
        a.med[key] = statistics.median(vals) if vals else None
        a.spread[key] = (min(vals), max(vals)) if vals else None
    a.requests = sum(f["requests"] for f in figs)
    a.errors = sum(f["errors"] for f in figs)
    a.shed = sum(f.get("shed", 0) for f in figs)
    if ok:
        a.per_worker = [sum(xs) / len(ok) for xs in zip(*(r.per_worker for r in ok))]
    for f in figs:
        for kind, n in (f.get("error_kinds") or {}).items():
            a.error_kinds[kind] = a.error_kinds.get(kind, 0) + n
        if f.get("first_error") and f["first_error"] not in a.first_errors:
            a.first_errors.append(f["first_error"])
    return a


def best(aggs: list[Agg], key: str, where=lambda a: True) -> Agg | None:
    """The clean target with the lowest median `key` among those `where` accepts."""
    ok = [a for a in aggs if a.clean and where(a) and a.med.get(key) is not None]
    return min(ok, key=lambda a: a.med[key], default=None)


def load_only_best(aggs: list[Agg]) -> dict[str, str]:
    """Per router, its load-only policy with the lowest median TTFT mean."""
    out = {}
    for router in POLICIES:
        b = best(aggs, "ttft_mean", lambda a, r=router: a.target.router == r and a.target.load_only)
        if b:
            out[router] = b.target.policy
    return out


# ---------------------------------------------------------------------------------------------
# verdicts


@dataclass
class Check:
    label: str
    detail: str  # which targets
    ours: str
    theirs: str
    value: str
    goal: str
    ok: bool | None  # None: could not be computed
    kind: str = ""  # "goal" (>= 1.3x vs vllm-router) or "load-only" (within 5%)

    @property
    def result(self) -> str:
        return "n/a" if self.ok is None else ("PASS" if self.ok else "FAIL")


@dataclass
class Verdict:
    point: str
    ours: Agg | None
    checks: list[Check]
    ratios: dict[str, tuple[float | None, float | None, str]]  # group -> (mean, p99, names)
    hit_points: float | None
    goal_ratio: float | None
    load_only_ratio: float | None


def ratio(theirs: float | None, ours: float | None) -> float | None:
    return None if theirs is None or not ours else theirs / ours


def fx(x: float | None, digits: int = 2, suffix: str = "x") -> str:
    if x is None:
        return "n/a"
    x = round(x, digits) + 0.0  # no "-0.0"
    return f"{x:.{digits}f}{suffix}"


def verdicts(point: Point, aggs: list[Agg], hit_tolerance: float) -> Verdict:
    ours = next((a for a in aggs if a.target.is_ours_default), None)
    checks: list[Check] = []
    ratios: dict[str, tuple[float | None, float | None, str]] = {}
    om = ours.med if ours and ours.rounds else {}
    groups = (("smg", lambda a: a.target.router == "smg"),
              ("vllm-router", lambda a: a.target.router == "vllm-router"),
              ("smg + vllm-router", lambda a: a.target.router in ("smg", "vllm-router")))
    routers = {a.target.router for a in aggs}
    for label, where in groups:
        if not any(where(a) for a in aggs):
            continue
        if label == "smg + vllm-router" and not {"smg", "vllm-router"} <= routers:
            continue  # the same as the one router's rows
        row = []
        names = []
        for key, what in (("ttft_mean", "TTFT mean"), ("ttft_p99", "TTFT p99")):
            b = best(aggs, key, where)
            r = ratio(b.med[key] if b else None, om.get(key))
            row.append(r)
            names.append(b.target.name if b else "n/a")
            checks.append(Check(
                f"{what}: best {label} / ours default", f"{b.target.name if b else 'n/a'}",
                fmt(om.get(key)), fmt(b.med[key] if b else None), fx(r), ">= 1.00x",
                None if r is None else round(r, 2) >= 1.0))
        ratios[label] = (row[0], row[1], " / ".join(dict.fromkeys(names)))
    hit_best = max((a for a in aggs if a.rounds and a.med.get("hit") is not None
                    and a.target.router != "base"),
                   key=lambda a: a.med["hit"], default=None)
    hit_points = None
    if hit_best and om.get("hit") is not None:
        hit_points = (om["hit"] - hit_best.med["hit"]) * 100
    checks.append(Check(
        "cache-hit rate: ours default - best of any target", hit_best.target.name if hit_best
        else "n/a", pct(om.get("hit")), pct(hit_best.med["hit"] if hit_best else None),
        fx(hit_points, 1, " pts"), f">= -{hit_tolerance:g} pts",
        None if hit_points is None else round(hit_points, 1) >= -hit_tolerance))
    errors_ok = None if ours is None else (ours.errors == 0 and ours.shed == 0
                                           and ours.failed == 0 and ours.rounds > 0)
    checks.append(Check(
        "errors (and shed requests) of ours default", "summed over rounds",
        "n/a" if ours is None else f"{ours.errors}" + (f" + {ours.shed} shed" if ours.shed else "")
        + (f" + {ours.failed} failed round(s)" if ours.failed else ""),
        "", "", "0", errors_ok))
    goal_ratio = None
    if point.workload != "random" and any(a.target.router == "vllm-router" for a in aggs):
        b = best(aggs, "ttft_mean", lambda a: a.target.router == "vllm-router")
        goal_ratio = ratio(b.med["ttft_mean"] if b else None, om.get("ttft_mean"))
        checks.append(Check(
            "TTFT mean: best vllm-router / ours default (goal)", b.target.name if b else "n/a",
            fmt(om.get("ttft_mean")), fmt(b.med["ttft_mean"] if b else None), fx(goal_ratio),
            f">= {GOAL_VS_VLLM_ROUTER:.2f}x", None if goal_ratio is None
            else round(goal_ratio, 2) >= GOAL_VS_VLLM_ROUTER, kind="goal"))
    load_only_ratio = None
    if point.workload == "random":
        b = best(aggs, "ttft_mean", lambda a: a.target.load_only and a.target.router != "base")
        load_only_ratio = ratio(om.get("ttft_mean"), b.med["ttft_mean"] if b else None)
        checks.append(Check(
            "TTFT mean: ours default / best load-only of any router", b.target.name if b
            else "n/a", fmt(om.get("ttft_mean")), fmt(b.med["ttft_mean"] if b else None),
            fx(load_only_ratio), f"<= {1 + LOAD_ONLY_TOLERANCE:.2f}x",
            None if load_only_ratio is None
            else round(load_only_ratio, 2) <= 1 + LOAD_ONLY_TOLERANCE,
            kind="load-only"))
        b99 = best(aggs, "ttft_p99", lambda a: a.target.load_only)
        r99 = ratio(om.get("ttft_p99"), b99.med["ttft_p99"] if b99 else None)
        checks.append(Check(
            "TTFT p99: ours default / best load-only of any router (shown, not a goal)",
            b99.target.name if b99 else "n/a", fmt(om.get("ttft_p99")),
            fmt(b99.med["ttft_p99"] if b99 else None), fx(r99), "", None))
    return Verdict(point.name, ours, checks, ratios, hit_points, goal_ratio, load_only_ratio)


# ---------------------------------------------------------------------------------------------
# the report


def fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def spread_of(a: Agg, key: str) -> str:
    s = a.spread.get(key)
    return "" if s is None or a.rounds < 2 else f" ({s[0]:.1f}–{s[1]:.1f})"


# Absolute prefixes shown in the report as something a reader can reproduce anywhere.
DISPLAY: list[tuple[str, str]] = []


def shell(argv: list[str]) -> str:
    def show(arg: str) -> str:
        for prefix, name in DISPLAY:
            arg = arg.replace(prefix, name)
        return arg

    return " ".join(a if a.startswith("$") else shlex.quote(a) for a in map(show, argv))


def driver_args(argv: list[str]) -> list[str]:
    """The command line without the binary paths quality.sh passes."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a.startswith("--") and a.endswith("-bin"):
            skip = True
            continue
        if a.startswith("--") and a.split("=", 1)[0].endswith("-bin"):
            continue
        out.append(a)
    return out


def commands_block(results) -> list[str]:
    """The router and load commands of every target, in run order."""
    lines = ["", "Commands, in run order (worker URLs and ports differ per target):", "", "```"]
    for r in results:
        lines += [shell(r.router_cmd), shell(r.bench_cmd)]
    return lines + ["```", ""]


def report_head(title: str, paths, measured: str | None = None) -> list[str]:
    """A report's title, the machine and the versions of everything measured. `measured`
    replaces the line naming the peer (vllm-router 0.1.17) when a report has others."""
    if measured is None:
        measured = (f"Ours = `{version_of([paths.router, '--version'])}`; peer = `vllm-router` "
                    f"{VLLM_ROUTER_VERSION} from PyPI")
    return [
        f"# {title}",
        "",
        f"Machine: {machine_line()}. Every process (workers, router, load generator) shares it.",
        "",
        f"{measured}; load = `{version_of([paths.bench, '--version'])}` (streaming chat, "
        f"`stream_options.include_usage`); workers = `{version_of([paths.sim, '--version'])}`.",
        "",
    ]


def svg_name(out: Path, what: str) -> str:
    return f"{out.stem}-{what}.svg"


def results_table(aggs: list[Agg], rounds: int) -> list[str]:
    lines = [
        f"| target | TTFT mean ms (spread) | TTFT p99 ms (spread) | TTFT p50 ms | e2e mean ms "
        f"| cache hit | req/s | errors | requests per worker |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for a in aggs:
        if not a.rounds:
            lines.append(f"| {a.target.name} | failed | | | | | | | |")
            continue
        m = a.med
        errs = f"{a.errors}" + (f" + {a.failed} failed round(s)" if a.failed else "") + \
            (f" ({a.shed} shed)" if a.shed else "")
        name = f"**{a.target.name}**" if a.target.is_ours_default else a.target.name
        lines.append(
            f"| {name} | {fmt(m['ttft_mean'])}{spread_of(a, 'ttft_mean')} | "
            f"{fmt(m['ttft_p99'])}{spread_of(a, 'ttft_p99')} | {fmt(m['ttft_p50'])} | "
            f"{fmt(m['e2e_mean'])} | {pct(m['hit'])} | {fmt(m['rps'])} | {errs} | "
            f"{'/'.join(f'{x:.0f}' for x in a.per_worker)} |")
    return lines


def checks_table(v: Verdict) -> list[str]:
    lines = ["| check | against | ours | theirs | value | goal | result |",
             "|---|---|---:|---:|---:|---|---|"]
    for c in v.checks:
        lines.append(f"| {c.label} | {c.detail} | {c.ours} | {c.theirs} | {c.value} | "
                     f"{c.goal} | {c.result} |")
    return lines


def rounds_table(runs: list[Run]) -> list[str]:
    lines = ["| round | position | target | TTFT mean ms | TTFT p50 ms | TTFT p99 ms | cache hit "
             "| req/s | errors | seconds |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(runs, key=lambda r: (r.round, r.position)):
        f = r.figures
        if f is None:
            lines.append(f"| {r.round + 1} | {r.position + 1} | {r.target.name} | failed | | | "
                         f"| | | {r.seconds:.0f} |")
            continue
        lines.append(f"| {r.round + 1} | {r.position + 1} | {r.target.name} | "
                     f"{fmt(metric(f, 'ttft_mean'))} | {fmt(metric(f, 'ttft_p50'))} | "
                     f"{fmt(metric(f, 'ttft_p99'))} | {pct(metric(f, 'hit'))} | "
                     f"{fmt(metric(f, 'rps'))} | {f['errors']} | {r.seconds:.0f} |")
    return lines


@dataclass
class PointResult:
    point: Point
    runs: list[Run]
    aggs: list[Agg]
    verdict: Verdict
    orders: list[list[str]]


def point_report(pr: PointResult, paths: Paths, out: Path | None) -> list[str]:
    p = pr.point
    lines = [f"## {p.title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in p.params]
    lines += [f"- {n}" for n in p.notes]
    lines += ["", "Workers (one process each, restarted before every run):", "", "```"]
    lines += [shell(p.fleet.argv(paths.sim, w)) for w in range(len(p.fleet.workers))]
    lines += ["```", ""]
    lines += [f"Medians over {len(pr.orders)} round(s), spread = min–max over rounds; errors "
              "summed over rounds; requests per worker are the mean per round, from the "
              "workers' `/sim/stats` (warm-up included). Ours default in bold.", ""]
    lines += results_table(pr.aggs, len(pr.orders))
    lines += ["", "Verdict (from the medians; a best is the lowest median among the targets "
              "with every round measured and no errors, chosen separately per figure; "
              "ratios are theirs / ours, so 1.00x or more means ours is at least as good):", ""]
    lines += checks_table(pr.verdict)
    bad = [r for r in pr.runs if r.failure]
    erred = [a for a in pr.aggs if a.errors]
    if bad or erred:
        lines += ["", "Failures and errors:", ""]
        lines += [f"- {r.target.name} round {r.round + 1}: {r.failure}" for r in bad]
        lines += [f"- {a.target.name}: {a.errors} errors {a.error_kinds}; first: "
                  f"{'; '.join(a.first_errors[:2]) or 'n/a'}" for a in erred]
    if out is not None and p.base:
        lines += ["", f"![TTFT CDF, {p.name}]({svg_name(out, f'ttft-cdf-{p.name}')})"]
    lines += ["", "Run order per round: " + "; ".join(
        f"{i + 1}: {', '.join(o)}" for i, o in enumerate(pr.orders))]
    lines += ["", "<details><summary>Every round</summary>", ""] + rounds_table(pr.runs) + \
        ["", "</details>"]
    first = sorted((r for r in pr.runs if r.round == 0), key=lambda r: r.position)
    lines += ["", "Commands of round 1, in run order (worker URLs and ports differ per run; "
              "later rounds run the same commands in their own order):", "", "```"]
    for r in first:
        lines += [shell(r.router_cmd)]
        if r.prewarm_cmd:
            lines += [shell(r.prewarm_cmd) + "   # pre-warm, not counted"]
        lines += [shell(r.bench_cmd)]
    return lines + ["```", ""]


def summary_table(results: list[PointResult]) -> list[str]:
    lines = [
        "| point | ours default TTFT mean / p99 ms | best smg / ours (mean, p99) | best "
        "vllm-router / ours (mean, p99) | best of both / ours (mean, p99) | hit rate vs best "
        f"(pts) | errors | ≥{GOAL_VS_VLLM_ROUTER:g}x vs vllm-router | within "
        f"{LOAD_ONLY_TOLERANCE:.0%} of load-only | checks passed |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for pr in results:
        v = pr.verdict
        o = v.ours.med if v.ours and v.ours.rounds else {}

        def pair(label: str) -> str:
            r = v.ratios.get(label)
            return "n/a" if r is None else f"{fx(r[0])}, {fx(r[1])}"
        decided = [c for c in v.checks if c.ok is not None]
        goal = next((c.result for c in v.checks if c.kind == "goal"), "—")
        within = next((c.result for c in v.checks if c.kind == "load-only"), "—")
        errs = "n/a" if v.ours is None else str(v.ours.errors)
        lines.append(
            f"| {pr.point.name} | {fmt(o.get('ttft_mean'))} / {fmt(o.get('ttft_p99'))} | "
            f"{pair('smg')} | {pair('vllm-router')} | {pair('smg + vllm-router')} | "
            f"{fx(v.hit_points, 1, '')} | {errs} | {goal} | {within} | "
            f"{sum(c.ok for c in decided)}/{len(decided)} |")
    return lines


def report(results: list[PointResult], paths: Paths, argv: list[str], args,
           out: Path | None, versions: dict[str, str]) -> str:
    measured = (f"Ours = `{versions['ours']}`; smg = `{versions['smg']}` (PyPI `smg=="
                f"{SMG_VERSION}`); vllm-router = `vllm-router` {VLLM_ROUTER_VERSION} (PyPI); "
                f"nginx = `{versions['nginx']}`")
    if versions.get("base"):
        measured += f"; base (`--baseline-bin`, another build of ours) = `{versions['base']}`"
    t = SimTimings(args.ttft_ms, args.prefill_us_per_token, args.itl_ms)
    sim_bits = [f"TTFT overhead {t.ttft_ms:g} ms", f"prefill {t.prefill_us_per_token:g} µs per "
                f"uncached prompt token", f"{t.itl_ms:g} ms per output token",
                f"at most {args.max_num_seqs} running requests per worker (the rest queue)",
                f"blocks of {args.block_size} tokens, LRU"]
    if args.sim.itl_batch_factor:
        sim_bits.append(f"decode slowed by 1 + {args.itl_batch_factor:g} x (running - 1)"
                        if args.itl_batch_factor else "a decode step as fast for a full batch "
                        "as for one sequence (`--itl-batch-factor 0`)")
    if args.sim.max_num_batched_tokens:
        sim_bits.append(f"a step budget of {args.max_num_batched_tokens} tokens "
                        "(`--max-num-batched-tokens`), prefill chunks sharing steps with decode")
    lines = report_head("Routing quality", paths, measured) + [
        "Targets are `router/policy`. TTFT is measured by the client to the first chunk "
        "carrying a choice; the cache-hit rate is Σ`cached_tokens` / Σ`prompt_tokens` from the "
        "workers' usage chunks. Closed loop = N users, each sending its next request when its "
        "answer is complete; open loop = Poisson arrivals at `--rate` requests per second, "
        "whatever the target's speed.",
        "",
        f"Simulated workers (`vllm-sim`, one process each): {'; '.join(sim_bits)}.",
        "",
        f"Every point runs {args.rounds} round(s); in each round every target runs once on "
        "freshly restarted workers (cold caches). The order alternates: rounds go in pairs, "
        "the second of a pair in the first's order reversed, and each pair starts from the "
        "target list rotated by another share of it, so that drift on a shared machine "
        "spreads evenly. Figures are medians over rounds; the spread is min–max over rounds.",
        "",
        f"Driver: `{shell(['bench/quality.sh', *driver_args(argv)])}`",
        "",
    ]
    for pr in results:
        lines += point_report(pr, paths, out)
    lines += ["## Summary", "",
              "Per point, from the medians: ratios theirs / ours default (1.00x or more: ours "
              "at least as good), hit rate of ours default minus the best of any target, errors "
              "of ours default, and the goals. `—`: not a goal on that point.", ""]
    lines += summary_table(results)
    if out is not None and any(pr.point.workload == "chat" for pr in results):
        lines += ["", f"![Mean TTFT across the chat points]({svg_name(out, 'chat-sweep')})"]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# JSON and charts


def raw_json(results: list[PointResult], argv: list[str], args, versions: dict[str, str],
             paths: Paths) -> dict:
    def agg_json(a: Agg) -> dict:
        return {"target": a.target.name, "rounds": a.rounds, "failed_rounds": a.failed,
                "median": a.med, "spread": {k: v for k, v in a.spread.items()},
                "requests": a.requests, "errors": a.errors, "shed": a.shed,
                "per_worker_mean": a.per_worker, "error_kinds": a.error_kinds}

    return {
        "tool": "bench/quality.py",
        "driver": shell(["bench/quality.sh", *driver_args(argv)]),
        "machine": machine_line(),
        "versions": versions,
        "rounds": args.rounds,
        "points": [{
            "name": pr.point.name, "workload": pr.point.workload, "title": pr.point.title,
            "params": dict(pr.point.params), "notes": pr.point.notes,
            "workers": [shell(pr.point.fleet.argv(paths.sim, w))
                        for w in range(len(pr.point.fleet.workers))],
            "order": pr.orders,
            "runs": [{"round": r.round + 1, "position": r.position + 1, "target": r.target.name,
                      "router_cmd": shell(r.router_cmd), "bench_cmd": shell(r.bench_cmd),
                      "prewarm_cmd": shell(r.prewarm_cmd) if r.prewarm_cmd else None,
                      "prewarm_figures": r.prewarm,
                      "figures": r.figures, "per_worker": r.per_worker, "decisions": r.decisions,
                      "failure": r.failure,
                      "seconds": round(r.seconds, 1)} for r in pr.runs],
            "medians": [agg_json(a) for a in pr.aggs],
            "verdict": [{"check": c.label, "against": c.detail, "ours": c.ours,
                         "theirs": c.theirs, "value": c.value, "goal": c.goal,
                         "result": c.result} for c in pr.verdict.checks],
        } for pr in results],
    }


ROUTER_COLORS = {"ours": "#1f5fbf", "smg": "#e07b00", "vllm-router": "#2e9a3a", "nginx": "#777777",
                 "base": "#7fa6e0"}
DASHES = ("", "7 3", "2 3", "9 3 2 3", "4 2 1 2")


def cdf_chart(pr: PointResult, path: Path) -> None:
    series = []
    for a in pr.aggs:
        if not a.rounds or a.med.get("ttft_p50") is None:
            continue
        policies = POLICIES.get(a.target.router, ())
        i = policies.index(a.target.policy) if a.target.policy in policies else 0
        series.append(charts.Series(
            a.target.name + ("" if a.clean else " (errors)"),
            [(a.med["ttft_p50"], 0.50), (a.med["ttft_p99"], 0.99)],
            ROUTER_COLORS[a.target.router], DASHES[i % len(DASHES)],
            3.0 if a.target.is_ours_default else 1.6))
    charts.lines(
        path, f"{pr.point.name}: TTFT CDF from p50 and p99 only",
        series, "TTFT ms (log scale)", "fraction of requests",
        subtitle="vllm-router-bench's JSON gives no per-request samples, only mean, p50 and "
                 "p99: each line joins the median p50 and p99 over rounds",
        log_x=True, y_range=(0.4, 1.0), y_ticks=[0.5, 0.6, 0.7, 0.8, 0.9, 0.99],
        y_format=lambda v: f"{v:.0%}" if v != 0.99 else "99%")


def sweep_chart(results: list[PointResult], path: Path) -> None:
    chat = [pr for pr in results if pr.point.workload == "chat"]
    cats = [pr.point.name for pr in chat]
    rows: list[tuple[str, list[float | None], str]] = []
    notes: list[list[str]] = []
    for label, where, color in (
            (f"ours/{OURS_DEFAULT}", lambda a: a.target.is_ours_default, ROUTER_COLORS["ours"]),
            ("best smg", lambda a: a.target.router == "smg", ROUTER_COLORS["smg"]),
            ("best vllm-router", lambda a: a.target.router == "vllm-router",
             ROUTER_COLORS["vllm-router"])):
        vals, names = [], []
        for pr in chat:
            b = best(pr.aggs, "ttft_mean", where)
            vals.append(b.med["ttft_mean"] if b else None)
            names.append(b.target.policy if b and not b.target.is_ours_default else "")
        rows.append((label, vals, color))
        notes.append(names)
    charts.bars(path, "Mean TTFT across the chat points (median over rounds; lower is better)",
                cats, rows, "TTFT mean ms",
                subtitle="best = the policy with the lowest median TTFT mean at that point "
                         "(named under its bar), among targets without errors",
                notes=notes)


# ---------------------------------------------------------------------------------------------


def pin(paths: Paths, dest: Path) -> Paths:
    """Our binaries copied into `dest` (see `pin_binaries`); the peers' stay where they are."""
    router, sim, bench = pin_binaries(dest, [paths.router, paths.sim, paths.bench])
    baseline = pin_binaries(dest / "baseline", [paths.baseline])[0] if paths.baseline else None
    return Paths(router, sim, bench, paths.vllm_router, paths.smg, paths.nginx, baseline)


def estimate(plan: list[Point], rounds: int) -> tuple[float, int]:
    secs, runs = 0.0, 0
    for p in plan:
        for t in p.targets:
            secs += rounds * (p.prewarm_secs + p.warmup_secs + p.duration_secs
                              + OVERHEAD_SECS[t.router])
            runs += rounds
    return secs, runs


def hms(secs: float) -> str:
    m = round(secs / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{max(1, m)} min"


# Flags of the two-scenario benchmark this suite replaced, and what to use instead.
REMOVED_FLAGS = {
    "--scenario": "use --workloads (the cache scenario is now `chat`, the slow one `random` "
                  "and `hetero`)",
    "--ours-policies": "use --targets ours/POLICY,...",
    "--peer-policies": "use --targets vllm-router/POLICY,...",
    "--slow-ours-policies": "use --targets with --workloads random or hetero",
    "--slow-peer-policies": "use --targets with --workloads random or hetero",
    "--slow-users": "use --random-users",
    "--slow-num-blocks": "use --random-num-blocks",
}


class Removed(argparse.Action):
    def __init__(self, *a, hint: str = "", **kw):
        self.hint = hint
        super().__init__(*a, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is gone: {self.hint}")


def csv_of(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in split(text)]
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err))
    return parse


def main() -> int:
    here = Path(__file__).resolve().parent
    root = here.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="base",
                    help="comma list of points (chat, chat-g2, ..., shared-prefix, random, "
                         "hetero, burst), or `base` (one point per workload), `chat-sweep` "
                         "(chat and its sweep points), `all`")
    ap.add_argument("--targets", default=None,
                    help="comma list of ROUTER/POLICY, `all` or `shortlist` (ours default, ours "
                         "consistent_hash, smg cache_aware and prefix_hash, vllm-router "
                         "cache_aware and consistent_hash, and each router's best load-only "
                         "policy); default `all` for base points, --sweep-targets for sweep "
                         "points")
    ap.add_argument("--sweep-targets", default=None,
                    help="targets of the chat sweep points (default: --targets if given, "
                         "else shortlist)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path,
                    help="write the markdown report here, its JSON beside it (same name, .json) "
                         "and the SVG charts in the same directory")
    ap.add_argument("--keep", type=Path, help="keep logs and JSON results in this directory")
    ap.add_argument("--hit-tolerance-points", type=float, default=2.0,
                    help="verdict: ours default's cache-hit rate may trail the best by this "
                         "many percentage points")
    ap.add_argument("--list", action="store_true", help="list the points and targets, then exit")
    g = ap.add_argument_group("fleet")
    g.add_argument("--workers", type=int, default=4)
    g.add_argument("--ttft-ms", type=float, default=5.0)
    g.add_argument("--prefill-us-per-token", type=float, default=300.0)
    g.add_argument("--itl-ms", type=float, default=8.0)
    g.add_argument("--itl-batch-factor", type=float, default=0.0,
                   help="passed when vllm-sim has the flag")
    g.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="passed when vllm-sim has the flag")
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--max-num-seqs", type=int, default=8)
    g.add_argument("--num-blocks", type=int, default=0,
                   help="chat base point: blocks per worker (default: from the working set)")
    g.add_argument("--cache-fleet-factor", type=float, default=1.0,
                   help="chat, hetero, burst: the fleet's total cache as a multiple of the "
                        "working set")
    g = ap.add_argument_group("window")
    g.add_argument("--duration-secs", type=float, default=20.0)
    g.add_argument("--warmup-secs", type=float, default=8.0)
    g.add_argument("--max-tokens", type=int, default=16)
    g.add_argument("--seed", type=int, default=1)
    g = ap.add_argument_group("chat (base point; hetero uses it too)")
    g.add_argument("--groups", type=int, default=8)
    g.add_argument("--users", type=int, default=48)
    g.add_argument("--turns", type=int, default=6)
    g.add_argument("--system-prompt-words", type=int, default=600)
    g.add_argument("--user-words", type=int, default=40)
    g.add_argument("--sweep-groups", type=csv_of(int), default=[2, 16])
    g.add_argument("--sweep-users", type=csv_of(int), default=[24, 128])
    g.add_argument("--sweep-cache", type=csv_of(float), default=[0.5, 1.5],
                   help="cache as a multiple of the working set")
    g = ap.add_argument_group("shared-prefix")
    g.add_argument("--sp-groups", type=int, default=32)
    g.add_argument("--sp-prefix-words", type=int, default=1200)
    g.add_argument("--sp-question-words", type=int, default=40)
    g.add_argument("--sp-cache-factor", type=float, default=1.5,
                   help="each worker caches this multiple of its share of all prefixes")
    g.add_argument("--sp-rate", type=float, default=0.0,
                   help="open-loop requests per second (default: --sp-load x the estimated "
                        "capacity with every prefix cached)")
    g.add_argument("--sp-load", type=float, default=0.5,
                   help="the default rate as a fraction of the estimated capacity (an upper "
                        "bound: queueing near it is steep)")
    g.add_argument("--sp-prewarm-secs", type=float, default=10.0,
                   help="an uncounted load run before the measured one: the same prefixes, other "
                        "questions (0: none)")
    g.add_argument("--sp-prewarm-fraction", type=float, default=0.5,
                   help="the pre-warm's rate as a fraction of the measured rate")
    g = ap.add_argument_group("random")
    g.add_argument("--random-users", type=int, default=48)
    g.add_argument("--prompt-words", type=int, default=200)
    g.add_argument("--random-num-blocks", type=int, default=4096)
    g = ap.add_argument_group("hetero")
    g.add_argument("--slow-worker-factor", type=float, default=2.0)
    g.add_argument("--small-cache-factor", type=float, default=0.5)
    g = ap.add_argument_group("burst")
    g.add_argument("--burst-users", type=int, default=96)
    g.add_argument("--burst-turns", type=int, default=3)
    g.add_argument("--burst-duration-secs", type=float, default=10.0)
    g = ap.add_argument_group("binaries")
    g.add_argument("--router-bin", default=str(root / "target/release/vllm-router"))
    g.add_argument("--sim-bin", default=str(root / "target/release/vllm-sim"))
    g.add_argument("--bench-bin", default=str(root / "target/release/vllm-router-bench"))
    g.add_argument("--vllm-router-bin", "--peer-bin", dest="vllm_router_bin",
                   default=str(Path.home() / ".cache/vllm-router-bench/bin/vllm-router"))
    g.add_argument("--smg-bin",
                   default=str(Path.home() / ".cache/vllm-router-bench-smg/bin/smg"))
    g.add_argument("--nginx-bin", default=shutil.which("nginx") or "/usr/sbin/nginx")
    g.add_argument("--baseline-bin", default=None,
                   help="another build of vllm-router, run as targets base/POLICY next to "
                        "ours (e.g. main before a change), in the same alternating rounds")
    for flag, hint in REMOVED_FLAGS.items():
        ap.add_argument(flag, dest=f"removed{flag}", nargs="?", help=argparse.SUPPRESS,
                        action=Removed, hint=hint)
    args = ap.parse_args()
    positive = ("rounds", "workers", "users", "groups", "turns", "max_tokens", "block_size",
                "max_num_seqs", "max_num_batched_tokens", "sp_groups", "sp_prefix_words",
                "random_users", "burst_users", "burst_turns")
    for name in positive:
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.duration_secs, args.burst_duration_secs, args.slow_worker_factor,
           args.cache_fleet_factor, args.sp_cache_factor, args.sp_load, args.small_cache_factor,
           args.sp_prewarm_fraction, *args.sweep_cache) <= 0 or \
            min(args.warmup_secs, args.sp_rate, args.sp_prewarm_secs) < 0:
        ap.error("durations and factors must be positive; --warmup-secs, --sp-rate and "
                 "--sp-prewarm-secs not negative")
    if args.targets is None:
        args.sweep_targets = args.sweep_targets or "shortlist"
        args.targets = "all"
    elif args.sweep_targets is None:
        args.sweep_targets = args.targets
    try:
        resolve_targets(args.targets)
        resolve_targets(args.sweep_targets)
    except ValueError as err:
        ap.error(str(err))
    args.sim = SimFeatures.of(args.sim_bin)
    args.step_model = args.sim.max_num_batched_tokens
    try:
        plan = select_points(points(args), args.workloads)
    except ValueError as err:
        ap.error(str(err))
    for p in plan:
        p.targets = resolve_targets(p.targets_spec)
    if args.list:
        for p in plan:
            print(f"{p.name}: {', '.join(t.name for t in p.targets)}")
        secs, runs = estimate(plan, args.rounds)
        print(f"{runs} runs, estimated {hms(secs)}")
        return 0

    paths = Paths(args.router_bin, args.sim_bin, args.bench_bin, args.vllm_router_bin,
                  args.smg_bin, args.nginx_bin, args.baseline_bin)
    used = {t.router for p in plan for t in p.targets}
    if "base" in used and not args.baseline_bin:
        ap.error("targets base/POLICY need --baseline-bin (another build of vllm-router)")
    needed = {"router": True, "sim": True, "bench": True, "vllm_router": "vllm-router" in used,
              "smg": "smg" in used, "nginx": "nginx" in used, "baseline": "base" in used}
    for what, p in vars(paths).items():
        if needed[what] and not (os.access(p, os.X_OK) or shutil.which(p)):
            ap.error(f"{what}: {p} is not an executable")

    secs, runs = estimate(plan, args.rounds)
    log(f"{len(plan)} point(s), {runs} runs ({args.rounds} round(s)); estimated "
        f"{hms(secs)} (pre-warm + warm-up + window + about 2-3 s of restarts per run; an "
        "overloaded target takes longer, since its requests in flight are waited for)")

    results: list[PointResult] = []
    with tempfile.TemporaryDirectory(prefix="vllm-router-quality-") as tmp:
        workdir = (args.keep or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        built = Path(paths.router).resolve().parent
        paths = pin(paths, workdir / "bin")
        DISPLAY[:] = [
            (str(workdir / "bin"), str(built)),
            (str(workdir), "$WORKDIR"),
            (str(Path(paths.smg).resolve().parent.parent), "${BENCH_VENV}-smg"),
            (str(Path(paths.vllm_router).resolve().parent.parent), "$BENCH_VENV"),
            (paths.nginx, "nginx"),
            (str(root) + "/", ""),
        ]
        versions = {"ours": version_of([paths.router, "--version"]),
                    "base": version_of([paths.baseline, "--version"]) if paths.baseline
                    else "",
                    "smg": version_of([paths.smg, "--version"]) if needed["smg"]
                    else f"smg {SMG_VERSION}",
                    "vllm-router": f"vllm-router {VLLM_ROUTER_VERSION}",
                    "nginx": version_of([paths.nginx, "-v"]).replace("nginx version: ", "")
                    if os.access(paths.nginx, os.X_OK) else "nginx"}
        base_best: dict[str, dict[str, str]] = {}
        started = time.monotonic()
        for p in plan:
            if p.base:
                p.targets = resolve_targets(p.targets_spec)
            else:
                p.targets = resolve_targets(p.targets_spec, base_best.get(p.workload))
            fleet = Fleet(p.fleet, paths.sim, workdir)
            runs_done: list[Run] = []
            orders: list[list[str]] = []
            try:
                for rnd in range(args.rounds):
                    order = round_order(p.targets, rnd, args.rounds)
                    orders.append([t.name for t in order])
                    for pos, t in enumerate(order):
                        log(f"{p.name} round {rnd + 1}/{args.rounds}: {t.name}")
                        r = measure(t, rnd, pos, p, fleet, paths, workdir)
                        runs_done.append(r)
                        if r.failure:
                            log(f"  FAILED: {r.failure}")
                        if r.figures:
                            f = r.figures
                            log(f"  {f['requests']} requests, TTFT mean "
                                f"{fmt(metric(f, 'ttft_mean'))} ms p99 "
                                f"{fmt(metric(f, 'ttft_p99'))} ms, cache hit "
                                f"{pct(metric(f, 'hit'))}, errors {f['errors']}, per worker "
                                f"{'/'.join(map(str, r.per_worker))} ({r.seconds:.0f} s)")
            finally:
                fleet.stop()
            aggs = [aggregate(t, [r for r in runs_done if r.target == t]) for t in p.targets]
            if p.base:
                base_best[p.workload] = load_only_best(aggs)
            results.append(PointResult(p, runs_done, aggs,
                                       verdicts(p, aggs, args.hit_tolerance_points), orders))
            if args.out:
                write_outputs(results, paths, args, versions)
        log(f"done in {hms(time.monotonic() - started)} (estimated {hms(secs)})")
        text = report(results, paths, sys.argv[1:], args, args.out, versions)
        if args.out:
            write_outputs(results, paths, args, versions)
    print(text, end="")
    failed = [r for pr in results for r in pr.runs if r.figures is None]
    return 1 if failed else 0


def write_outputs(results: list[PointResult], paths: Paths, args, versions) -> None:
    """The markdown report, its JSON and the charts, rewritten after every point so that a
    long suite leaves its figures behind if interrupted."""
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(results, paths, sys.argv[1:], args, out, versions))
    out.with_suffix(".json").write_text(
        json.dumps(raw_json(results, sys.argv[1:], args, versions, paths), indent=1) + "\n")
    for pr in results:
        if pr.point.base:
            cdf_chart(pr, out.parent / svg_name(out, f"ttft-cdf-{pr.point.name}"))
    if any(pr.point.workload == "chat" for pr in results):
        sweep_chart(results, out.parent / svg_name(out, "chat-sweep"))


if __name__ == "__main__":
    sys.exit(main())
