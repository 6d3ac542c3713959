"""``ImageIndex``: the Python API over an index folder (search, describe, add, remove)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from softclip.index import faiss_index
from softclip.index.build import DEFAULT_BATCH_SIZE, IndexReport, IndexWriter, RunOptions
from softclip.index.decode import DEFAULT_MAX_MEGAPIXELS
from softclip.index.index_folder import IndexFolder, check_model, open_export_encoder
from softclip.index.scan import scan_folder, scan_paths
from softclip.index.search import SearchHit, TextHit, image_vectors, query_vector
from softclip.index.texts import TextIndex

if TYPE_CHECKING:
    import faiss

    from softclip.encoder import Encoder


class ImageIndex:
    """An index folder opened for search and updates.

    >>> index = ImageIndex.open("photos.idx")            # the encoder comes from the export the index names
    >>> index.search_text("beach + 2:sunset - people", k=5)
    """

    def __init__(self, folder: IndexFolder, encoder: Encoder | None = None) -> None:
        self._folder = folder
        self._encoder = encoder
        self._faiss: faiss.Index | None = None
        self._texts: TextIndex | None = None
        self._lock = threading.RLock()  # one SQLite connection and one FAISS index, shared by threads
        if encoder is not None:
            check_model(folder.info, encoder.model_id, int(encoder.embed_dim), folder.path)

    @classmethod
    def open(cls, index_dir: str | os.PathLike, encoder: Encoder | None = None) -> ImageIndex:
        """Open an index folder; without ``encoder``, the export folder named in ``index.json`` is loaded
        when first needed. A different model is refused with an ``IndexMismatchError``."""
        return cls(IndexFolder.open_for_reading(index_dir), encoder)

    @property
    def path(self) -> Path:
        """The index folder."""
        return self._folder.path

    @property
    def encoder(self) -> Encoder:
        """The encoder queries are embedded with (opened from the index's export on first use)."""
        if self._encoder is None:
            self._encoder = open_export_encoder(self._folder.info, self._folder.path)
        return self._encoder

    def close(self) -> None:
        """Close the manifest."""
        self._folder.close()

    def __enter__(self) -> ImageIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        """Number of indexed (embedded) images."""
        return self._index().ntotal

    # ---- search -----------------------------------------------------------------------------------------------

    def search_text(self, query: str, k: int = 10) -> list[SearchHit]:
        """Images closest to a text or weighted query such as ``"beach + 2:sunset - people"``."""
        return self.search_vector(query_vector(query, self.encoder), k)

    def search_image(self, image: str | os.PathLike | Image.Image, k: int = 10) -> list[SearchHit]:
        """Images closest to an image (a path or a PIL image)."""
        return self.search_vector(image_vectors([image], self.encoder)[0], k)

    def search_vector(self, vector: np.ndarray, k: int = 10) -> list[SearchHit]:
        """Images closest to an embedding [D], best first."""
        with self._lock:
            scores, ids = faiss_index.search(self._index(), np.asarray(vector, dtype=np.float32)[None], k)
            found = [(float(score), int(i)) for score, i in zip(scores[0], ids[0]) if i >= 0]
            paths = self._folder.manifest.paths_for(i for _, i in found)
        return [SearchHit(paths[i], score, i) for score, i in found if i in paths]

    def describe(self, image: str | os.PathLike | Image.Image, k: int = 5) -> list[TextHit]:
        """The texts (added with ``index_texts``) closest to an image."""
        with self._lock:
            if self._texts is None or self._texts.is_stale():
                self._texts = TextIndex.load(self._folder.path)
        return self._texts.search(image_vectors([image], self.encoder), k)[0]

    # ---- updates ----------------------------------------------------------------------------------------------

    def add(
        self,
        paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike],
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int | None = None,
        progress: bool | None = False,
    ) -> IndexReport:
        """Index a folder (incrementally, as ``build_index`` does) or a list of image files."""
        options = RunOptions(max_megapixels, batch_size, workers, progress)
        single = isinstance(paths_or_folder, (str, os.PathLike))
        if single and Path(paths_or_folder).is_dir():
            scan = scan_folder(paths_or_folder)
        else:
            scan = scan_paths([paths_or_folder] if single else paths_or_folder)
        with self._lock, self._writer(self.encoder) as writer:
            if scan.root:
                known = writer.known_under(scan.root, skip_dirs=scan.unreadable_dirs)
            else:
                known = writer.manifest.records_for(file.path for file in scan.files)
            report = writer.update(scan.files, known, options)
        report.errors[:0] = scan.errors
        return report

    def remove(self, paths: Iterable[str | os.PathLike]) -> int:
        """Drop images (by path) from the index; returns how many were in it."""
        with self._lock, self._writer(None) as writer:
            return writer.remove(os.fspath(path) for path in paths)

    def _writer(self, encoder: Encoder | None) -> IndexWriter:
        """A writer on this folder; ``encoder`` None for changes that embed nothing (removals)."""
        self._faiss = None  # reloaded from the updated folder on next use
        info = self._folder.info
        return IndexWriter(IndexFolder.open_for_writing(self.path, info.model_id, info.embed_dim), encoder)

    def _index(self) -> faiss.Index:
        with self._lock:
            if self._faiss is None:
                self._faiss = self._folder.load_faiss()
            return self._faiss
