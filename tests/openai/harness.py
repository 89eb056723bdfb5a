"""Child processes for the end-to-end tests: the `vllm-router` and `vllm-sim` binaries, found
through `VLLM_ROUTER_BIN` and `VLLM_SIM_BIN` (see `run.sh`, which builds them and sets both).
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
LISTENING = re.compile(r"listening on (http://\S+)")


def binary(var: str) -> str:
    path = os.environ.get(var)
    if not path:
        pytest.fail(f"{var} is not set; run tests/openai/run.sh or export it", pytrace=False)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{var}={path} is not an executable file", pytrace=False)
    return path


@dataclass
class Proc:
    """A child process whose stdout is read line by line on a thread of its own."""

    name: str
    popen: subprocess.Popen
    lines: "queue.Queue[str | None]" = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, argv: list[str]) -> "Proc":
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,  # inherited: pytest shows it next to a failing test
            text=True,
            bufsize=1,
        )
        proc = cls(name, popen)
        threading.Thread(target=proc._pump, name=f"{name}-stdout", daemon=True).start()
        return proc

    def _pump(self) -> None:
        # Keeps draining stdout for the life of the process so it can never block on a full pipe.
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for_urls(self, count: int, timeout: float = STARTUP_TIMEOUT_S) -> list[str]:
        """The first `count` URLs printed as `... listening on http://HOST:PORT`."""
        urls: list[str] = []
        deadline = time.monotonic() + timeout
        while len(urls) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name}: {len(urls)} of {count} listening lines after {timeout:.0f}s; "
                    f"stdout so far: {self.seen!r}"
                )
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(
                    f"{self.name} exited with {self.popen.wait()} before it was listening; "
                    f"stdout: {self.seen!r}"
                )
            self.seen.append(line)
            match = LISTENING.search(line)
            if match:
                urls.append(match.group(1).rstrip("/"))
        return urls

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
