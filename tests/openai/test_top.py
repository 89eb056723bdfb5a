"""`vllm-router top` in a real terminal: tmux runs it in a detached session of fixed size, the
test sends keys and reads the screen with `tmux capture-pane -p`. Three simulated workers and a
router behind a client key; the router is killed and restarted on the same port.

tmux comes from Debian's `tmux` package, which `run.sh` installs when missing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import openai
import pytest

from harness import Proc, free_port
from harness import binary as _binary

MODEL = "sim-model"
KEY = "top-test-key"
WIDTH, HEIGHT = 160, 40
WAIT_S = 30.0
FLEET_RATE = re.compile(r"\| ([0-9]+\.[0-9]) req/s \|")


def _tmux_binary() -> str:
    path = shutil.which("tmux")
    if path is None:
        pytest.fail("tmux not found; tests/openai/run.sh installs Debian's tmux package",
                    pytrace=False)
    return path


class Tmux:
    """One detached session on a server of its own (its own socket), so nothing else is touched."""

    def __init__(self, command: list[str]) -> None:
        self.tmux = _tmux_binary()
        self.socket = f"vllm-router-top-test-{os.getpid()}"
        self.session = "top"
        # The shell writes the program's exit status here when it exits (tmux's own
        # pane_dead_status is not always filled in).
        self.status_dir = tempfile.TemporaryDirectory(prefix="vllm-router-top-")
        self.status_file = Path(self.status_dir.name) / "status"
        script = f"{shlex.join(command)}; echo $? > {shlex.quote(str(self.status_file))}"
        self.run(
            "new-session", "-d", "-s", self.session, "-x", str(WIDTH), "-y", str(HEIGHT),
            shlex.join(["sh", "-c", script]),
        )

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-u", "-f", "/dev/null", "-L", self.socket, *args],
            capture_output=True, text=True, timeout=10,
        )
        assert done.returncode == 0, f"tmux {args}: {done.stderr}"
        return done.stdout

    def capture(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session)

    def send(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)

    def exit_status(self, timeout: float = 10.0) -> str | None:
        """The exit status of the program in the pane, waiting up to `timeout` for it to exit;
        None if it still runs."""
        deadline = time.monotonic() + timeout
        while True:
            if self.status_file.exists():
                status = self.status_file.read_text().strip()
                if status:
                    return status
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def wait_for(self, check, what: str, timeout: float = WAIT_S) -> str:
        """The first capture that `check` accepts."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.capture()
            if check(screen):
                return screen
            time.sleep(0.25)
        pytest.fail(f"{what} within {timeout:.0f}s; the screen:\n{screen}", pytrace=False)

    def kill(self) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=10)
        self.status_dir.cleanup()


def _router(port: int, workers: list[str]) -> Proc:
    return Proc.start("vllm-router", [
        _binary("VLLM_ROUTER_BIN"),
        "--host", "127.0.0.1", "--port", str(port),
        "--api-keys", KEY,
        "--policy", "round_robin",
        "--load-scrape-interval-ms", "200",
        "--log-level", "warn",
        "--worker-urls", *workers,
    ])


