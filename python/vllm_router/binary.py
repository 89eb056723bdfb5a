"""Where the ``vllm-router`` binary is: beside this interpreter's scripts, else on PATH."""

import os
import shutil
import sysconfig

NAME = "vllm-router"


def binary_path() -> str:
    """The path of the ``vllm-router`` binary; ``VLLM_ROUTER_BINARY`` overrides it."""
    override = os.environ.get("VLLM_ROUTER_BINARY")
    if override:
        return override
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidate = os.path.join(scripts, NAME)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(NAME)
    if found:
        return found
    raise FileNotFoundError(
        f"the {NAME} binary is not installed beside this interpreter nor on PATH; "
        "reinstall the package (pip install vllm-router) or set VLLM_ROUTER_BINARY"
    )
