"""What a wheel installed into a fresh virtualenv gives its users, checked by behaviour.

Run by tests/pip/run.sh with this virtualenv's interpreter; VLLM_SIM_BIN names a simulated
vLLM worker binary. Exits non-zero on the first failure.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

BIN = os.path.dirname(sys.executable)
ROUTER = os.path.join(BIN, "vllm-router")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body=None, timeout: float = 10.0):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(base: str, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if http(f"{base}/readiness", timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} never became ready")


def chat(base: str, model: str = "sim-model") -> dict:
    status, body = http(
        f"{base}/v1/chat/completions",
        {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert status == 200, (status, body)
    return json.loads(body)


def check_commands() -> None:
    assert os.access(ROUTER, os.X_OK), f"{ROUTER} was not installed"
    import vllm_router

    version = subprocess.run([ROUTER, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("vllm-router "), version.stdout
    assert vllm_router.__version__ in version.stdout, (vllm_router.__version__, version.stdout)
    helped = subprocess.run(
        [sys.executable, "-m", "vllm_router.launch_router", "--help"],
        capture_output=True, text=True, check=True,
    )
    assert "--worker-urls" in helped.stdout and "--policy" in helped.stdout, helped.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "vllm_router.launch_router", "--no-such-flag"],
        capture_output=True, text=True,
    )
    assert refused.returncode == 2 and "--no-such-flag" in refused.stderr, refused


def check_router_api() -> None:
    from vllm_router import Router

    sim_port = free_port()
    sim = subprocess.Popen([os.environ["VLLM_SIM_BIN"], "--port", str(sim_port)])
    try:
        port = free_port()
        router = Router(
            worker_urls=[f"http://127.0.0.1:{sim_port}"],
            policy="round_robin",
            host="127.0.0.1",
            port=port,
            prometheus_port=free_port(),
            retry_max_retries=2,
            cb_window_duration_secs=60,
            disable_circuit_breaker=False,
            log_level="warn",
        )
        assert router.start(wait=False) is None
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        answer = chat(base)
        assert answer["object"] == "chat.completion", answer
        router.stop()
        assert router.process.returncode == 0, router.process.returncode
        # A keyword the binary has no flag for: refused with the binary's message.
        refused = Router(worker_urls=["http://127.0.0.1:1"], wasm_middleware="/x.wasm")
        assert refused.start() == 2
    finally:
        sim.terminate()
        sim.wait()


def check_demo() -> None:
    port = free_port()
    demo = subprocess.Popen(
        [ROUTER, "demo", "--port", str(port), "--traffic-per-sec", "0", "--log-level", "warn"],
        stdout=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        status, body = http(f"{base}/v1/models")
        assert status == 200, (status, body)
        models = [m["id"] for m in json.loads(body)["data"]]
        assert models, body
        chat(base, models[0])
    finally:
        demo.terminate()
        assert demo.wait(40) == 0


def main() -> None:
    check_commands()
    check_router_api()
    check_demo()
    print("pip: wheel, launch_router, Router(...).start() and demo all work")


if __name__ == "__main__":
    main()