class Traffic:
    """Streamed chat requests from a few threads until stopped."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.stop_flag = threading.Event()
        self.sent = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(url, i), daemon=True)
                        for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, url: str, n: int) -> None:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        i = 0
        while not self.stop_flag.is_set():
            i += 1
            try:
                stream = client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"thread {n} request {i}"}],
                    max_tokens=8,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                for _ in stream:
                    pass
                self.sent += 1
            except openai.OpenAIError as e:
                self.errors.append(str(e))
            # Uneven pacing, so the rate moves from one second to the next.
            time.sleep(0.01 * ((i * (n + 1)) % 7))

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=30)


def _fleet_rate(screen: str) -> float | None:
    match = FLEET_RATE.search(screen)
    return float(match.group(1)) if match else None


def test_top_shows_the_fleet_live_and_survives_a_router_restart():
    sims = Proc.start("vllm-sim", [
        _binary("VLLM_SIM_BIN"), "--port", "0", "--count", "3", "--ttft-ms", "20", "--itl-ms", "2",
    ])
    procs = [sims]
    tmux = None
    traffic = None
    try:
        workers = sims.wait_for_urls(3)
        router = _router(0, workers)
        procs.append(router)
        (url,) = router.wait_for_urls(1)
        port = int(url.rsplit(":", 1)[1])

        tmux = Tmux(["env", f"VLLM_ROUTER_TOP_API_KEY={KEY}",
                     _binary("VLLM_ROUTER_BIN"), "top", "--url", url])
        screen = tmux.wait_for(
            lambda s: all(w in s for w in workers) and " live " in s,
            "a live row for every worker",
        )
        assert "workers 3/3 healthy" in screen, screen
        assert "-- regular (3)" in screen, screen
        assert "STALE" not in screen, screen
        for w in workers:
            row = next(line for line in screen.splitlines() if w in line)
            assert "healthy" in row and "closed" in row and MODEL in row, row

        # Under load, the fleet's req/s goes above zero and moves between captures.
        traffic = Traffic(url)
        seen: list[float] = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            rate = _fleet_rate(tmux.capture())
            if rate is not None:
                seen.append(rate)
            if len({r for r in seen if r > 0}) >= 2:
                break
            time.sleep(1.1)
        assert len({r for r in seen if r > 0}) >= 2, f"fleet req/s seen under load: {seen}"
        # Every worker got some of it, and its row says so.
        screen = tmux.wait_for(
            lambda s: all(
                re.search(re.escape(w) + r".*\b(?!0\.0\b)[0-9]+\.[0-9] +[0-9.]+ ms", s)
                for w in workers
            ),
            "a req/s above zero and a TTFT on every worker's row",
        )
        traffic.stop()
        assert traffic.sent > 0 and not traffic.errors, traffic.errors[:3]
        traffic = None

        # The router goes away: the last view stays, marked stale, with the error.
        router.stop()
        screen = tmux.wait_for(
            lambda s: re.search(r"STALE: last update [0-9]+s ago, retrying every second \| "
                                r"router unreachable: .*refused", s),
            "a stale mark with the error",
        )
        assert all(w in screen for w in workers), screen

        # A router on the same port: the view recovers.
        router = _router(port, workers)
        procs.append(router)
        router.wait_for_urls(1)
        screen = tmux.wait_for(
            lambda s: "STALE" not in s and " live " in s and "workers 3/3 healthy" in s,
            "recovery after the restart",
        )
        assert all(w in screen for w in workers), screen

        # The help overlay, then `q` quits with status 0.
        tmux.send("?")
        tmux.wait_for(lambda s: "reverse the sort" in s, "the help overlay")
        tmux.send("?")
        tmux.wait_for(lambda s: "reverse the sort" not in s, "the help overlay gone")
        assert tmux.exit_status(timeout=0) is None, "top exited before q"
        tmux.send("q")
        assert tmux.exit_status() == "0", tmux.capture()
    finally:
        if traffic is not None:
            traffic.stop()
        if tmux is not None:
            tmux.kill()
        for proc in reversed(procs):
            proc.stop()


def test_top_without_the_key_shows_the_refusal():
    sims = Proc.start("vllm-sim", [_binary("VLLM_SIM_BIN"), "--port", "0", "--count", "1"])
    procs = [sims]
    tmux = None
    try:
        workers = sims.wait_for_urls(1)
        router = _router(0, workers)
        procs.append(router)
        (url,) = router.wait_for_urls(1)
        tmux = Tmux(["env", "-u", "VLLM_ROUTER_TOP_API_KEY",
                     _binary("VLLM_ROUTER_BIN"), "top", "--url", url])
        tmux.wait_for(lambda s: "answered 401" in s, "the router's refusal on screen")
        tmux.send("C-c")
        assert tmux.exit_status() == "0", tmux.capture()
    finally:
        if tmux is not None:
            tmux.kill()
        for proc in reversed(procs):
            proc.stop()


def test_demo_top_opens_the_terminal_view_on_a_moving_fleet():
    tmux = Tmux([_binary("VLLM_ROUTER_BIN"), "demo", "--port", "0", "--workers", "3", "--top"])
    try:
        def moving(screen: str) -> bool:
            workers = set(re.findall(r"http://127\.0\.0\.1:\d+", screen))
            rate = _fleet_rate(screen)
            return len(workers) >= 3 and rate is not None and rate > 0
        # The demo's own clients make the fleet move without any traffic from here.
        tmux.wait_for(moving, "three demo workers and a fleet req/s above 0")
        tmux.send("q")
        assert tmux.exit_status() == "0", tmux.capture()
    finally:
        tmux.kill()


def test_run_console_shows_the_fleet_and_quitting_it_stops_the_router(tmp_path):
    """The TOML router's `run --console`: the live view in the router's own process; `q`
    ends both, with a clean exit."""
    sims = Proc.start("vllm-sim", [_binary("VLLM_SIM_BIN"), "--port", "0", "--count", "2"])
    tmux = None
    try:
        workers = sims.wait_for_urls(2)
        servers = ", ".join(f'{{ url = "{w}", max_concurrent_requests = 3 }}' for w in workers)
        (tmp_path / "servers.toml").write_text(
            f"[servers]\nservers = [ {servers} ]\n[config]\nhealth_check_interval = 10\n"
        )
        port = free_port()
        command = ["sh", "-c", f"cd {shlex.quote(str(tmp_path))} && exec "
                   + shlex.join([_binary("VLLM_ROUTER_BIN"), "run", "--port", str(port),
                                 "--prometheus-port", "0", "--console"])]
        tmux = Tmux(command)
        screen = tmux.wait_for(lambda s: all(w in s for w in workers) and " live " in s,
                               "the console's row for every worker")
        assert "workers 2/2 healthy" in screen, screen
        assert "least_load" in screen, screen
        # The router serves while its console is open.
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none",
                               max_retries=0)
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert answer.choices[0].message.content
        tmux.send("q")
        assert tmux.exit_status(timeout=40) == "0"
    finally:
        if tmux is not None:
            tmux.kill()
        sims.stop()
