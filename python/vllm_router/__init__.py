"""vllm-router: a load balancer for fleets of vLLM servers.

The router is the ``vllm-router`` binary installed with this package. This module keeps the
Python entry points of vllm-project/router working: ``Router(...).start()`` runs the binary
with the constructor's keywords as flags, and ``python -m vllm_router.launch_router ARGS``
runs it with ``ARGS``.
"""

from importlib.metadata import PackageNotFoundError, version

from vllm_router.binary import binary_path
from vllm_router.router import Router

try:
    __version__ = version("vllm-router")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = ["Router", "__version__", "binary_path"]
