"""SynthScenes evaluation: zero-shot shapes and colour-shapes (held-out compositions apart), retrieval, pointing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from softclip.encoder import Encoder, open_encoder
from softclip.training import eval_sets
from softclip.training.captions import caption_fits
from softclip.training.metrics import embed_images, retrieval, topk_accuracy
from softclip.zeroshot import label_embeddings


def zeroshot_metrics(encoder: Encoder, data: eval_sets.ZeroShotSet, prefix: str) -> dict:
    """Top-1/top-5 over all classes; for colour-shape also top-1 on seen and on held-out compositions."""
    class_embeds = label_embeddings(encoder, data.classnames, tuple(data.templates))
    image_embeds = embed_images(encoder, data.images)
    labels = np.asarray(data.labels)
    metrics = {f"{prefix}_{k}": v for k, v in topk_accuracy(image_embeds, class_embeds, labels).items()}
    if data.held_out_classes:
        held = np.isin(labels, data.held_out_classes)
        for name, rows in (("seen", ~held), ("held_out", held)):
            metrics[f"{prefix}_{name}_top1"] = topk_accuracy(image_embeds[rows], class_embeds, labels[rows], ks=(1,))[
                "top1"
            ]
    return metrics


def zeroshot(encoder: Encoder, n_shapes: int = 800, n_colour_shape: int = 1280, image_size: int = 64) -> dict:
    metrics = zeroshot_metrics(encoder, eval_sets.zeroshot_shapes(n_shapes, image_size=image_size), "shape")
    colour_shape = eval_sets.zeroshot_colour_shape(n_colour_shape, image_size=image_size)
    return metrics | zeroshot_metrics(encoder, colour_shape, "colour_shape")


def retrieval_metrics(encoder: Encoder, n: int = 1000, image_size: int = 64) -> dict:
    """R@k both ways counting only each caption's own scene, and counting any scene the caption is true of.

    SynthScenes captions mention some of a scene's objects, so one caption often fits several scenes
    ("a hexagon."): instance-level recall counts those as misses, the ``*_match_*`` recall does not.
    """
    data = eval_sets.retrieval_set(n, image_size=image_size)
    return retrieval(encoder, data.images, data.captions, fits=lambda i, caption: caption_fits(caption, data.scenes[i]))


def pointing(model, n: int = 500, image_size: int = 64) -> dict:
    """Pointing game of the Grad-CAM heatmaps (needs a torch checkpoint), with a random-peak baseline."""
    from softclip.pointing import pointing_game, random_peak_baseline

    data = eval_sets.pointing_set(n, image_size=image_size)
    scenes = list(zip(data.images, data.queries, data.boxes))
    return {"pointing": pointing_game(model, scenes), "pointing_random": random_peak_baseline(data.boxes, image_size)}


def evaluate(model, task: str) -> dict:
    """`softclip eval MODEL --data synth`: `model` is a checkpoint or export folder, a model or an encoder.

    The pointing game needs the torch checkpoint (Grad-CAM); the other tasks take any encoder.
    """
    if task == "pointing":
        from softclip.pretrained import from_pretrained

        return pointing(from_pretrained(model) if isinstance(model, str | Path) else model)
    if task == "zeroshot":
        return zeroshot(open_encoder(model))
    if task == "retrieval":
        return retrieval_metrics(open_encoder(model))
    raise ValueError(f"unknown task {task!r}: use zeroshot, retrieval or pointing")


def quick(encoder: Encoder) -> dict:
    """A cheaper evaluation for use during training: smaller sets, top-1 and R@1 only."""
    metrics = zeroshot(encoder, n_shapes=400, n_colour_shape=640)
    recall = retrieval_metrics(encoder, n=500)
    keep = ("shape_top1", "colour_shape_top1", "colour_shape_seen_top1", "colour_shape_held_out_top1")
    return {k: metrics[k] for k in keep} | {k: recall[k] for k in ("i2t_r1", "t2i_r1", "i2t_match_r1", "t2i_match_r1")}
