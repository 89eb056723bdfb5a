"""The soak's short version: `bench/soak.py` for half a minute, with every fault it injects
(worker kill, hang, asked-for 500s, slow readers, slow uploads, reloads) and every check it
makes (resources back to idle, no request lost or answered twice, every failure explained).
"""

from __future__ import annotations

import os
import subprocess
import sys

from harness import binary as _binary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_short_soak_leaves_nothing_behind_and_every_failure_explained() -> None:
    run = subprocess.run(
        [
            sys.executable, os.path.join(ROOT, "bench", "soak.py"),
            "--router-bin", _binary("VLLM_ROUTER_BIN"),
            "--sim-bin", _binary("VLLM_SIM_BIN"),
            "--duration", "30", "--warmup", "10", "--fault-every", "4", "--clients", "8",
            # A debug build's allocator settles slower than a release build's.
            "--rss-tolerance", "0.25",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-4000:]}"
