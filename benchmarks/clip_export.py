"""ONNX parity of imported CLIP models at full size: fp32 and int8 exports of open_clip's architectures.

Each architecture is built by open_clip with random weights, saved as open_clip saves it for the Hub,
loaded by softclip (converted) and exported; the parity measured at export (torch vs ONNX Runtime on the
export's sample images and texts) is printed as a table. open_clip and transformers come with the
``reference`` extra.

    python benchmarks/clip_export.py --models ViT-B-32 RN50 --out runs/clip_export
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' reference helpers

from softclip import from_pretrained  # noqa: E402
from softclip.export import export_model  # noqa: E402
from softclip.export.folder import read_info  # noqa: E402
from tests import clip_references as refs  # noqa: E402


def save_open_clip(name: str, folder: Path, vocab: Path) -> None:
    """open_clip's ``name`` with random weights, saved as open_clip saves models for the Hub."""
    library = refs.open_clip()
    from open_clip.push_to_hf_hub import save_for_hf

    model = library.create_model(name).eval()
    save_for_hf(model, refs.transformers().CLIPTokenizer.from_pretrained(vocab), library.get_model_config(name), folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "RN50"])
    parser.add_argument("--out", default="runs/clip_export")
    args = parser.parse_args()
    out = Path(args.out)
    vocab = refs.write_clip_vocab(out / "vocab")
    rows = []
    for name in args.models:
        source = out / name / "open_clip"
        if not source.is_dir():
            save_open_clip(name, source, vocab)
        model = from_pretrained(source)
        for precision in ("fp32", "int8"):
            start = time.perf_counter()
            try:
                folder = export_model(model, out / name / precision, int8=precision == "int8")
                parity = read_info(folder).get("parity", {})
            except ValueError as error:  # a refused export says why
                parity = {"refused": str(error)}
            rows.append((name, precision, parity, time.perf_counter() - start))
    print("| model | precision | parity (as export.json records it) | export s |\n| --- | --- | --- | --- |")
    for name, precision, parity, seconds in rows:
        print(f"| {name} | {precision} | `{json.dumps(parity)}` | {seconds:.0f} |")


if __name__ == "__main__":
    main()
