"""Queries: search hits, and weighted queries such as ``"beach + 2:sunset - people"``.

A query is terms joined by ``+`` or ``-`` (with spaces around them, so ``t-shirt`` stays one term); a
term may start with a weight (``2:sunset``, ``0.5:fog``; from 0.001 to 1000) and may be the path of an
existing image file, which is then embedded as an image. The query vector is the weighted, signed sum of the
term embeddings, L2-normalised again.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from softclip.index.decode import DEFAULT_MAX_MEGAPIXELS, load_rgb

if TYPE_CHECKING:
    from softclip.encoder import Encoder

_OPERATOR = re.compile(r"\s+([+-])(?:\s+|$)")
_LEADING_SIGN = re.compile(r"^([+-])\s*")
# Anything Python reads as a number before the colon is a weight (``1e40``, ``nan`` and ``inf`` too), so that
# an absurd weight is refused with a message rather than searched for as text.
_WEIGHT = re.compile(r"^([+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|nan|inf|infinity)):(.+)$", re.IGNORECASE)
MIN_WEIGHT = 0.001  # smaller weights vanish beside the others (and in float32, below about 1e-45)
MAX_WEIGHT = 1000.0  # far beyond any useful emphasis, and far from float32 overflow in the weighted sum


@dataclass(frozen=True)
class SearchHit:
    """One image found: its path, its similarity to the query (higher is closer) and its vector id."""

    path: str
    score: float
    vector_id: int


@dataclass(frozen=True)
class TextHit:
    """One text found for an image: the text and its similarity."""

    text: str
    score: float


@dataclass(frozen=True)
class QueryTerm:
    """One term of a query: signed weight, and a text or an image path."""

    weight: float
    term: str
    is_image: bool = False


def parse_query(query: str) -> list[QueryTerm]:
    """Split ``"beach + 2:sunset - people"`` into weighted terms; an existing file path is an image term."""
    text = query.strip()
    if not text:
        raise ValueError("the query is empty")
    sign, text = _leading_sign(text)
    pieces = _OPERATOR.split(text)  # [term, op, term, op, term, ...]
    signs = [sign] + [1.0 if op == "+" else -1.0 for op in pieces[1::2]]
    return [_parse_term(piece, sign, query) for piece, sign in zip(pieces[0::2], signs)]


def query_vector(query: str, encoder: Encoder, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> np.ndarray:
    """The L2-normalised float32 [D] vector of a (weighted) query."""
    terms = parse_query(query)
    vectors = np.zeros((len(terms), int(encoder.embed_dim)), dtype=np.float32)
    texts = [i for i, term in enumerate(terms) if not term.is_image]
    images = [i for i, term in enumerate(terms) if term.is_image]
    if texts:
        vectors[texts] = encoder.encode_texts([terms[i].term for i in texts])
    if images:
        vectors[images] = image_vectors([terms[i].term for i in images], encoder, max_megapixels)
    weights = np.asarray([term.weight for term in terms], dtype=np.float32)
    return combine(weights, vectors, query)


def image_vectors(
    images: list[str | os.PathLike | Image.Image], encoder: Encoder, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> np.ndarray:
    """float32 [B, D] embeddings of images given as paths or PIL images (``ImageDecodeError`` if one is bad)."""
    pixels = np.stack([encoder.preprocess(load_rgb(image, max_megapixels)) for image in images])
    return np.asarray(encoder.encode_images(pixels), dtype=np.float32)


def combine(weights: np.ndarray, vectors: np.ndarray, query: str = "") -> np.ndarray:
    """Normalised ``sum_i weights[i] * vectors[i]``: float32 [D] from [T] weights and [T, D] vectors."""
    total = (weights[:, None] * vectors).sum(axis=0)
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm):
        raise ValueError(f"the weights of the query {query!r} are too large to combine (at most {MAX_WEIGHT:g})")
    if norm <= 1e-6 * float(np.abs(weights).sum()):
        raise ValueError(f"the terms of the query {query!r} cancel out: nothing is left to search for")
    return (total / norm).astype(np.float32)


def _leading_sign(text: str) -> tuple[float, str]:
    match = _LEADING_SIGN.match(text)
    if match is None:
        return 1.0, text
    return (1.0 if match.group(1) == "+" else -1.0), text[match.end() :]


def _parse_term(piece: str, sign: float, query: str) -> QueryTerm:
    term = piece.strip()
    if os.path.isfile(term):
        return QueryTerm(sign, term, is_image=True)
    weight = 1.0
    match = _WEIGHT.match(term)
    if match is not None:
        term = match.group(2).strip()
        weight = _checked_weight(match.group(1), term)
    if not term:
        raise ValueError(f"the query {query!r} has an empty term")
    return QueryTerm(sign * weight, term, is_image=os.path.isfile(term))


def _checked_weight(written: str, term: str) -> float:
    """The weight written before ``term``, or a message naming it when it is outside [MIN_WEIGHT, MAX_WEIGHT]."""
    weight = float(written)
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:  # also refuses nan, and inf, which float() makes of many digits
        shown = written if len(written) <= 12 else f"{written[:6]}...({len(written)} digits)"
        raise ValueError(
            f"the weight {shown} of the term {term!r} must be between {MIN_WEIGHT:g} and {MAX_WEIGHT:g}"
            " (subtract a term with ' - ')"
        )
    return weight
