"""Image-to-text search: a second, small index of texts kept in the index folder's ``texts/``.

``texts/texts.faiss`` holds one embedding per text (exact search, ids = positions) and ``texts/texts.json``
the texts and the model that embedded them. The FAISS file is written first and the JSON last, both
atomically; a text index whose two files disagree is refused until ``index_texts`` runs again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from softclip.index import faiss_index
from softclip.index.atomic import write_json_atomically
from softclip.index.index_folder import check_model, open_export_encoder, read_info
from softclip.index.search import TextHit

if TYPE_CHECKING:
    import faiss

    from softclip.encoder import Encoder

TEXTS_DIR = "texts"
TEXTS_JSON = "texts.json"
TEXTS_FAISS = "texts.faiss"


def index_texts(
    index_dir: str | os.PathLike, texts: list[str], encoder: Encoder | None = None, batch_size: int = 256
) -> int:
    """Embed ``texts`` into the text index of ``index_dir`` (replacing it); returns how many were kept.

    Texts are stripped; empty ones and repeats are dropped. ``encoder`` defaults to the index's export.
    """
    info = read_info(index_dir)
    encoder = encoder or open_export_encoder(info, index_dir)
    check_model(info, encoder.model_id, int(encoder.embed_dim), index_dir)
    kept = list(dict.fromkeys(text.strip() for text in texts if text and text.strip()))
    if not kept:
        raise ValueError("index_texts needs at least one non-empty text")
    embeddings = np.concatenate(
        [encoder.encode_texts(kept[i : i + batch_size]) for i in range(0, len(kept), batch_size)]
    )
    folder = Path(index_dir) / TEXTS_DIR
    folder.mkdir(exist_ok=True)
    index = faiss_index.build_index(embeddings, np.arange(len(kept), dtype=np.int64))
    faiss_index.save_index(index, folder / TEXTS_FAISS)
    write_json_atomically(folder / TEXTS_JSON, {"model_id": info.model_id, "embed_dim": info.embed_dim, "texts": kept})
    return len(kept)


class TextIndex:
    """The texts of an index folder, searchable by image (or any) vector."""

    def __init__(self, texts: list[str], index: faiss.Index) -> None:
        self.texts = texts
        self.index = index

    @classmethod
    def load(cls, index_dir: str | os.PathLike) -> TextIndex:
        """Open ``index_dir/texts``; a clear error when there is none or it is incomplete."""
        folder = Path(index_dir) / TEXTS_DIR
        if not (folder / TEXTS_JSON).is_file():
            raise FileNotFoundError(f"the index in {os.fspath(index_dir)!r} has no texts: add some with index_texts")
        data = json.loads((folder / TEXTS_JSON).read_text(encoding="utf-8"))
        info = read_info(index_dir)
        check_model(info, data["model_id"], int(data["embed_dim"]), folder)
        index = faiss_index.load_index(folder / TEXTS_FAISS)
        if index.ntotal != len(data["texts"]):
            raise ValueError(f"the text index in {os.fspath(folder)!r} is incomplete: run index_texts again")
        return cls(data["texts"], index)

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, vectors: np.ndarray, k: int = 5) -> list[list[TextHit]]:
        """For each query vector of [Q, D], the ``k`` closest texts, best first."""
        scores, ids = faiss_index.search(self.index, vectors, k)
        return [
            [TextHit(self.texts[i], float(score)) for score, i in zip(row_scores, row_ids) if i >= 0]
            for row_scores, row_ids in zip(scores, ids)
        ]
