"""Indexes a folder slowly, for test_index_build's SIGKILL test: python index_crash_worker.py FOLDER INDEX_DIR."""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # conftest, and softclip as the test run imports it

from conftest import ColourHistogramEncoder  # noqa: E402

from softclip.index import build_index  # noqa: E402


class SlowEncoder(ColourHistogramEncoder):
    """The test encoder, slowed down so that the run is still going when it is killed."""

    def encode_images(self, pixels):
        time.sleep(0.05)
        return super().encode_images(pixels)


if __name__ == "__main__":
    folder, index_dir = sys.argv[1:3]
    build_index(folder, SlowEncoder(), index_dir, batch_size=8, workers=1, progress=False)
