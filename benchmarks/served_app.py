"""The app served by a benchmark script in its own process, for the app benchmarks to measure from outside.

The script is started again with the options that make it serve (its own `--serve PORT` mode), prints
"serving" once it answers, and is terminated when the measuring block ends.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def app_process(script: str, options: list[str], port: int, stop_seconds: float = 60) -> Iterator[str]:
    """``python script *options`` serving on ``port`` until the block ends; yields the app's URL."""
    server = subprocess.Popen([sys.executable, script, *options], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.startswith("serving"):
            raise RuntimeError(f"the app did not start: {line!r}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(stop_seconds)
