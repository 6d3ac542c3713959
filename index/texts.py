"""Image-to-text search: a second, small index of texts kept in the index folder's ``texts/``.

``texts/texts.json`` holds the texts, the model that embedded them and the name of the FAISS file with one
embedding per text (exact search, ids = positions). That file is named after a digest of the texts and
written first; the JSON, written last and atomically, is the commit point, so a run killed in between
leaves the previous text index whole. Files the JSON no longer names are then deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from softclip.atomic import write_json_atomically
from softclip.index import faiss_index
from softclip.index.index_folder import check_model, open_export_encoder, read_info
from softclip.index.search import TextHit

if TYPE_CHECKING:
    import faiss

    from softclip.encoder import Encoder

TEXTS_DIR = "texts"
TEXTS_JSON = "texts.json"


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
    faiss_name = f"texts-{_digest(kept, info.model_id)}.faiss"
    index = faiss_index.build_faiss_index(embeddings, np.arange(len(kept), dtype=np.int64))
    faiss_index.save_index(index, folder / faiss_name)
    description = {"model_id": info.model_id, "embed_dim": info.embed_dim, "faiss_file": faiss_name, "texts": kept}
    write_json_atomically(folder / TEXTS_JSON, description)
    for stale in folder.glob("texts-*.faiss"):
        if stale.name != faiss_name:
            stale.unlink(missing_ok=True)
    return len(kept)


def _digest(texts: list[str], model_id: str) -> str:
    digest = hashlib.blake2b(model_id.encode(), digest_size=8)
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


class TextIndex:
    """The texts of an index folder, searchable by image (or any) vector."""

    def __init__(self, texts: list[str], index: faiss.Index, source: Path | None = None) -> None:
        self.texts = texts
        self.index = index
        self._source = source  # texts.json, to notice when index_texts has replaced it
        self._version = _file_version(source) if source is not None else None

    @classmethod
    def load(cls, index_dir: str | os.PathLike) -> TextIndex:
        """Open ``index_dir/texts``; a clear error when there is none or it is incomplete."""
        folder = Path(index_dir) / TEXTS_DIR
        if not (folder / TEXTS_JSON).is_file():
            raise FileNotFoundError(f"the index in {os.fspath(index_dir)!r} has no texts: add some with index_texts")
        data = json.loads((folder / TEXTS_JSON).read_text(encoding="utf-8"))
        info = read_info(index_dir)
        check_model(info, data["model_id"], int(data["embed_dim"]), folder)
        index = faiss_index.load_index(folder / data["faiss_file"])
        if index.ntotal != len(data["texts"]):
            raise ValueError(f"the text index in {os.fspath(folder)!r} is incomplete: run index_texts again")
        return cls(data["texts"], index, folder / TEXTS_JSON)

    def is_stale(self) -> bool:
        """True when ``index_texts`` has written other texts since this index was loaded."""
        return self._source is not None and _file_version(self._source) != self._version

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, vectors: np.ndarray, k: int = 5) -> list[list[TextHit]]:
        """For each query vector of [Q, D], the ``k`` closest texts, best first."""
        scores, ids = faiss_index.search(self.index, vectors, k)
        return [
            [TextHit(self.texts[i], float(score)) for score, i in zip(row_scores, row_ids) if i >= 0]
            for row_scores, row_ids in zip(scores, ids)
        ]


def _file_version(path: Path) -> tuple[int, int] | None:
    """(inode, mtime): an atomic rewrite always gets a new inode, even within one mtime tick."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns
