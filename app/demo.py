"""`softclip demo`: from nothing to a running app on the embedded SynthScenes data, with no download.

The demo serves the model shipped in `demo_model/` (tiny-vit trained by softclip's own trainer; its
`recipe.json` holds the exact training config and command). `--train` trains that recipe again instead, or
a shorter one with `--steps`. Each stage leaves its result in the demo folder and is skipped when that
result is already there, so a second run starts the app within seconds and an interrupted run continues
where it stopped (training resumes from its last checkpoint).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from softclip.atomic import write_text_atomically

GALLERY_SEED = 7  # test-split scenes, not seen in training (the train split uses its own seed)
SHIPPED_MODEL = Path(__file__).parent / "demo_model"
RECIPE = SHIPPED_MODEL / "recipe.json"
MODEL_MARKER = "model.txt"  # which model a demo folder holds


@dataclass
class DemoConfig:
    folder: Path
    train: bool = False  # train the recipe instead of serving the shipped model
    steps: int | None = None  # training steps (None: the recipe's)
    batch_size: int | None = None  # training batch (None: the recipe's)
    gallery: int = 2000
    eval_size: int = 500  # scenes per evaluation set for the metrics the demo reports


def default_folder() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "softclip" / "demo"


def demo_model(config: DemoConfig) -> Path:
    """The checkpoint the demo serves: the shipped one, or one trained with the recipe."""
    _check_same_model(config)
    if not config.train:
        if not (SHIPPED_MODEL / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"the shipped demo model is missing from {SHIPPED_MODEL}: use `softclip demo --train`"
            )
        return SHIPPED_MODEL
    return train_model(config)


def _check_same_model(config: DemoConfig) -> None:
    """A demo folder holds the export and index of one model: refuse to mix the shipped and a trained one."""
    wanted = "trained" if config.train else "shipped"
    built = built_model(config.folder)
    if built is None:
        (config.folder / MODEL_MARKER).write_text(wanted + "\n")
    elif built != wanted:
        raise ValueError(
            f"the demo folder {config.folder} was built with the {built} model; "
            f"use another --dir for the {wanted} one, or delete the folder"
        )


def built_model(folder: Path) -> str | None:
    """Which model a demo folder was built with: "shipped", "trained", or None for a new folder."""
    marker = folder / MODEL_MARKER
    return marker.read_text().strip() if marker.is_file() else None


def served_checkpoint(folder: Path) -> Path:
    """The checkpoint a built demo folder serves."""
    return folder / "train" / "final" if built_model(folder) == "trained" else SHIPPED_MODEL


def recipe_config(config: DemoConfig):
    """The shipped model's training config, with this demo's output folder, steps and batch."""
    from softclip.training.trainer import TrainConfig

    recipe = TrainConfig.from_dict(json.loads(RECIPE.read_text())["train_config"])
    return replace(
        recipe,
        out=str(config.folder / "train"),
        steps=config.steps or recipe.steps,
        batch_size=config.batch_size or recipe.batch_size,
    )


def train_model(config: DemoConfig) -> Path:
    """tiny-vit with the SoftCLIP loss on SynthScenes, by the shipped model's recipe; resumes an interrupted run."""
    final = config.folder / "train" / "final"
    if (final / "model.safetensors").is_file():
        return final
    from softclip.training.trainer import train

    train_config = recipe_config(config)
    print(
        f"training {train_config.model} with the {train_config.loss.variant} loss for {train_config.steps} steps "
        "(SynthScenes; about 1.4 s a step on 2 CPU cores)"
    )
    return train(train_config, resume="latest")


def export(checkpoint: Path, config: DemoConfig) -> Path:
    out = config.folder / "export"
    if (out / "export.json").is_file():
        return out
    from softclip.export import export_model

    print("exporting the towers to ONNX")
    return export_model(checkpoint, out)


