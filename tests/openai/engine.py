"""A minimal vLLM-like engine on uvicorn and FastAPI, the stack vLLM's API server runs on.

It notices a client that left the way vLLM does, and only that way: from the connection, as
uvicorn reports it (`http.disconnect`). Non-streamed requests race the generation against
`request.receive()`, as vLLM's `with_cancellation` does; streamed ones end when the server can
no longer send. `GET /engine/log` lists what happened to each request.

    python engine.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

MODEL = "engine-model"
TOKEN_S = 0.05

app = FastAPI()
log: list[dict] = []


@app.get("/health")
async def health() -> dict:
    return {}


@app.get("/metrics")
async def metrics() -> str:
    return ""


@app.get("/v1/models")
async def models() -> dict:
    return {"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": 100000}]}


@app.get("/engine/log")
async def engine_log() -> list:
    return log


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


@app.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    entry = {"stream": bool(body.get("stream")), "started": time.time(), "ended": None, "how": None}
    log.append(entry)
    tokens = int(body.get("max_tokens") or 16)

    def end(how: str) -> None:
        entry["ended"], entry["how"] = time.time(), how

    if body.get("stream"):
        async def frames():
            try:
                for _ in range(tokens):
                    await asyncio.sleep(TOKEN_S)
                    delta = {"choices": [{"index": 0, "delta": {"content": "x"}}]}
                    yield f"data: {json.dumps(delta)}\n\n"
                yield "data: [DONE]\n\n"
                end("finished")
            except asyncio.CancelledError:
                end("aborted")
                raise

        return StreamingResponse(frames(), media_type="text/event-stream")

    generation = asyncio.ensure_future(asyncio.sleep(TOKEN_S * tokens))
    gone = asyncio.ensure_future(_disconnected(request))
    done, _ = await asyncio.wait([generation, gone], return_when=asyncio.FIRST_COMPLETED)
    if gone in done:
        generation.cancel()
        end("aborted")
        return JSONResponse({}, status_code=499)
    gone.cancel()
    end("finished")
    message = {"role": "assistant", "content": "x" * tokens}
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": tokens, "total_tokens": tokens + 4},
    }


if __name__ == "__main__":
    port = int(sys.argv[1])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    print(f"engine listening on http://127.0.0.1:{port}", flush=True)
    server.run()
