"""Decoding in child processes, for the formats whose decoders are large native libraries (HEIC, AVIF, JPEG XL,
camera RAW, and Pillow's rarer plugins).

A crash in such a decoder (a segfault, an abort) would take the whole process down, a hang would stall it and a
decompression bomb that slips past the header check would exhaust the machine's memory. In a child each is
bounded: an answer later than ``DECODE_SECONDS`` gets the child killed, the child's address space may grow by
at most ``DECODE_MEMORY_BYTES`` over what it maps at start (``RLIMIT_AS``, on Linux), so a bomb fails there with
``MemoryError``, and a crash costs only that child. Each of these becomes a ``ChildDecodeError`` with a reason.

Children are spawned (safe beside the caller's threads), started on first need, reused file after file and
replaced when one dies, so the cost of starting one (importing the decoders) is paid once per worker.
"""

from __future__ import annotations

import functools
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from PIL import Image

DECODE_SECONDS = 60.0  # a 100-megapixel RAW demosaics in seconds; a decoder silent this long is stuck
START_SECONDS = 120.0  # a child imports numpy, Pillow and the plugins before it answers
DECODE_MEMORY_BYTES = 3 << 30  # a 100-megapixel 16-bit RAW with its demosaiced copy fits with room to spare
MAX_IDLE_CHILDREN = 16

Decode = Callable[[bytes, str, float, "int | None"], Image.Image]


class ChildDecodeError(Exception):
    """A file the child could not decode, or a child that stopped (crashed, or killed when late): ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChildDecoder:
    """One child process that decodes images sent to it, one at a time."""

    def __init__(
        self, decode: Decode, seconds: float = DECODE_SECONDS, memory_bytes: int = DECODE_MEMORY_BYTES
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.seconds = seconds
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=serve, args=(child_end, decode, memory_bytes), daemon=True, name="softclip-decoder"
        )
        self._process.start()
        child_end.close()
        self._receive(START_SECONDS, "the decoder process did not start")

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def decode(self, data: bytes, name: str, max_megapixels: float, min_side: int | None) -> Image.Image:
        """What the child's ``decode`` makes of ``data`` (an RGB image), else ``ChildDecodeError``."""
        try:
            self._connection.send((data, name, max_megapixels, min_side))
        except OSError:
            self.close()
            raise ChildDecodeError("the decoder process had stopped") from None
        kind, payload = self._receive(self.seconds, f"decoding took over {self.seconds:g} s and was stopped")
        if kind == "error":
            raise ChildDecodeError(payload)
        mode, size, pixels = payload
        return Image.frombytes(mode, size, pixels)

    def close(self) -> None:
        """Stop the child (at once: it may be stuck) and release the pipe."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._connection.close()

    def _receive(self, seconds: float, late: str) -> tuple:
        if not self._connection.poll(seconds):  # also wakes up when the child dies
            self.close()
            raise ChildDecodeError(late)
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            self._process.join(5)
            code = self._process.exitcode
            self.close()
            raise ChildDecodeError(f"the decoder crashed ({exit_reason(code)})") from None


class DecoderPool:
    """Child decoders shared by threads: each call borrows an idle child or starts one, and gives it back.

    ``decode`` runs in the children, so it must be importable by name (a module-level function).
    """

    def __init__(
        self, decode: Decode, seconds: float = DECODE_SECONDS, memory_bytes: int = DECODE_MEMORY_BYTES
    ) -> None:
        self._start = functools.partial(ChildDecoder, decode, seconds, memory_bytes)
        self._idle: list[ChildDecoder] = []
        self._lock = threading.Lock()

    def decode(self, data: bytes, name: str, max_megapixels: float, min_side: int | None = None) -> Image.Image:
        """``ChildDecoder.decode`` in a borrowed child; a child that died is not given back."""
        with self._lock:
            child = self._idle.pop() if self._idle else None
        child = child if child is not None and child.alive else self._start()
        try:
            return child.decode(data, name, max_megapixels, min_side)
        finally:
            with self._lock:
                if child.alive and len(self._idle) < MAX_IDLE_CHILDREN:
                    self._idle.append(child)
                else:
                    child.close()

    def close(self) -> None:
        """Stop every idle child."""
        with self._lock:
            children, self._idle = self._idle, []
        for child in children:
            child.close()


def exit_reason(code: int | None) -> str:
    """'killed by SIGSEGV', 'exit code 3': how a child process ended."""
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# ---- in the child ----------------------------------------------------------------------------------------------------


def serve(connection: Connection, decode: Decode, memory_bytes: int) -> None:
    """The child's loop: answer ``("ok", (mode, size, pixels))`` or ``("error", reason)`` to each request."""
    limit_memory(memory_bytes)
    connection.send(("ready", None))
    while True:
        try:
            data, name, max_megapixels, min_side = connection.recv()
        except EOFError:  # the parent closed the pipe or exited
            return
        connection.send(answer(decode, data, name, max_megapixels, min_side, memory_bytes))


def answer(decode: Decode, data: bytes, name: str, max_megapixels: float, min_side: int | None, memory: int) -> tuple:
    """One request's answer; an error that carries a ``reason`` (``ImageDecodeError``) answers with it."""
    try:
        image = decode(data, name, max_megapixels, min_side)
        return "ok", (image.mode, image.size, image.tobytes())
    except MemoryError:
        return "error", f"out of memory: decoding needs more than the {memory / 2**30:g} GiB a decoder may use"
    except Exception as error:  # a plugin can raise nearly anything on hostile input
        return "error", getattr(error, "reason", None) or f"cannot decode: {type(error).__name__}: {error}"


def limit_memory(extra_bytes: int) -> None:
    """Cap this process's address space at what it maps now plus ``extra_bytes`` (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import resource

    with open("/proc/self/status") as status:
        mapped_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = mapped_kb * 1024 + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
