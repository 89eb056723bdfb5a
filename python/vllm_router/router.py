"""``Router``: vllm-project/router's constructor keywords, run as the ``vllm-router`` binary.

Each keyword given becomes the flag of the same name (``worker_urls=[...]`` is
``--worker-urls ...``; ``True`` is a bare flag; ``None`` and ``False`` are left out), so the
binary's own defaults apply to everything not given. ``prefill_urls`` takes ``(url, port)``
pairs as ``--prefill URL PORT``, ``decode_urls`` is ``--decode URL``. A keyword the binary has
no flag for is refused when the router starts, with the binary's own message.
"""

import atexit
import ctypes
import signal
import subprocess
from typing import Any, Dict, List, Optional, Sequence

from vllm_router.binary import binary_path

# Keywords of vllm-project/router whose flag is spelled differently here.
_RENAMED = {"prefill_urls": "prefill", "decode_urls": "decode"}


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the interpreter dies, however it dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def to_args(options: Dict[str, Any]) -> List[str]:
    """The command line of ``options`` (keywords as given to ``Router``)."""
    args: List[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + _RENAMED.get(key, key).replace("_", "-")
        if key == "prefill_urls":
            for entry in value:
                url, port = (entry, None) if isinstance(entry, str) else entry
                args += [flag, str(url)] + ([] if port is None else [str(port)])
        elif key == "decode_urls":
            for url in value:
                args += [flag, str(url)]
        elif value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            if value:
                args += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            if value:
                args += [flag, *(f"{k}={v}" for k, v in value.items())]
        else:
            args += [flag, str(value)]
    return args


class Router:
    """The router as a child process of this interpreter.

    ``Router(worker_urls=["http://gpu1:8000"], policy="cache_aware", port=30000).start()``
    runs it until it exits (as vllm-project/router's ``start()`` does); ``start(wait=False)``
    returns at once, and the router is stopped with the interpreter or by ``stop()``.
    """

    def __init__(self, worker_urls: Optional[Sequence[str]] = None, **options: Any) -> None:
        if worker_urls:
            options = {"worker_urls": list(worker_urls), **options}
        self.args = to_args(options)
        self.process: Optional[subprocess.Popen] = None

    def start(self, wait: bool = True) -> Optional[int]:
        """Start the router; with ``wait``, block until it exits and return its status."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the router is already running")
        self.process = subprocess.Popen(
            [binary_path(), *self.args], preexec_fn=_die_with_parent
        )
        atexit.register(self.stop)
        if not wait:
            return None
        try:
            return self.process.wait()
        except KeyboardInterrupt:
            self.stop()
            return self.process.returncode

    def stop(self, timeout: float = 35.0) -> None:
        """Ask the router to drain and exit (SIGTERM); kill it if it takes past ``timeout``."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
