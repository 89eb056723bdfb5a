"""End-to-end check of the router with the official `openai` Python client.

Two simulated vLLM workers (`vllm-sim --count 2`) run behind one `vllm-router`; every test
talks to the router only, through `openai.OpenAI`. The binaries come from the environment:
`VLLM_ROUTER_BIN` and `VLLM_SIM_BIN` (see `run.sh`, which builds them and sets both).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import openai
import pytest

from harness import Proc, free_port
from harness import binary as _binary

MODEL = "sim-model"


def _start_router(worker_urls: list[str], *extra: str) -> tuple[Proc, str]:
    argv = [
        _binary("VLLM_ROUTER_BIN"),
        "--host", "127.0.0.1",
        "--port", "0",
        "--prometheus-port", "0",
        "--policy", "round_robin",
        "--log-level", "warn",
        "--worker-urls", *worker_urls,
        *extra,
    ]
    router = Proc.start("vllm-router", argv)
    try:
        (url,) = router.wait_for_urls(1)
    except BaseException:
        router.stop()
        raise
    return router, url


@dataclass(frozen=True)
class Fleet:
    router_url: str
    worker_urls: list[str]


@pytest.fixture(scope="module")
def fleet():
    procs: list[Proc] = []
    try:
        sim = Proc.start(
            "vllm-sim",
            [_binary("VLLM_SIM_BIN"), "--port", "0", "--count", "2", "--itl-ms", "2", "--log-level", "warn"],
        )
        procs.append(sim)
        workers = sim.wait_for_urls(2)
        router, router_url = _start_router(workers)
        procs.append(router)
        yield Fleet(router_url=router_url, worker_urls=workers)
    finally:
        for proc in reversed(procs):
            proc.stop()


@pytest.fixture(scope="module")
def client(fleet: Fleet) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.router_url + "/v1", api_key="none", timeout=30.0)


def _messages(text: str = "Say hello.") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=8)
    assert resp.model == MODEL
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("length", "stop")
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_streaming(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=_messages(), max_tokens=8, stream=True
    )
    parts: list[str] = []
    finish_reasons: list[str] = []
    chunks = 0
    for chunk in stream:  # ends at `data: [DONE]`; any error surfaces here as an exception
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert chunks >= 2
    assert "".join(parts)
    assert len(finish_reasons) == 1


def test_completions_non_streaming(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8)
    assert resp.object == "text_completion"
    assert len(resp.choices) == 1
    assert resp.choices[0].text
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens > 0


def test_completions_streaming(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=8, stream=True
    )
    text = ""
    finished = False
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.text
            finished = finished or bool(choice.finish_reason)
    assert text
    assert finished


def test_chat_stream_include_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=_messages(),
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 2
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert 0 < last.usage.completion_tokens <= 5
    # Only the final chunk carries usage.
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_stream_include_usage(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL,
        prompt="count:",
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 3


def test_embeddings(client: openai.OpenAI) -> None:
    resp = client.embeddings.create(model=MODEL, input=["hello", "world"], encoding_format="float")
    assert [d.index for d in resp.data] == [0, 1]
    for item in resp.data:
        assert len(item.embedding) > 0
        assert all(isinstance(x, float) for x in item.embedding)
    assert resp.data[0].embedding != resp.data[1].embedding
    assert resp.usage.prompt_tokens > 0


def test_embeddings_default_encoding(client: openai.OpenAI) -> None:
    # Without `encoding_format` the client asks for base64 and decodes it; either wire form
    # must come back as a list of floats.
    resp = client.embeddings.create(model=MODEL, input="hello")
    assert len(resp.data) == 1
    assert len(resp.data[0].embedding) > 0


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids.count(MODEL) == 1, ids


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=_messages(), max_tokens=4)
    err = caught.value
    assert err.status_code == 404
    assert MODEL in err.message, err.message


def test_worker_error_passes_through(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=_messages(),
            max_tokens=4,
            extra_headers={"X-Return-Error": "400"},
        )
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)


def test_worker_header_names_a_worker(client: openai.OpenAI, fleet: Fleet) -> None:
    seen = set()
    for _ in range(4):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=_messages(), max_tokens=2
        )
        worker = raw.headers.get("x-vllm-router-worker")
        assert worker is not None, dict(raw.headers)
        assert worker.rstrip("/") in fleet.worker_urls, (worker, fleet.worker_urls)
        seen.add(worker.rstrip("/"))
        assert raw.parse().choices[0].message.content
    # Round robin over four sequential requests reaches both workers.
    assert seen == set(fleet.worker_urls)


def test_no_healthy_worker_is_503() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    router, url = _start_router([dead], "--worker-startup-timeout-secs", "0")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=15.0)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=4)
        assert caught.value.status_code == 503
        assert isinstance(caught.value, openai.InternalServerError)
        assert time.monotonic() - started < 10.0
    finally:
        router.stop()


def test_api_keys_are_checked(fleet: Fleet) -> None:
    router, url = _start_router(fleet.worker_urls, "--api-keys", "py-key-1,py-key-2")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="py-key-2", max_retries=0, timeout=15.0)
        resp = client.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=4)
        assert resp.choices[0].message.content
        assert [m.id for m in client.models.list()] == [MODEL]

        wrong = openai.OpenAI(base_url=url + "/v1", api_key="not-a-key", max_retries=0, timeout=15.0)
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.chat.completions.create(model=MODEL, messages=_messages(), max_tokens=4)
        assert caught.value.status_code == 401
        assert "not-a-key" not in caught.value.message
    finally:
        router.stop()
