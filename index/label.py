"""Label every image of a folder zero-shot into a CSV, as robustly as indexing decodes it.

Each label is embedded with every prompt template, averaged and re-normalised; probabilities are
``softmax(100 * similarity)`` over the labels (``softclip.zeroshot``). Columns: ``path``, ``label`` (the
most probable), ``probability``, ``top_k`` (``"label:prob;label:prob;..."``) and ``error`` (why a file
could not be labeled; the other columns are then empty).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from softclip.atomic import write_atomically
from softclip.index.build import DEFAULT_BATCH_SIZE, RunOptions
from softclip.index.decode import (
    DEFAULT_MAX_MEGAPIXELS,
    DecodedFile,
    batched,
    decode_files,
    draft_side,
    progress_bar,
)
from softclip.index.scan import scan_folder
from softclip.zeroshot import DEFAULT_TEMPLATES, label_embeddings, label_probabilities, rank_labels

if TYPE_CHECKING:
    from softclip.encoder import Encoder

CSV_COLUMNS = ("path", "label", "probability", "top_k", "error")


@dataclass
class LabelReport:
    """What ``label_folder`` wrote: how many images were labeled and which files failed (path, reason)."""

    out_csv: str
    labeled: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def label_folder(
    folder: str | os.PathLike,
    encoder: Encoder,
    labels: list[str],
    out_csv: str | os.PathLike,
    templates: list[str] | tuple[str, ...] | None = None,
    top_k: int = 5,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    progress: bool | None = None,
) -> LabelReport:
    """Write one CSV row per image under ``folder`` (sorted by path), bad files with their reason."""
    started = time.perf_counter()
    labels, templates = _check_labels(labels, templates, top_k)
    options = RunOptions(max_megapixels, batch_size, workers, progress)
    label_vectors = label_embeddings(encoder, labels, templates)  # [L, D]
    scan = scan_folder(folder)
    report = LabelReport(out_csv=os.fspath(out_csv), errors=list(scan.errors))
    decoded = decode_files(
        scan.files, encoder.preprocess, options.max_megapixels, options.workers, min_side=draft_side(encoder)
    )

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as stream, progress_bar(len(scan.files), progress) as bar:
            writer = csv.writer(stream)
            writer.writerow(CSV_COLUMNS)
            writer.writerows([path, "", "", "", reason] for path, reason in scan.errors)
            for batch in batched(decoded, options.batch_size):
                writer.writerows(_label_batch(batch, encoder, label_vectors, labels, top_k, report))
                bar.update(len(batch))

    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out_csv, write_csv)
    report.seconds = time.perf_counter() - started
    return report


def _label_batch(
    batch: list[DecodedFile],
    encoder: Encoder,
    label_vectors: np.ndarray,
    labels: list[str],
    top_k: int,
    report: LabelReport,
) -> Iterator[list[str]]:
    """CSV rows for one batch of decoded files, in order."""
    good = [item for item in batch if item.pixels is not None]
    ranked = iter([])
    if good:
        embeddings = np.asarray(encoder.encode_images(np.stack([item.pixels for item in good])), dtype=np.float32)
        ranked = iter(rank_labels(label_probabilities(embeddings, label_vectors), labels, top_k))
    for item in batch:
        if item.pixels is None:
            report.errors.append((item.file.path, item.error))
            yield [item.file.path, "", "", "", item.error]
            continue
        scores = next(ranked)
        report.labeled += 1
        top = ";".join(f"{score.label}:{score.probability:.4f}" for score in scores)
        yield [item.file.path, scores[0].label, f"{scores[0].probability:.4f}", top, ""]


def _check_labels(
    labels: Iterable[str], templates: Iterable[str] | None, top_k: int
) -> tuple[list[str], tuple[str, ...]]:
    labels = [label.strip() for label in labels]
    if not labels or not all(labels):
        raise ValueError("label_folder needs at least one label, and no empty ones")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"labels must be distinct; repeated: {repeated}")
    templates = tuple(templates) if templates is not None else DEFAULT_TEMPLATES
    if not templates:
        raise ValueError("templates must not be empty (None uses the default ones)")
    bad = [template for template in templates if "{}" not in template]
    if bad:
        raise ValueError(f"each template needs '{{}}' as the label placeholder; these have none: {bad}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    return labels, templates
