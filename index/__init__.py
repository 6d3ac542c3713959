"""softclip.index: index folders of images for search, image-to-text lookup and zero-shot labeling.

``build_index(folder, encoder, index_dir)`` indexes (incrementally) every image under a folder;
``ImageIndex.open(index_dir)`` searches it by text, weighted query or image; ``index_texts`` adds texts
for ``ImageIndex.describe``; ``merge_shards`` joins shards embedded in parallel; ``label_folder`` writes
zero-shot labels to a CSV. faiss is imported only when an index is built or searched. Past one machine,
``softclip.index.ray_index.build_index_on_ray`` embeds on a Ray cluster (the ``ray`` extra, imported only
there); past memory, ``build_index(..., on_disk_above=N)`` keeps the FAISS index on disk
(``softclip.index.ondisk``).
"""

from softclip.index.build import IndexReport, build_index
from softclip.index.decode import ImageDecodeError
from softclip.index.image_index import ImageIndex
from softclip.index.index_folder import IndexBusyError, IndexMismatchError
from softclip.index.label import LabelReport, label_folder
from softclip.index.output import format_hits, format_report
from softclip.index.search import SearchHit, TextHit, parse_query
from softclip.index.shards import MergeReport, find_shard_dirs, merge_shards, shard_dir
from softclip.index.texts import index_texts

__all__ = [
    "ImageDecodeError",
    "ImageIndex",
    "IndexBusyError",
    "IndexMismatchError",
    "IndexReport",
    "LabelReport",
    "MergeReport",
    "SearchHit",
    "TextHit",
    "build_index",
    "find_shard_dirs",
    "format_hits",
    "format_report",
    "index_texts",
    "label_folder",
    "merge_shards",
    "parse_query",
    "shard_dir",
]
