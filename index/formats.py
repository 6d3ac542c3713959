"""Which files are images: the indexed file extensions, and the decoders that read them.

One list decides what the indexer picks up (``IMAGE_EXTENSIONS``); the content, not the extension, decides
how a file is decoded. Pillow reads most formats itself (AVIF included); pillow-heif adds HEIC/HEIF,
pillow-jxl-plugin JPEG XL, and rawpy (LibRaw) camera RAW. The plugins are registered on first use, so that
``import softclip.index`` stays light.
"""

from __future__ import annotations

import functools
import os

# What phones and cameras write, first; then the other pixel formats Pillow reads. Left out on purpose:
# EPS/PS (Pillow runs Ghostscript on them), and formats Pillow only identifies (MPEG, BUFR, GRIB, HDF5, WMF).
PHOTO_EXTENSIONS = (
    ".jpg .jpeg .jpe .jfif .mpo .png .apng .webp .gif .tif .tiff .bmp .dib .heic .heif .hif .heics .heifs "
    ".avif .avifs .jxl"
).split()
RAW_EXTENSIONS = (
    ".dng .cr2 .cr3 .crw .nef .nrw .arw .srf .sr2 .orf .rw2 .raf .pef .ptx .srw .3fr .fff .erf .kdc .dcr .mrw "
    ".mos .x3f .iiq .rwl .mef .gpr"
).split()
OTHER_PILLOW_EXTENSIONS = (
    ".jp2 .j2k .jpc .jpf .jpx .j2c .psd .ico .cur .icns .tga .icb .vda .vst .ppm .pgm .pbm .pnm .pfm .pcx .dcx "
    ".sgi .rgb .rgba .bw .dds .im .qoi .xbm .xpm .fli .flc .ras .blp .ftc .ftu .gbr .msp .pcd .pxr .fit .fits"
).split()
IMAGE_EXTENSIONS = frozenset(PHOTO_EXTENSIONS + RAW_EXTENSIONS + OTHER_PILLOW_EXTENSIONS)


def extension(path: str | os.PathLike) -> str:
    """The lower-case extension of a file name, with its dot ('' when there is none)."""
    return os.path.splitext(os.fspath(path))[1].lower()


def is_raw_name(path: str | os.PathLike) -> bool:
    """True when the file name says camera RAW (the content decides in the end: see ``decode``)."""
    return extension(path) in RAW_EXTENSIONS


def extensions_help() -> str:
    """The indexed extensions, for ``--help``: photo formats, camera RAW, other formats."""
    groups = (("photos", PHOTO_EXTENSIONS), ("camera RAW", RAW_EXTENSIONS), ("other", OTHER_PILLOW_EXTENSIONS))
    return "; ".join(f"{name}: {' '.join(e.lstrip('.') for e in group)}" for name, group in groups)


@functools.cache
def register_plugins() -> None:
    """Teach Pillow HEIC/HEIF (pillow-heif) and JPEG XL (pillow-jxl-plugin); Pillow itself reads AVIF."""
    import pillow_heif
    import pillow_jxl  # noqa: F401  (importing it registers the JXL plugin)

    pillow_heif.register_heif_opener()
