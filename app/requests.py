"""What one request to the app may ask for (`Limits`), the checks that enforce it, how a failure reaches the user."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder
from PIL import Image

from softclip.app.uploads import header_size, read_upload
from softclip.index import ImageDecodeError
from softclip.index.decode import decode_bytes
from softclip.zeroshot import parse_labels

logger = logging.getLogger(__name__)

DEFAULT_K = 12


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything beyond gets a message saying which limit it broke."""

    max_query_chars: int = 500
    max_k: int = 50
    max_labels: int = 64
    max_label_chars: int = 100
    max_megapixels: float = 40.0  # uploads, and indexed images decoded for display
    max_upload_mb: float = 20.0
    concurrency: int = 2  # requests worked on at once (per event)
    queue_size: int = 128  # requests waiting (100 searches sent at once all wait their turn); more are turned away

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1_000_000)


class UserError(gr.Error):
    """A bad request, shown to the user as a message (no traceback in the log either)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, print_exception=False)


def shown_to_user(handler: Callable) -> Callable:
    """Wrap an event handler so that every failure reaches the user as a short message, never a traceback.

    Errors the library raises for bad input (``ValueError`` and its kin, a missing file) keep their message;
    anything unexpected is logged here and reported by its type only.
    """

    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except ImageDecodeError as error:
            raise UserError(f"That file cannot be read as an image: {error.reason}.") from None
        except (ValueError, FileNotFoundError) as error:
            raise UserError(str(error)) from None
        except Exception as error:
            logger.exception("%s failed", handler.__name__)
            raise UserError(f"Something went wrong ({type(error).__name__}); the server log has the details.") from None

    return run


def check_text(text: str | None, limits: Limits, what: str = "query") -> str:
    """The stripped text, or a message when it is not text, empty or longer than ``limits.max_query_chars``."""
    if text is not None and not isinstance(text, str):  # the events take raw API values (preprocess=False)
        raise UserError(f"The {what} must be text, got {type(text).__name__}.")
    text = (text or "").strip()
    if not text:
        raise UserError(f"The {what} is empty: type a few words describing the image.")
    if len(text) > limits.max_query_chars:
        raise UserError(f"The {what} is too long: {len(text)} characters, the limit is {limits.max_query_chars}.")
    return text


def check_k(k: float | int | str | None, limits: Limits) -> int:
    """The number of results as an int in [1, ``limits.max_k``]; None means ``DEFAULT_K``."""
    if k is None:
        return min(DEFAULT_K, limits.max_k)
    try:
        number = float(k) if not isinstance(k, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"The number of results must be a whole number, got {str(k)[:40]!r}.")
    if not 1 <= number <= limits.max_k:
        raise UserError(f"The number of results must be between 1 and {limits.max_k}, got {int(number)}.")
    return int(number)


def check_labels(text: str | None, limits: Limits) -> list[str]:
    """'cat, dog,, cat' -> ['cat', 'dog'] (``parse_labels``), within the count and length limits."""
    if text is not None and not isinstance(text, str):
        raise UserError(f"The labels must be text, got {type(text).__name__}.")
    labels = parse_labels(text or "")
    if not labels:
        raise UserError("Enter at least one label, e.g. 'cat, dog, car' (labels are separated by commas).")
    if len(labels) > limits.max_labels:
        raise UserError(f"Too many labels: {len(labels)}, the limit is {limits.max_labels}.")
    too_long = [item for item in labels if len(item) > limits.max_label_chars]
    if too_long:
        limit = limits.max_label_chars
        raise UserError(f"The label {too_long[0][:40]!r}... is too long: the limit is {limit} characters.")
    return labels


def uploaded_image(payload: dict | None, limits: Limits) -> Image.Image:
    """The upright RGB image of an upload (Gradio's file payload), refusing anything but a received upload.

    Events that take uploads run with ``preprocess=False``, so the payload is what the client sent: only a
    regular file in Gradio's upload folder is read (``read_upload``), within the byte limit, and decoded here
    with the app's pixel limit and clear reasons.
    """
    upload = read_upload(payload, get_upload_folder(), limits.max_upload_bytes)
    check_pixels(upload.data, limits.max_megapixels)
    try:
        return decode_bytes(upload.data, upload.name, limits.max_megapixels)
    except ImageDecodeError:
        raise
    except Exception as error:  # a Pillow plugin can raise nearly anything on hostile input
        raise UserError(f"That file cannot be read as an image ({type(error).__name__}).") from None


def check_pixels(data: bytes, max_megapixels: float) -> None:
    """Refuse an image larger than ``max_megapixels`` by its header, before any pixel is decoded."""
    size = header_size(data)
    if size is None:  # not an image: decoding says why
        return
    width, height = size
    if width * height > max_megapixels * 1e6:
        raise UserError(
            f"The image is {width}x{height} ({width * height / 1e6:.1f} megapixels), "
            f"the limit is {max_megapixels:g} megapixels."
        )
