"""The router's metrics as Prometheus sees them: `promtool check metrics` on the live endpoint,
and a real Prometheus server scraping the router (`up == 1`, a time-to-first-token quantile).

Both tools come from Debian's `prometheus` package, which `run.sh` installs when missing.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import openai
import pytest

from harness import Proc, free_port
from harness import binary as _binary

MODEL = "sim-model"
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "vllm-router.json"
SCRAPE_INTERVAL_S = 1
WAIT_S = 45.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found; tests/openai/run.sh installs Debian's prometheus package",
                    pytrace=False)
    return path


@pytest.fixture(scope="module")
def fleet():
    """Two simulated workers with a visible time to first token, and a router in front of them
    whose metrics listen on a port of their own."""
    sims = Proc.start("vllm-sim", [
        _binary("VLLM_SIM_BIN"), "--port", "0", "--count", "2", "--ttft-ms", "30", "--itl-ms", "2",
    ])
    procs = [sims]
    try:
        workers = sims.wait_for_urls(2)
        metrics_port = free_port()
        router = Proc.start("vllm-router", [
            _binary("VLLM_ROUTER_BIN"),
            "--host", "127.0.0.1", "--port", "0",
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
            "--load-scrape-interval-ms", "200",
            "--log-level", "warn",
            # vllm-project/router's series names too: promtool checks both sets together.
            "--peer-metrics",
            "--worker-urls", *workers,
        ])
        procs.append(router)
        (url,) = router.wait_for_urls(1)
        yield url, metrics_port
    finally:
        for proc in reversed(procs):
            proc.stop()


def _traffic(url: str, n: int = 6) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    for i in range(n):
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"hello {i}"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        for _ in stream:
            pass
        client.completions.create(model=MODEL, prompt=f"plain {i}", max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nobody-serves-this", prompt="x", max_tokens=1)


def _get(url: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers.get("Content-Type", ""), response.read().decode()


def test_promtool_check_metrics_passes_on_the_live_endpoint(fleet):
    url, metrics_port = fleet
    _traffic(url)
    content_type, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    for family in (
        "vllm_router_requests_total",
        "vllm_router_time_to_first_token_seconds_bucket",
        "vllm_router_inter_token_latency_seconds_bucket",
        "vllm_router_e2e_request_latency_seconds_bucket",
        "vllm_router_worker_in_flight",
        "vllm_router_worker_kv_cache_usage_ratio",
        "vllm_router_routing_decisions_total",
        # vllm-project/router's names (--peer-metrics).
        "vllm_router_active_workers 2",
        "vllm_router_worker_health{",
        "vllm_router_cb_state{",
        "vllm_router_processed_requests_total{",
        "vllm_router_generate_duration_seconds_bucket",
    ):
        assert family in text, f"{family} missing from\n{text}"
    # Every forwarded request counted per worker, theirs as ours.
    processed = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("vllm_router_processed_requests_total{"))
    ours = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm_router_worker_requests_total{"))
    assert processed == ours > 0, (processed, ours)
    checked = subprocess.run(
        [_tool("promtool"), "check", "metrics"],
        input=text, capture_output=True, text=True, timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stdout + checked.stderr


def _query(prometheus: str, expr: str) -> list[dict]:
    query = urllib.parse.urlencode({"query": expr})
    _, body = _get(f"{prometheus}/api/v1/query?{query}")
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def _check_dashboard(prometheus: str) -> None:
    """Every query of the Grafana dashboard is valid PromQL that Prometheus evaluates, with
    Grafana's variables given the values "all"; those over traffic this test sent answer."""
    dashboard = json.loads(DASHBOARD.read_text())
    answered = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"]
                    .replace("$__rate_interval", "30s")
                    .replace("$model", ".*")
                    .replace("$worker", ".*"))
            if _query(prometheus, expr):
                answered += 1
    # Retries, timeouts, P/D and reloads did not happen here; traffic, latency and worker
    # panels must show data.
    assert answered >= 15, answered


def test_a_real_prometheus_scrapes_the_router(fleet):
    url, metrics_port = fleet
    web_port = free_port()
    with tempfile.TemporaryDirectory(prefix="prometheus-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
            f"  evaluation_interval: {SCRAPE_INTERVAL_S}s\n"
            "scrape_configs:\n"
            "  - job_name: vllm-router\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{metrics_port}']\n"
        )
        server = subprocess.Popen(
            [
                _tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={Path(tmp) / 'data'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        prometheus = f"http://127.0.0.1:{web_port}"
        try:
            deadline = time.monotonic() + WAIT_S
            up = ttft = None
            while time.monotonic() < deadline:
                if server.poll() is not None:
                    pytest.fail(f"prometheus exited with {server.returncode}: {server.stderr.read()}")
                # Traffic between scrapes, so the rate over the window is not zero.
                _traffic(url, n=2)
                try:
                    up = _query(prometheus, 'up{job="vllm-router"}')
                    ttft = _query(
                        prometheus,
                        "histogram_quantile(0.5, sum by (le) "
                        "(rate(vllm_router_time_to_first_token_seconds_bucket[30s])))",
                    )
                except OSError:
                    time.sleep(0.5)
                    continue
                if (up and up[0]["value"][1] == "1" and ttft
                        and not math.isnan(float(ttft[0]["value"][1]))):
                    break
                time.sleep(SCRAPE_INTERVAL_S)
            assert up and up[0]["value"][1] == "1", f"up: {up}"
            assert ttft, "no time-to-first-token quantile"
            p50 = float(ttft[0]["value"][1])
            # The workers wait 30 ms before their first token; the median is at least that.
            assert 0.025 <= p50 < 5.0, p50
            requests = _query(prometheus, 'sum(vllm_router_requests_total{status_class="2xx"})')
            assert requests and float(requests[0]["value"][1]) > 0, requests
            _check_dashboard(prometheus)
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
