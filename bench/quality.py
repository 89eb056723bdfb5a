#!/usr/bin/env python3
"""Measure routing quality: time to first token and prefix-cache hit rate per router and policy.

A fleet of simulated vLLM workers (one `vllm-sim` process each, so each can run at its own
speed) with a finite prefix cache and a prefill cost per uncached prompt token. For every
target (a router with one policy) the workers are restarted, so every target starts with cold
caches and equal state; then the router is started, `vllm-router-bench` runs the scenario's
workload through it, and the router is stopped. Targets run one at a time.

Scenarios:
  cache  multi-turn chats with shared system prompts on equal workers whose caches cannot hold
         every conversation: where a request lands decides whether its prefix is cached.
  slow   random prompts (nothing to cache) on workers of which worker 0 is slower: where a
         request lands decides whether it waits on the slow worker.

Standard library only; normally started by `bench/quality.sh`, which builds and installs
everything this needs and passes the paths.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from procs import SimFleet, free_port, log, machine_line, start, stop, tail, version_of, wait_ready

MODEL = "sim-model"
# The simulator's chat template wraps each message in `<|role|>` (five tokens) and ends the
# prompt with `<|assistant|>` (five more).
ROLE_MARKER_TOKENS = 5


# The router's default policy, chosen by this benchmark (see docs/benchmarks.md).
OURS_DEFAULT = "cache_aware"



# ---------------------------------------------------------------------------------------------
# processes








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
class FleetSpec:
    workers: int
    timings: SimTimings
    num_blocks: int
    block_size: int
    max_num_seqs: int
    slow_factor: float = 1.0  # worker 0's timings are this many times slower

    def argv(self, sim_bin: str, worker: int) -> list[str]:
        t = self.timings.scaled(self.slow_factor) if worker == 0 else self.timings
        return [
            sim_bin, "--host", "127.0.0.1", "--port", "0", "--count", "1",
            "--ttft-ms", f"{t.ttft_ms:g}", "--prefill-us-per-token", f"{t.prefill_us_per_token:g}",
            "--itl-ms", f"{t.itl_ms:g}", "--num-blocks", str(self.num_blocks),
            "--block-size", str(self.block_size), "--max-num-seqs", str(self.max_num_seqs),
            "--log-level", "warn",
        ]


class Fleet(SimFleet):
    """The running `vllm-sim` processes, one worker each."""

    def __init__(self, spec: FleetSpec, sim_bin: str, workdir: Path):
        super().__init__(sim_bin, workdir)
        self.spec = spec

    def workers(self) -> list[tuple[str, list[str]]]:
        return [(str(w), self.spec.argv(self.sim_bin, w)) for w in range(self.spec.workers)]


# ---------------------------------------------------------------------------------------------
# scenarios


@dataclass
class Scenario:
    name: str
    title: str
    fleet: FleetSpec
    bench_flags: list[str]
    ours: list[str]
    peer: list[str]
    notes: list[str] = field(default_factory=list)


def cache_arithmetic(args: argparse.Namespace) -> tuple[int, list[str]]:
    """The per-worker cache size for the cache scenario, and how it was chosen."""
    m = ROLE_MARKER_TOKENS
    b = args.block_size
    shared = m + args.system_prompt_words
    # At its last turn a conversation holds the system prompt, every user turn, every earlier
    # reply and the closing assistant marker.
    context = (shared + args.turns * (m + args.user_words)
               + (args.turns - 1) * (m + args.max_tokens) + m)
    shared_blocks = shared // b
    private_blocks = math.ceil(context / b) - shared_blocks
    groups_live = min(args.groups, args.users)
    working_set = groups_live * shared_blocks + args.users * private_blocks
    per_worker = args.num_blocks or math.ceil(args.cache_fleet_factor * working_set / args.workers)
    fleet_total = per_worker * args.workers
    share = math.ceil(groups_live / args.workers) * shared_blocks + \
        math.ceil(args.users / args.workers) * private_blocks
    notes = [
        f"Context of one conversation at its last turn: {shared} shared tokens (system prompt "
        f"plus its role marker) + {args.turns} user turns x {m + args.user_words} + "
        f"{args.turns - 1} replies x {m + args.max_tokens} + {m} (closing marker) = "
        f"{context} tokens, i.e. {shared_blocks} shared + {private_blocks} private blocks "
        f"of {b} tokens.",
        f"Live working set of {args.users} concurrent users over {groups_live} groups: "
        f"{groups_live} x {shared_blocks} + {args.users} x {private_blocks} = "
        f"**{working_set} blocks**.",
        f"Each worker caches **{per_worker} blocks** "
        + ("(set by --num-blocks)" if args.num_blocks else
           f"(= {args.cache_fleet_factor:g} x working set / {args.workers} workers)")
        + f": one worker holds {per_worker / working_set:.0%} of the working set, the fleet "
        f"{fleet_total} blocks ({fleet_total / working_set:.0%}). A router that keeps each "
        f"group and conversation on one worker needs about {share} blocks per worker "
        f"({math.ceil(groups_live / args.workers)} groups and "
        f"{math.ceil(args.users / args.workers)} conversations), which fits; one that spreads "
        f"them asks every worker for all {working_set}, which does not.",
    ]
    return per_worker, notes


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    timings = SimTimings(args.ttft_ms, args.prefill_us_per_token, args.itl_ms)
    common = ["--seed", str(args.seed), "--duration-secs", f"{args.duration_secs:g}",
              "--warmup-secs", f"{args.warmup_secs:g}", "--max-tokens", str(args.max_tokens),
              "--model", MODEL]
    out = []
    if args.scenario in ("cache", "all"):
        per_worker, notes = cache_arithmetic(args)
        out.append(Scenario(
            name="cache",
            title=f"cache: multi-turn chats, {args.workers} equal workers with bounded caches",
            fleet=FleetSpec(args.workers, timings, per_worker, args.block_size, args.max_num_seqs),
            bench_flags=["--workload", "multi-turn", "--users", str(args.users),
                         "--groups", str(args.groups), "--turns", str(args.turns),
                         "--system-prompt-words", str(args.system_prompt_words),
                         "--user-words", str(args.user_words)] + common,
            ours=split(args.ours_policies), peer=split(args.peer_policies), notes=notes,
        ))
    if args.scenario in ("slow", "all"):
        out.append(Scenario(
            name="slow",
            title=f"slow: random prompts, worker 0 of {args.workers} "
                  f"{args.slow_worker_factor:g}x slower",
            fleet=FleetSpec(args.workers, timings, args.slow_num_blocks, args.block_size,
                            args.max_num_seqs, slow_factor=args.slow_worker_factor),
            bench_flags=["--workload", "random", "--users", str(args.slow_users),
                         "--prompt-words", str(args.prompt_words)] + common,
            ours=split(args.slow_ours_policies), peer=split(args.slow_peer_policies),
            notes=[f"Worker 0's TTFT, prefill and inter-token latency are "
                   f"{args.slow_worker_factor:g}x the others'. Random prompts share nothing, "
                   f"so only load balancing matters."],
        ))
    return out


def split(csv: str) -> list[str]:
    return [p.strip() for p in csv.split(",") if p.strip()]


# ---------------------------------------------------------------------------------------------
# one target


@dataclass
class Paths:
    router: str
    sim: str
    peer: str
    bench: str


@dataclass
class Result:
    router: str  # "ours" or "peer"
    policy: str
    router_cmd: list[str]
    bench_cmd: list[str]
    figures: dict | None = None
    per_worker: list[int] = field(default_factory=list)
    failure: str | None = None

    @property
    def name(self) -> str:
        return f"{self.router}/{self.policy}"


def router_argv(router: str, paths: Paths, policy: str, port: int, workers: list[str]) -> list[str]:
    if router == "ours":
        return [paths.router, "--host", "127.0.0.1", "--port", str(port),
                "--prometheus-port", "0", "--log-level", "warn",
                "--worker-urls", *workers, "--policy", policy]
    return [paths.peer, "--host", "127.0.0.1", "--port", str(port),
            "--prometheus-port", str(free_port()), "--log-level", "warning",
            "--worker-urls", *workers, "--policy", policy]


def measure(router: str, policy: str, sc: Scenario, fleet: Fleet, paths: Paths,
            workdir: Path, args: argparse.Namespace) -> Result:
    fleet.restart()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tag = f"{sc.name}-{router}-{policy}"
    argv = router_argv(router, paths, policy, port, fleet.urls)
    json_out = workdir / f"{tag}.json"
    bench = [paths.bench, "--target", f"{router}/{policy}={url}", "--json-out", str(json_out),
             *sc.bench_flags]
    result = Result(router, policy, argv, bench)
    logf = workdir / f"{tag}.router.log"
    proc = start(argv, logf, append=True)
    try:
        why = wait_ready(url + "/v1/models", proc)
        if why:
            result.failure = f"did not start: {why}: {last_line(tail(logf))}"
            return result
        budget = args.warmup_secs + args.duration_secs + 300
        with open(workdir / f"{tag}.bench.log", "wb") as out:
            res = subprocess.run(bench, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, timeout=budget)
        if res.returncode != 0 or not json_out.exists():
            result.failure = (f"vllm-router-bench exited with {res.returncode}: "
                              f"{last_line(tail(workdir / f'{tag}.bench.log'))}")
            return result
        result.figures = json.loads(json_out.read_text())["targets"][0]
        result.per_worker = [s.get("by_path", {}).get("/v1/chat/completions", 0)
                             for s in fleet.stats()]
        if proc.poll() is not None:
            result.failure = f"exited during the run with status {proc.returncode}"
        fleet.check_alive()
        return result
    except subprocess.TimeoutExpired:
        result.failure = "vllm-router-bench did not finish in time"
        return result
    finally:
        stop(proc)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


# ---------------------------------------------------------------------------------------------
# the report


def fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def ttft(r: Result, key: str) -> float | None:
    if r.figures is None or r.failure or not r.figures.get("ttft_ms"):
        return None
    return r.figures["ttft_ms"][key]


def best(results: list[Result], key: str) -> Result | None:
    ok = [r for r in results if ttft(r, key) is not None and r.figures["errors"] == 0]
    return min(ok, key=lambda r: ttft(r, key), default=None)


def ratio_line(label: str, ours: Result | None, peer: Result | None, key: str) -> str:
    a, b = (ttft(ours, key) if ours else None), (ttft(peer, key) if peer else None)
    value = "n/a" if a is None or not b else f"{a / b:.2f}x"
    who = f"{ours.name if ours else 'n/a'} vs {peer.name if peer else 'n/a'}"
    return f"| {label} | {key} | {who} | {fmt(a)} | {fmt(b)} | {value} |"


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


def scenario_report(sc: Scenario, results: list[Result], paths: Paths) -> list[str]:
    lines = [f"## Scenario {sc.title}", ""]
    lines += [f"- {n}" for n in sc.notes]
    lines += [
        "",
        "Workers (one process each, restarted before every target):",
        "",
        "```",
        *(shell(sc.fleet.argv(paths.sim, w)) for w in range(sc.fleet.workers)),
        "```",
        "",
        "| target | requests | req/s | TTFT mean ms | TTFT p50 ms | TTFT p99 ms | e2e mean ms "
        "| e2e p99 ms | cache hit | errors | shed | requests per worker |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        f = r.figures
        if f is None:
            lines.append(f"| {r.name} | failed | | | | | | | | | | |")
            continue
        t, e = f.get("ttft_ms") or {}, f.get("e2e_ms") or {}
        hit = f.get("cache_hit_rate")
        lines.append(
            f"| {r.name} | {f['requests']} | {fmt(f['ok_per_sec'])} | {fmt(t.get('mean'))} | "
            f"{fmt(t.get('p50'))} | {fmt(t.get('p99'))} | {fmt(e.get('mean'))} | "
            f"{fmt(e.get('p99'))} | {'n/a' if hit is None else f'{hit:.1%}'} | {f['errors']} | "
            f"{f['shed']} | {'/'.join(map(str, r.per_worker))} |"
        )
    ours = [r for r in results if r.router == "ours"]
    peer = [r for r in results if r.router == "peer"]
    default = next((r for r in ours if r.policy == OURS_DEFAULT), None)
    baseline = next((r for r in ours if r.policy == "round_robin"), None)
    lines += [
        "",
        "Ratios of time to first token (lower is better; best = lowest among the targets "
        "without errors, chosen separately for mean and p99):",
        "",
        "| comparison | TTFT | targets | ours ms | other ms | ratio |",
        "|---|---|---|---:|---:|---:|",
    ]
    for key in ("mean", "p99"):
        if peer:
            lines.append(ratio_line("ours best / peer best", best(ours, key), best(peer, key), key))
            lines.append(ratio_line("ours default / peer best", default, best(peer, key), key))
        else:
            for r in ours:
                if r is not baseline:
                    lines.append(ratio_line(f"ours {r.policy} / ours round_robin", r, baseline, key))
    failed = [r for r in results if r.failure]
    if failed:
        lines += ["", "Failures:", ""]
        lines += [f"- {r.name}: {r.failure}" for r in failed]
    return lines + commands_block(results)




def commands_block(results) -> list[str]:
    """The router and load commands of every target, in run order."""
    lines = ["", "Commands, in run order (worker URLs and ports differ per target):", "", "```"]
    for r in results:
        lines += [shell(r.router_cmd), shell(r.bench_cmd)]
    return lines + ["```", ""]


def report_head(title: str, paths) -> list[str]:
    """A report's title, the machine and the versions of everything measured."""
    return [
        f"# {title}",
        "",
        f"Machine: {machine_line()}. Every process (workers, router, load generator) shares it.",
        "",
        f"Ours = `{version_of([paths.router, '--version'])}`; peer = `vllm-router` 0.1.17 from "
        f"PyPI; load = `{version_of([paths.bench, '--version'])}` (streaming chat, "
        f"`stream_options.include_usage`); workers = `{version_of([paths.sim, '--version'])}`.",
        "",
    ]


