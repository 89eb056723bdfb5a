"""``python -m vllm_router.launch_router ARGS``: run the router binary with ``ARGS``.

It takes the same flags as ``vllm-router`` itself (which understands vllm-project/router's
command line); the process becomes the router, so signals and the exit status are its own.
"""

import os
import sys
from typing import List, Optional

from vllm_router.binary import binary_path


def main(argv: Optional[List[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    binary = binary_path()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
