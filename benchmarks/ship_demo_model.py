"""Write a finished training run into `app/demo_model/`, the model `softclip demo` serves.

The weights are stored in float16 (half the size; the demo measures and serves exactly what is shipped),
beside the run's tokenizer, preprocessing and `recipe.json`: the run's full `train_config.json` and the
command that trained it, which `softclip demo --train` trains again.

    python benchmarks/ship_demo_model.py RUN_DIR --command "softclip train ..."
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from softclip.app.demo import SHIPPED_MODEL

COPIED = ("config.json", "preprocess.json", "tokenizer.json")


def ship(run: Path, command: str, out: Path = SHIPPED_MODEL) -> None:
    final = run / "final"
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copyfile(final / name, out / name)
    weights = {name: tensor.to(torch.float16) for name, tensor in load_file(final / "model.safetensors").items()}
    save_file(weights, out / "model.safetensors")
    train_config = json.loads((run / "train_config.json").read_text())
    train_config.pop("out")  # where it was trained says nothing about how; the demo trains into its own folder
    recipe = {"command": command, "train_config": train_config}
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"shipped {final} to {out} ({(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB of weights)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished `softclip train` output folder")
    parser.add_argument("--command", required=True, help="the exact command that trained the run")
    parser.add_argument("--out", type=Path, default=SHIPPED_MODEL)
    args = parser.parse_args()
    ship(args.run, args.command, args.out)


if __name__ == "__main__":
    main()
