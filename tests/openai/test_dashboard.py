"""The `/dashboard` page in headless Chromium, driven over the DevTools protocol: after its
script ran, the page shows every worker and live figures under traffic, groups prefill and
decode workers, says when the router went away and recovers when it is back, and behind
`--api-keys` asks for a key before it shows the fleet.

Chromium comes from Debian's `chromium` package, which `run.sh` installs when missing. The
protocol is spoken over `--remote-debugging-pipe` (JSON messages ending in a NUL byte on file
descriptors 3 and 4), so no client library is needed.

Set `VLLM_ROUTER_DASHBOARD_PNG=PATH` to keep the screenshot taken under load (the one in
`docs/dashboard.png` comes from here); it is checked either way.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import Proc, free_port
from harness import binary as _binary

MODEL = "sim-model"
KEY = "dashboard-test-key"
WIDTH, HEIGHT = 1440, 900
WAIT_S = 30.0

# Runs before the page's own script: records every Content-Security-Policy violation.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""

# What the page shows, as the tests read it: the summary, the connection, the banner, the
# key form and one entry per worker row.
READ_PAGE = """(() => {
  const text = (id) => document.getElementById(id).textContent;
  const shown = (id) => !document.getElementById(id).hidden;
  const rows = Array.from(document.querySelectorAll("#workers tr[data-url]")).map((tr) => {
    const cells = {};
    tr.querySelectorAll("td[data-col]").forEach((td) => { cells[td.dataset.col] = td.textContent.trim(); });
    return { url: tr.dataset.url, cells };
  });
  return {
    connection: text("conntext"), banner: shown("banner") ? text("banner") : null,
    keyform: shown("keyform"), keynote: shown("keynote") ? text("keynote") : null,
    workers: text("c-workers"), rps: text("c-rps"), p50: text("c-p50"), rows,
    violations: window.__violations || [], marked: Boolean(window.__marked),
  };
})()"""


def _chromium() -> str:
    for name in ("chromium", "chromium-headless-shell", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium not found; tests/openai/run.sh installs Debian's chromium package",
                pytrace=False)


class Browser:
    """Headless Chromium with one page, spoken to over the DevTools pipe."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="dashboard-chromium-")
        commands_r, commands_w = os.pipe()
        replies_r, replies_w = os.pipe()
        # Above 4, so that placing them at 3 and 4 in the child never overwrites one another.
        child_in = fcntl.fcntl(commands_r, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(replies_w, fcntl.F_DUPFD, 10)
        os.close(commands_r)
        os.close(replies_w)

        def pipes_at_3_and_4() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.popen = subprocess.Popen(
            [
                _chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--no-default-browser-check", f"--user-data-dir={self.profile}",
                f"--window-size={WIDTH},{HEIGHT}", "--remote-debugging-pipe", "about:blank",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=pipes_at_3_and_4,
        )
        os.close(child_in)
        os.close(child_out)
        self.commands = commands_w
        self.replies: "queue.Queue[dict | None]" = queue.Queue()
        self.next_id = 0
        threading.Thread(target=self._read, args=(replies_r,), daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        self.page("Page.enable")
        self.page("Emulation.setDeviceMetricsOverride",
                  {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
        self.page("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_VIOLATIONS})

    def _read(self, fd: int) -> None:
        buffered = b""
        with os.fdopen(fd, "rb", buffering=0) as replies:
            while chunk := replies.read(65536):
                buffered += chunk
                *messages, buffered = buffered.split(b"\0")
                for message in messages:
                    self.replies.put(json.loads(message))
        self.replies.put(None)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + WAIT_S
        while True:
            reply = self.replies.get(timeout=max(0.1, deadline - time.monotonic()))
            if reply is None:
                raise RuntimeError(f"chromium closed its pipe (exit {self.popen.poll()})")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def page(self, method: str, params: dict | None = None) -> dict:
        return self.call(method, params, self.session)

    def goto(self, url: str) -> None:
        self.page("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def read(self) -> dict:
        return self.evaluate(READ_PAGE) or {}

    def until(self, what: str, check) -> dict:
        """The page as read once `check` holds of it, within WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        seen: dict = {}
        while time.monotonic() < deadline:
            try:
                seen = self.read()
            except RuntimeError:
                seen = {}  # between two documents while navigating
            if seen and check(seen):
                return seen
            time.sleep(0.2)
        raise AssertionError(f"not within {WAIT_S:.0f}s: {what}; the page showed {seen!r}")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.page("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError, queue.Empty):
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        os.close(self.commands)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser():
    b = Browser()
    try:
        yield b
    finally:
        b.close()


def _start_router(workers: list[str], port: int = 0, keys: list[str] | None = None,
                  pd: tuple[list[str], list[str]] | None = None) -> Proc:
    argv = [
        _binary("VLLM_ROUTER_BIN"), "--host", "127.0.0.1", "--port", str(port),
        "--load-scrape-interval-ms", "200", "--log-level", "warn",
    ]
    if keys:
        argv += ["--api-keys", *keys]
    if pd:
        argv.append("--vllm-pd-disaggregation")
        for url in pd[0]:
            argv += ["--prefill", url]
        for url in pd[1]:
            argv += ["--decode", url]
        return Proc.start("vllm-router", argv)
    return Proc.start("vllm-router", argv + ["--worker-urls", *workers])


@pytest.fixture(scope="module")
def sims():
    sims = Proc.start("vllm-sim", [
        _binary("VLLM_SIM_BIN"), "--port", "0", "--count", "3", "--ttft-ms", "30", "--itl-ms", "2",
    ])
    try:
        yield sims.wait_for_urls(3)
    finally:
        sims.stop()


class Traffic:
    """A few clients sending chat completions in a loop (half streamed, with usage)."""

    def __init__(self, url: str, key: str | None = None, clients: int = 6) -> None:
        self.url, self.key, self.stop_flag = url, key, threading.Event()
        self.errors: list[str] = []
        self.sent = 0
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                        for i in range(clients)]
        for t in self.threads:
            t.start()

    def _loop(self, n: int) -> None:
        # Each client its own conversation, as real users are: a cache-aware router keeps an
        # identical prompt on the workers that hold it, and the page must show every worker.
        prompt = f"Client {n}: " + "Tell me how a load balancer spreads requests over a fleet. " * 20
        while not self.stop_flag.is_set():
            body = json.dumps({
                "model": MODEL, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 16, "stream": n % 2 == 0, "stream_options": {"include_usage": True},
            }).encode()
            headers = {"Content-Type": "application/json"}
            if self.key:
                headers["Authorization"] = f"Bearer {self.key}"
            request = urllib.request.Request(f"{self.url}/v1/chat/completions", body, headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
                self.sent += 1
            except OSError as e:
                if not self.stop_flag.is_set():
                    self.errors.append(repr(e))
                    time.sleep(0.2)
            n += 1

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=15)


def _number(text: str) -> float:
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return 0.0


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", png[16:24])


def _all_live(workers: list[str]):
    def check(page: dict) -> bool:
        rows = {r["url"]: r["cells"] for r in page["rows"]}
        return (
            page["connection"] == "live"
            and set(workers) <= set(rows)
            and all(_number(rows[w]["rps"]) > 0 and rows[w]["p50"].endswith("ms") for w in workers)
            and _number(page["rps"]) > 0
        )
    return check


def test_the_page_shows_every_worker_with_live_figures_under_load(sims, browser, tmp_path):
    router = _start_router(sims)
    traffic = None
    try:
        (url,) = router.wait_for_urls(1)
        traffic = Traffic(url)
        browser.goto(f"{url}/dashboard")
        page = browser.until("every worker with req/s above 0", _all_live(sims))
        assert page["workers"] == "3 / 3", page
        assert page["banner"] is None and not page["keyform"], page
        for row in page["rows"]:
            assert row["cells"]["health"] == "healthy", row
            assert row["cells"]["breaker"] == "closed", row
            assert row["cells"]["models"] == MODEL, row
            assert row["cells"]["label"] == row["url"], row
        # Figures refresh in place: the summary's sampling time moves on with the same rows.
        before = browser.evaluate("document.getElementById('sampled').textContent")
        browser.until("a newer sample", lambda p: browser.evaluate(
            "document.getElementById('sampled').textContent") != before and len(p["rows"]) == 3)
        # Both charts and every sparkline were drawn.
        drawn = browser.evaluate("""[
            document.querySelectorAll('#chart-rps polyline').length,
            document.querySelectorAll('#chart-ttft polyline').length,
            document.querySelectorAll('#workers td.spark polyline').length]""")
        assert drawn == [1, 2, 3], drawn
        time.sleep(3)  # a few more seconds of history for the screenshot
        png = browser.screenshot()
        assert _png_size(png) == (WIDTH, HEIGHT)
        (tmp_path / "dashboard.png").write_bytes(png)
        if keep := os.environ.get("VLLM_ROUTER_DASHBOARD_PNG"):
            Path(keep).write_bytes(png)
        assert browser.read()["violations"] == []
        assert traffic.errors == [], traffic.errors[:3]
    finally:
        if traffic:
            traffic.stop()
        router.stop()


def test_the_page_keeps_the_last_view_while_the_router_is_away_and_recovers(sims, browser):
    port = free_port()
    router = _start_router(sims, port)
    try:
        (url,) = router.wait_for_urls(1)
        browser.goto(f"{url}/dashboard")
        browser.until("three workers", lambda p: p["connection"] == "live" and len(p["rows"]) == 3)
        router.stop()
        away = browser.until("the router shown unreachable",
                             lambda p: p["connection"] == "unreachable" and p["banner"])
        assert "unreachable" in away["banner"] and "last view" in away["banner"], away
        assert sorted(r["url"] for r in away["rows"]) == sorted(sims), away
        assert away["workers"] == "3 / 3", away
        router = _start_router(sims, port)
        router.wait_for_urls(1)
        back = browser.until("live again", lambda p: p["connection"] == "live" and p["banner"] is None)
        assert sorted(r["url"] for r in back["rows"]) == sorted(sims), back
    finally:
        router.stop()


def test_behind_api_keys_the_page_asks_for_a_key_then_shows_the_fleet(sims, browser):
    router = _start_router(sims, keys=[KEY])
    traffic = None
    try:
        (url,) = router.wait_for_urls(1)
        # The page loads without a key; the fleet does not.
        with urllib.request.urlopen(f"{url}/dashboard", timeout=10) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/fleet", timeout=10)
        assert refused.value.code == 401

        traffic = Traffic(url, key=KEY)
        browser.goto(f"{url}/dashboard")
        asked = browser.until("the key form", lambda p: p["keyform"])
        assert asked["rows"] == [] and asked["connection"] == "needs a key", asked
        assert asked["keynote"] is None, asked

        submit = """(() => {{ document.getElementById('key').value = {key};
            document.querySelector('#keyform button').click(); }})()"""
        browser.evaluate(submit.format(key=json.dumps("not-the-key")))
        wrong = browser.until("the key refused", lambda p: p["keyform"] and p["keynote"])
        assert "refused" in wrong["keynote"] and wrong["rows"] == [], wrong

        browser.evaluate(submit.format(key=json.dumps(KEY)))
        page = browser.until("every worker with req/s above 0", _all_live(sims))
        assert not page["keyform"], page
        assert browser.evaluate("sessionStorage.getItem('vllm-router-dashboard-key')") == KEY
        assert KEY not in browser.evaluate("location.href")

        # A reload keeps the key for the session: no form, straight to the fleet.
        browser.evaluate("window.__marked = true")
        browser.page("Page.reload")
        live = _all_live(sims)
        page = browser.until("the fleet after a reload", lambda p: not p["marked"] and live(p))
        assert not page["keyform"], page
        assert page["violations"] == [], page
        assert traffic.errors == [], traffic.errors[:3]
    finally:
        if traffic:
            traffic.stop()
        router.stop()


def test_prefill_and_decode_workers_are_grouped_by_role(sims, browser):
    prefill, decode = sims[:1], sims[1:]
    router = _start_router([], pd=(prefill, decode))
    try:
        (url,) = router.wait_for_urls(1)
        browser.goto(f"{url}/dashboard")
        browser.until("three workers", lambda p: p["connection"] == "live" and len(p["rows"]) == 3)
        table = browser.evaluate("""Array.from(document.querySelectorAll('#workers tr')).map(
            (tr) => tr.classList.contains('group') ? 'group ' + tr.textContent
                                                  : tr.dataset.url + ' ' + tr.querySelector('[data-col=role]').textContent)""")
        assert table == [
            "group prefill · 1/1 healthy", f"{prefill[0]} prefill",
            "group decode · 2/2 healthy", f"{decode[0]} decode", f"{decode[1]} decode",
        ], table
        assert "P/D" in browser.evaluate("document.getElementById('policy').textContent")
    finally:
        router.stop()