def render_gallery(config: DemoConfig) -> tuple[Path, Path]:
    """2,000 test scenes as PNG files, and a text file of their captions and detector tags."""
    from softclip.training.scenes import SynthConfig
    from softclip.training.synthetic import SynthScenes

    gallery, texts = config.folder / "gallery", config.folder / "texts.txt"
    if texts.is_file():
        return gallery, texts
    print(f"rendering a gallery of {config.gallery} scenes")
    data = SynthScenes(SynthConfig(split="test"), length=config.gallery, seed=GALLERY_SEED)
    gallery.mkdir(parents=True, exist_ok=True)
    lines: set[str] = set()
    for i in range(config.gallery):
        sample = data[i]
        sample.image.save(gallery / f"scene-{i:05d}.png")
        lines.update(sample.clean_captions)
        lines.update(tag.strip() for tag in sample.tags.split(","))
    write_text_atomically(texts, "\n".join(sorted(lines)) + "\n")  # written last: the gallery is complete
    return gallery, texts


def index_gallery(export_dir: Path, gallery: Path, texts: Path, config: DemoConfig) -> Path:
    from softclip.export import OnnxEncoder
    from softclip.index import build_index, format_report, index_texts

    index = config.folder / "index"
    done = index / "demo-complete"
    if done.is_file():
        return index
    print("indexing the gallery and its texts")
    encoder = OnnxEncoder(export_dir)
    print(format_report(build_index(gallery, encoder, index)))
    index_texts(index, texts.read_text().splitlines(), encoder)
    done.write_text("ok\n")
    return index


def measure(checkpoint: Path, config: DemoConfig) -> dict:
    """Zero-shot, retrieval and pointing-game numbers of the demo model (kept in metrics.json)."""
    path = config.folder / "metrics.json"
    if path.is_file():
        return json.loads(path.read_text())
    from softclip.encoder import open_encoder
    from softclip.pretrained import from_pretrained
    from softclip.training import synth_eval

    print("measuring the demo model in 3 steps (zero-shot, retrieval, pointing game)", flush=True)
    model = from_pretrained(checkpoint)
    encoder = open_encoder(model)
    n = config.eval_size
    colour_shape = 640 if n >= 500 else 64  # 10 images per colour-shape class; 1 for quick smoke runs
    steps = [
        (
            f"zero-shot labels of {n} shapes and {colour_shape} colour-shape scenes",
            lambda: synth_eval.zeroshot(encoder, n_shapes=n, n_colour_shape=colour_shape),
        ),
        (f"text-image retrieval over {n} scenes", lambda: synth_eval.retrieval_metrics(encoder, n=n)),
        (f"pointing game of Grad-CAM heatmaps on {n} scenes", lambda: synth_eval.pointing(model, n=n)),
    ]
    metrics: dict = {}
    for number, (what, run) in enumerate(steps, 1):
        started = time.perf_counter()
        print(f"  [{number}/{len(steps)}] {what} ...", end=" ", flush=True)
        metrics |= run()
        print(f"{time.perf_counter() - started:.0f} s", flush=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def build(config: DemoConfig) -> dict[str, Path]:
    """Every artefact of the demo, built or reused; returns their locations."""
    config.folder.mkdir(parents=True, exist_ok=True)
    checkpoint = demo_model(config)
    export_dir = export(checkpoint, config)
    gallery, texts = render_gallery(config)
    index = index_gallery(export_dir, gallery, texts, config)
    metrics = measure(checkpoint, config)
    summary = ", ".join(f"{k} {metrics[k]:.2f}" for k in ("colour_shape_top1", "i2t_r1", "pointing") if k in metrics)
    print(f"demo model: {summary}")
    return {"checkpoint": checkpoint, "export": export_dir, "index": index}


def where_things_are(paths: dict[str, Path], folder: Path) -> str:
    """Where the demo's artefacts are, and the command that serves the app over them."""
    start = f"softclip app --index {paths['index']} --model {paths['checkpoint']}"
    return (
        f"demo files in {folder}:\n"
        f"  model checkpoint  {paths['checkpoint']}\n"
        f"  ONNX export       {paths['export']}\n"
        f"  image index       {paths['index']}\n"
        f"start the app with:  {start}\n"
        "(or run the same `softclip demo` command without --no-launch: it reuses these files)"
    )


def run_demo(config: DemoConfig, launch: bool = True, host: str = "127.0.0.1", port: int = 7860) -> dict[str, Path]:
    """Build (or reuse) the demo and, with `launch`, serve the app until interrupted."""
    paths = build(config)
    if not launch:
        print(where_things_are(paths, config.folder), flush=True)
        return paths
    from softclip.app.app import build_app, serve

    serve(build_app(paths["index"], paths["checkpoint"], paths["export"]), host=host, port=port)
    return paths
