"""How search results and reports are printed: a ranked table that fits the terminal, JSON, or bare paths."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

from softclip.index.search import SearchHit, TextHit

if TYPE_CHECKING:
    from softclip.index.build import IndexReport

FORMATS = ("table", "json", "paths")
_ELLIPSIS = "…"
_MIN_WIDTH = 40


def format_hits(hits: Sequence[SearchHit | TextHit], fmt: str = "table", width: int | None = None) -> str:
    """Hits in one of ``FORMATS`` (the CLI's default, ``--json`` and ``--paths``)."""
    if fmt == "table":
        return format_table(hits, width)
    if fmt == "json":
        return format_json(hits)
    if fmt == "paths":
        return format_paths(hits)
    raise ValueError(f"unknown output format {fmt!r}; choose one of {FORMATS}")


def format_table(hits: Sequence[SearchHit | TextHit], width: int | None = None) -> str:
    """Columns rank, score, path (or text), each line at most ``width`` characters (default: the terminal's).

    Long paths keep their end (the file name) and lose their start.
    """
    width = max(_MIN_WIDTH, width or shutil.get_terminal_size().columns)
    rank_width = max(4, len(str(len(hits))))
    heading = "path" if not hits or isinstance(hits[0], SearchHit) else "text"
    lines = [f"{'rank':>{rank_width}}  {'score':>7}  {heading}"]
    room = width - rank_width - 11  # two gaps of 2 and a 7-wide score
    for rank, hit in enumerate(hits, start=1):
        lines.append(f"{rank:>{rank_width}}  {hit.score:>7.4f}  {_shorten(_subject(hit), room)}")
    return "\n".join(lines)


def format_json(hits: Sequence[SearchHit | TextHit]) -> str:
    """A JSON list of hits, each with its rank."""
    return json.dumps([{"rank": rank, **asdict(hit)} for rank, hit in enumerate(hits, start=1)], indent=2)


def format_paths(hits: Sequence[SearchHit | TextHit]) -> str:
    """One path (or text) per line, best first: for ``xargs`` and shell pipes."""
    return "\n".join(_subject(hit) for hit in hits)


def format_report(report: IndexReport) -> str:
    """A few lines summing up an indexing run, then each failed file with its reason."""
    counts = (
        f"{report.added} added, {report.updated} updated, {report.renamed} renamed, "
        f"{report.removed} removed, {report.unchanged} unchanged, {len(report.errors)} errors"
    )
    rate = report.embedded / report.seconds if report.seconds > 0 else 0.0
    lines = [
        f"{report.index_dir}: {report.total} images indexed",
        counts,
        f"embedded {report.embedded} images in {report.seconds:.1f} s ({rate:.1f} images/s)",
    ]
    lines += [f"  {path}: {reason}" for path, reason in report.errors]
    return "\n".join(lines)


def _subject(hit: SearchHit | TextHit) -> str:
    return hit.path if isinstance(hit, SearchHit) else hit.text


def _shorten(text: str, room: int) -> str:
    if len(text) <= room:
        return text
    return _ELLIPSIS + text[len(text) - room + 1 :]
