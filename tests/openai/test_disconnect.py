"""A client process killed mid-request: the work it asked for stops.

The client is a real process running the official `openai` client, killed with SIGKILL while
its request runs, streamed or not; the kernel closes its socket as it would for any crashed
client. The engines behind the router notice only from their sockets: `vllm-sim` (hyper), and
a vLLM-like engine on uvicorn and FastAPI, the stack vLLM's API server runs on (`engine.py`).
Under P/D, a client killed during the prefill or the decode stops that leg.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

import pytest

from harness import Proc, free_port
from harness import binary as _binary

HERE = os.path.dirname(os.path.abspath(__file__))
# Noticed within this of the kill (a loaded 2-core machine included); unnoticed, the
# generation would run on for tens of seconds.
NOTICED_WITHIN_S = 2.0

CLIENT = r"""
import sys, openai
url, model, stream = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120.0)
reply = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Tell me a very long story."}],
    max_tokens=400, stream=stream)
if stream:
    for _ in reply:
        pass
"""


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.load(reply)


def _start(name: str, argv: list[str], count: int = 1) -> tuple[Proc, list[str]]:
    proc = Proc.start(name, argv)
    try:
        return proc, proc.wait_for_urls(count)
    except BaseException:
        proc.stop()
        raise


def _sim(*extra: str) -> tuple[Proc, str]:
    proc, (url,) = _start(
        "vllm-sim",
        [_binary("VLLM_SIM_BIN"), "--port", "0", "--itl-ms", "50", "--log-level", "warn", *extra],
    )
    return proc, url


def _router(*args: str) -> tuple[Proc, str]:
    proc, (url,) = _start(
        "vllm-router",
        [
            _binary("VLLM_ROUTER_BIN"),
            "--host", "127.0.0.1", "--port", "0", "--prometheus-port", "0",
            "--log-level", "warn", *args,
        ],
    )
    return proc, url


def _wait(what: str, probe: Callable[[], object], within: float):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        seen = probe()
        if seen:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {within}s")


def _kill_mid_request(router_url: str, model: str, stream: bool, started: Callable[[], bool]) -> float:
    """Run the client, let its request reach the engine, kill it; the time of the kill."""
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, router_url, model, "1" if stream else "0"],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait("the request reached the engine", started, 20.0)
        time.sleep(0.5)
        assert client.poll() is None, "the client finished before it was killed"
        client.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        client.wait()
        return killed
    finally:
        if client.poll() is None:
            client.kill()


def _sim_records(url: str) -> list[dict]:
    return [r for r in _get_json(url + "/sim/records") if r["path"] == "/v1/chat/completions"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_killed_client_cancels_its_request_on_the_sim(stream: bool) -> None:
    sim, worker = _sim()
    try:
        router, url = _router("--worker-urls", worker)
        try:
            killed = _kill_mid_request(url, "sim-model", stream, lambda: _sim_records(worker))
            _wait(
                "the sim saw the request cancelled",
                lambda: any(r["cancelled"] for r in _sim_records(worker)),
                NOTICED_WITHIN_S,
            )
            assert time.monotonic() - killed < NOTICED_WITHIN_S + 0.5
        finally:
            router.stop()
    finally:
        sim.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_killed_client_aborts_its_request_on_a_uvicorn_engine(stream: bool) -> None:
    port = free_port()
    engine, (worker,) = _start("engine", [sys.executable, os.path.join(HERE, "engine.py"), str(port)])
    try:
        _wait("the engine answers", lambda: _try(lambda: _get_json(worker + "/v1/models")), 20.0)
        router, url = _router("--worker-urls", worker)
        try:
            log = lambda: _get_json(worker + "/engine/log")  # noqa: E731
            killed = _kill_mid_request(url, "engine-model", stream, log)
            (entry,) = _wait("the engine ended the request", lambda: [e for e in log() if e["ended"]], NOTICED_WITHIN_S)
            assert entry["how"] == "aborted", entry
            # The engine's clock and ours are the same machine's.
            assert entry["ended"] - (time.time() - (time.monotonic() - killed)) < NOTICED_WITHIN_S
        finally:
            router.stop()
    finally:
        engine.stop()


def _try(f: Callable[[], object]) -> object:
    try:
        return f()
    except OSError:
        return None


@pytest.mark.parametrize(
    ("leg", "stream"),
    [("prefill", False), ("decode", False), ("decode", True)],
    ids=["prefill", "decode-whole", "decode-streamed"],
)
def test_under_pd_a_killed_client_cancels_the_leg_it_was_in(leg: str, stream: bool) -> None:
    # A slow prefill (3 s to its first token) or a long decode.
    prefill, p_url = _sim("--role", "prefill", *(["--ttft-ms", "3000"] if leg == "prefill" else []))
    decode, d_url = _sim("--role", "decode")
    try:
        router, url = _router("--vllm-pd-disaggregation", "--prefill", p_url, "--decode", d_url)
        try:
            at = p_url if leg == "prefill" else d_url
            killed = _kill_mid_request(url, "sim-model", stream, lambda: _sim_records(at))
            _wait(
                f"the {leg} worker saw its request cancelled",
                lambda: any(r["cancelled"] for r in _sim_records(at)),
                NOTICED_WITHIN_S,
            )
            assert time.monotonic() - killed < NOTICED_WITHIN_S + 0.5
            if leg == "prefill":
                assert not _sim_records(d_url), "no decode after a prefill the client left"
        finally:
            router.stop()
    finally:
        decode.stop()
        prefill.stop()