def report(runs: list[tuple[Scenario, list[Result]]], paths: Paths, argv: list[str]) -> str:
    lines = report_head("Routing quality", paths) + [
        "TTFT is measured by the client to the first chunk carrying a choice; the cache-hit rate "
        "is Σ`cached_tokens` / Σ`prompt_tokens` from the workers' usage chunks. Requests per "
        "worker come from each worker's `/sim/stats` and include any warm-up requests.",
        "",
        f"Driver: `{shell(['bench/quality.sh', *driver_args(argv)])}`",
        "",
    ]
    for sc, results in runs:
        lines += scenario_report(sc, results, paths)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------


def main() -> int:
    here = Path(__file__).resolve().parent
    root = here.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=("cache", "slow", "all"), default="all")
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--keep", type=Path, help="keep logs and JSON results in this directory")
    g = ap.add_argument_group("targets")
    g.add_argument("--ours-policies",
                   default="round_robin,power_of_two,least_load,consistent_hash,cache_aware")
    g.add_argument("--peer-policies", default="round_robin,cache_aware,consistent_hash")
    g.add_argument("--slow-ours-policies", default="round_robin,power_of_two,least_load")
    g.add_argument("--slow-peer-policies", default="",
                   help="peer policies for the slow scenario (none by default)")
    g = ap.add_argument_group("fleet")
    g.add_argument("--workers", type=int, default=4)
    g.add_argument("--ttft-ms", type=float, default=5.0)
    g.add_argument("--prefill-us-per-token", type=float, default=300.0)
    g.add_argument("--itl-ms", type=float, default=8.0)
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--max-num-seqs", type=int, default=8)
    g.add_argument("--num-blocks", type=int, default=0,
                   help="cache scenario: blocks per worker (default: from the working set)")
    g.add_argument("--cache-fleet-factor", type=float, default=1.0,
                   help="cache scenario: the fleet's total cache as a multiple of the working set")
    g.add_argument("--slow-num-blocks", type=int, default=4096)
    g.add_argument("--slow-worker-factor", type=float, default=2.0)
    g = ap.add_argument_group("workload")
    g.add_argument("--duration-secs", type=float, default=20.0)
    g.add_argument("--warmup-secs", type=float, default=8.0)
    g.add_argument("--users", type=int, default=24, help="cache scenario: concurrent users")
    g.add_argument("--slow-users", type=int, default=40,
                   help="slow scenario: concurrent users (more than the fleet's batch slots)")
    g.add_argument("--groups", type=int, default=2)
    g.add_argument("--turns", type=int, default=6)
    g.add_argument("--system-prompt-words", type=int, default=600)
    g.add_argument("--user-words", type=int, default=40)
    g.add_argument("--prompt-words", type=int, default=200)
    g.add_argument("--max-tokens", type=int, default=16)
    g.add_argument("--seed", type=int, default=1)
    g = ap.add_argument_group("binaries")
    g.add_argument("--router-bin", default=str(root / "target/release/vllm-router"))
    g.add_argument("--sim-bin", default=str(root / "target/release/vllm-sim"))
    g.add_argument("--bench-bin", default=str(root / "target/release/vllm-router-bench"))
    g.add_argument("--peer-bin",
                   default=str(Path.home() / ".cache/vllm-router-bench/bin/vllm-router"))
    args = ap.parse_args()
    positive = ("workers", "users", "groups", "turns", "max_tokens", "block_size", "max_num_seqs")
    for name in positive:
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration_secs <= 0 or args.slow_worker_factor <= 0 or args.cache_fleet_factor <= 0:
        ap.error("--duration-secs, --slow-worker-factor and --cache-fleet-factor must be positive")
    paths = Paths(args.router_bin, args.sim_bin, args.peer_bin, args.bench_bin)
    for what, p in vars(paths).items():
        if not (os.access(p, os.X_OK) or shutil.which(p)):
            ap.error(f"{what}: {p} is not an executable")

    runs: list[tuple[Scenario, list[Result]]] = []
    with tempfile.TemporaryDirectory(prefix="vllm-router-quality-") as tmp:
        workdir = (args.keep or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        DISPLAY[:] = [
            (str(workdir), "$WORKDIR"),
            (str(Path(paths.peer).resolve().parent.parent), "$BENCH_VENV"),
            (str(root) + "/", ""),
        ]
        for sc in scenarios(args):
            fleet = Fleet(sc.fleet, paths.sim, workdir)
            results: list[Result] = []
            try:
                for router, policies in (("ours", sc.ours), ("peer", sc.peer)):
                    for policy in policies:
                        log(f"{sc.name}: {router}/{policy}")
                        r = measure(router, policy, sc, fleet, paths, workdir, args)
                        results.append(r)
                        if r.failure:
                            log(f"  FAILED: {r.failure}")
                        if r.figures:
                            f, t = r.figures, r.figures.get("ttft_ms") or {}
                            hit = f.get("cache_hit_rate")
                            log(f"  {f['requests']} requests, TTFT mean {fmt(t.get('mean'))} ms "
                                f"p99 {fmt(t.get('p99'))} ms, cache hit "
                                f"{'n/a' if hit is None else f'{hit:.1%}'}, errors {f['errors']}, "
                                f"per worker {'/'.join(map(str, r.per_worker))}")
            finally:
                fleet.stop()
            runs.append((sc, results))

    text = report(runs, paths, sys.argv[1:])
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    failed_to_start = [r for _, rs in runs for r in rs if r.figures is None]
    return 1 if failed_to_start else 0


if __name__ == "__main__":
    sys.exit(main())
