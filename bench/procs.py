"""Process and HTTP helpers shared by the benchmark drivers (standard library only)."""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import platform
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(lines: list[str], out: Path | None) -> None:
    """Print a report's lines, and write them to `out` when given."""
    report = "\n".join(lines) + "\n"
    print(report)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], log_path: Path, append: bool = False, **kw) -> subprocess.Popen:
    """Starts `argv` in a session of its own, so that it and anything it forks stop together."""
    out = open(log_path, "ab" if append else "wb")
    try:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, **kw,
        )
    finally:
        out.close()


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after a grace period."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""
    except (OSError, urllib.error.URLError):
        return 0, b""


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = READY_TIMEOUT_S) -> str | None:
    """None once `GET url` answers 200; otherwise why not."""
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        status, _ = http_get(url)
        if status == 200:
            return None
        time.sleep(0.1)
    return f"no 200 from {url} within {timeout:.0f}s (last status {status or 'no answer'})"

def machine_line() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{os.cpu_count()} cores"]
    if cpu:
        parts.append(cpu)
    parts.append(f"Linux {platform.release()}" if platform.system() == "Linux" else platform.platform())
    return ", ".join(parts)


def version_of(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (res.stdout + res.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def start_listening(argv: list[str], log_path: Path, count: int, append: bool = False,
                    timeout: float = 30.0) -> tuple[subprocess.Popen, list[str]]:
    """Starts a server that prints `... listening on http://HOST:PORT` per listener (vllm-sim,
    vllm-router) and returns it with the first `count` URLs. Its stdout is drained for the
    life of the process so that it never blocks on a full pipe; stderr goes to `log_path`."""
    with open(log_path, "ab" if append else "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                text=True, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    urls: list[str] = []
    deadline = time.monotonic() + timeout
    while len(urls) < count:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            stop(proc)
            raise SystemExit(f"{Path(argv[0]).name} did not start:\n{tail(log_path)}")
        if m := re.search(r"listening on (http://\S+)", line):
            urls.append(m.group(1).rstrip("/"))
    return proc, urls


def get_json(url: str, timeout: float = 2.0):
    """The JSON a `GET url` answered with 200, else None."""
    status, body = http_get(url, timeout=timeout)
    try:
        return json.loads(body) if status == 200 else None
    except ValueError:
        return None


class SimFleet:
    """Running `vllm-sim` processes, one worker each, restarted together. Subclasses say which
    workers to run: `workers()` gives each one's name (for its log) and command line."""

    def __init__(self, sim_bin: str, workdir: Path):
        self.sim_bin = sim_bin
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def workers(self) -> list[tuple[str, list[str]]]:
        raise NotImplementedError

    def log_path(self, name: str) -> Path:
        return self.workdir / f"sim-{name}.log"

    def restart(self) -> None:
        self.stop()
        for name, argv in self.workers():
            proc, urls = start_listening(argv, self.log_path(name), 1, append=True)
            self.procs.append(proc)
            self.urls.extend(urls)

    def stats(self) -> list[dict]:
        return [get_json(url + "/sim/stats") or {} for url in self.urls]

    def check_alive(self) -> None:
        for (name, _), proc in zip(self.workers(), self.procs):
            if proc.poll() is not None:
                raise SystemExit(f"vllm-sim worker {name} exited mid-run:\n"
                                 f"{tail(self.log_path(name))}")

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)
        self.procs, self.urls = [], []


def nginx_argv(nginx: str, port: int, workers: list[str], prefix: Path,
               read_timeout_s: int | None = None) -> list[str]:
    """nginx as a plain least-connections reverse proxy over `workers` on `port`, unbuffered,
    with keep-alive upstreams; its configuration and state live in `prefix`, made anew."""
    if prefix.exists():
        shutil.rmtree(prefix)
    prefix.mkdir(parents=True)
    # Started as root, nginx workers run as an unprivileged user that must reach the prefix.
    for d in (prefix.parent, prefix):
        d.chmod(0o755)
    servers = "\n".join(f"        server {u.removeprefix('http://')};" for u in workers)
    timeout = f"\n            proxy_read_timeout {read_timeout_s}s;" if read_timeout_s else ""
    conf = prefix / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""\
        worker_processes 1;
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {prefix}/client_body;
            proxy_temp_path {prefix}/proxy;
            fastcgi_temp_path {prefix}/fastcgi;
            uwsgi_temp_path {prefix}/uwsgi;
            scgi_temp_path {prefix}/scgi;
            upstream llm {{
                least_conn;
        {{servers}}
                keepalive 64;
            }}
            server {{
                listen 127.0.0.1:{port};
                location / {{
                    proxy_pass http://llm;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_buffering off;{{timeout}}
                }}
            }}
        }}
    """).replace("{servers}", servers).replace("{timeout}", timeout))
    return [nginx, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"]


def pin_binaries(dest: Path, binaries: list[str]) -> list[str]:
    """Copies of `binaries` (paths or names on PATH) in `dest`, so that a rebuild in the tree
    during a run cannot swap them between targets; their paths, in order."""
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for binary in binaries:
        src = Path(shutil.which(binary) or binary)
        copies.append(str(dest / src.name))
        shutil.copy2(src, copies[-1])
    return copies

