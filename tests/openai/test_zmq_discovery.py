"""End-to-end check of P2P NCCL service discovery against a real libzmq peer.

A prefill and a decode `vllm-sim` register with the router the way vLLM instances do: each
connects a pyzmq DEALER to `--vllm-discovery-address` and keeps sending one MessagePack map
`{"type", "http_address", "zmq_address"}`. The router must route through them with a P2P
request id, drop them once they fall silent, and take them back when they register again.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from dataclasses import dataclass

import msgpack
import openai
import pytest
import zmq

from harness import Proc, binary, free_port

MODEL = "sim-model"
EXPIRY_S = 2
HEARTBEAT_S = 0.5
DEADLINE_S = 20.0
PREFILL_ZMQ = "127.0.0.1:21001"
DECODE_ZMQ = "127.0.0.1:22001"
P2P_ID = re.compile(
    rf"^___prefill_addr_{re.escape(PREFILL_ZMQ)}___decode_addr_{re.escape(DECODE_ZMQ)}_[0-9a-f]{{32}}$"
)


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def _eventually(what: str, check, timeout: float = DEADLINE_S):
    """Poll `check` until it returns something truthy; fail naming `what` past the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")


class Heartbeats:
    """vLLM's side of discovery: one DEALER per instance, one map each every HEARTBEAT_S."""

    def __init__(self, endpoint: str, instances: list[dict[str, str]]) -> None:
        self._endpoint = endpoint
        self._instances = instances
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        ctx = zmq.Context.instance()
        sockets = []
        try:
            for _ in self._instances:
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(self._endpoint)
                sockets.append(sock)
            while not self._stop.is_set():
                for sock, instance in zip(sockets, self._instances):
                    sock.send(msgpack.dumps(instance))
                self._stop.wait(HEARTBEAT_S)
        finally:
            for sock in sockets:
                sock.close()


@dataclass(frozen=True)
class Setup:
    router_url: str
    prefill_url: str
    decode_url: str
    heartbeats: Heartbeats


def _host_port(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


@pytest.fixture(scope="module")
def setup():
    procs: list[Proc] = []
    heartbeats: Heartbeats | None = None
    try:
        sims = {}
        for role in ("prefill", "decode"):
            sim = Proc.start(
                f"vllm-sim-{role}",
                [binary("VLLM_SIM_BIN"), "--port", "0", "--role", role, "--itl-ms", "1",
                 "--log-level", "warn"],
            )
            procs.append(sim)
            (sims[role],) = sim.wait_for_urls(1)
        discovery = f"127.0.0.1:{free_port()}"
        router = Proc.start(
            "vllm-router",
            [
                binary("VLLM_ROUTER_BIN"),
                "--host", "127.0.0.1",
                "--port", "0",
                "--prometheus-port", "0",
                "--log-level", "warn",
                "--vllm-pd-disaggregation",
                "--vllm-discovery-address", discovery,
                "--vllm-discovery-expiry-secs", str(EXPIRY_S),
            ],
        )
        procs.append(router)
        (router_url,) = router.wait_for_urls(1)
        heartbeats = Heartbeats(
            f"tcp://{discovery}",
            [
                {"type": "P", "http_address": _host_port(sims["prefill"]),
                 "zmq_address": PREFILL_ZMQ},
                {"type": "D", "http_address": _host_port(sims["decode"]),
                 "zmq_address": DECODE_ZMQ, "extra": "ignored"},
            ],
        )
        yield Setup(router_url, sims["prefill"], sims["decode"], heartbeats)
    finally:
        if heartbeats is not None:
            heartbeats.stop()
        for proc in reversed(procs):
            proc.stop()


def _workers(router_url: str) -> dict[str, bool]:
    """The router's workers, URL to healthy, from its `GET /`."""
    return {w["url"]: w["healthy"] for w in _get_json(router_url + "/")["workers"]}


def _wait_registered(s: Setup) -> None:
    want = {s.prefill_url: True, s.decode_url: True}
    _eventually("both instances registered and healthy", lambda: _workers(s.router_url) == want)


def _records(sim_url: str, request_id: str) -> list[dict]:
    return [r for r in _get_json(sim_url + "/sim/records") if r["request_id"] == request_id]


def _generated_tokens(sim_url: str) -> float:
    text = _get_text(sim_url + "/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:generation_tokens_total")
    )


def _chat_through_pair(s: Setup, client: openai.OpenAI) -> str:
    """One streamed chat over the registered pair; the P2P request id both legs carried."""
    before = _generated_tokens(s.prefill_url)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text

    decode_legs = [r for r in _get_json(s.decode_url + "/sim/records")
                   if r["path"] == "/v1/chat/completions" and P2P_ID.match(r["request_id"] or "")]
    assert decode_legs, "no decode leg carried a P2P request id"
    request_id = decode_legs[-1]["request_id"]
    assert decode_legs[-1]["stream"] is True

    (prefill_leg,) = _records(s.prefill_url, request_id)
    assert prefill_leg["path"] == "/v1/chat/completions"
    assert prefill_leg["stream"] is False
    assert prefill_leg["status"] == 200
    # The prefill leg asked for one token: that is all the prefill worker generated.
    assert _generated_tokens(s.prefill_url) - before == 1
    return request_id


def test_registration_expiry_and_return(setup: Setup) -> None:
    s = setup
    client = openai.OpenAI(base_url=s.router_url + "/v1", api_key="none", max_retries=0,
                           timeout=30.0)
    assert _workers(s.router_url) == {}

    s.heartbeats.start()
    _wait_registered(s)
    first = _chat_through_pair(s, client)

    s.heartbeats.stop()
    silent_since = time.monotonic()
    _eventually("the silent instances to leave", lambda: _workers(s.router_url) == {})
    assert time.monotonic() - silent_since >= EXPIRY_S - HEARTBEAT_S
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Anyone?"}], max_tokens=4
        )
    assert caught.value.status_code == 503
    error = caught.value.response.json()["error"]
    assert error["type"] == "ServiceUnavailableError"
    assert error["code"] == 503
    assert error["message"]
    assert "param" in error

    s.heartbeats.start()
    _wait_registered(s)
    second = _chat_through_pair(s, client)
    assert second != first
