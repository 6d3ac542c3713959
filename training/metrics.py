"""Retrieval and zero-shot metrics: plain functions over embedding arrays, and the embedding of a data set."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from softclip.encoder import Encoder, load_pixels
from softclip.zeroshot import DEFAULT_TEMPLATES, label_embeddings


def topk_accuracy(image_embeds: np.ndarray, class_embeds: np.ndarray, targets: np.ndarray, ks=(1, 5)) -> dict:
    """Fraction of images whose true class is among the k most similar class embeddings."""
    sims = image_embeds @ class_embeds.T  # (N, C)
    ranked = np.argsort(-sims, axis=1, kind="stable")
    hits = ranked == np.asarray(targets)[:, None]
    return {f"top{k}": float(hits[:, : min(k, sims.shape[1])].any(axis=1).mean()) for k in ks}


def retrieval_recall(image_embeds: np.ndarray, text_embeds: np.ndarray, text_image: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Recall@k both ways with several captions per image; `text_image[t]` is the image of caption t.

    Image to text: an image counts when any of its captions is in its top k.
    Text to image: a caption counts when its image is in its top k.
    """
    text_image = np.asarray(text_image)
    i2t, t2i = _top_k_fits(image_embeds, text_embeds, lambda image, text: text_image[text] == image, max(ks))
    return _recall_at(i2t, t2i, ks, "r")


def matching_recall(
    image_embeds: np.ndarray, text_embeds: np.ndarray, fits: Callable[[int, int], bool], ks=(1, 5)
) -> dict:
    """Recall@k both ways where any match counts, for captions that fit many images: ``fits(image, text)``.

    Image to text: an image counts when some caption in its top k is true of it (``i2t_match_r{k}``).
    Text to image: a caption counts when some image in its top k is one it is true of (``t2i_match_r{k}``).
    """
    i2t, t2i = _top_k_fits(image_embeds, text_embeds, fits, max(ks))
    return _recall_at(i2t, t2i, ks, "match_r")


def _top_k_fits(
    image_embeds: np.ndarray, text_embeds: np.ndarray, fits: Callable[[int, int], bool], depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """Whether ``fits(image, text)`` holds for each image's top ``depth`` captions (I, depth) and each
    caption's top ``depth`` images (T, depth), best first; only those are checked."""
    sims = image_embeds @ text_embeds.T  # (I, T)
    top_texts = np.argsort(-sims, axis=1, kind="stable")[:, :depth]
    top_images = np.argsort(-sims.T, axis=1, kind="stable")[:, :depth]
    i2t = np.array([[fits(i, int(t)) for t in row] for i, row in enumerate(top_texts)], dtype=bool)
    t2i = np.array([[fits(int(i), t) for i in row] for t, row in enumerate(top_images)], dtype=bool)
    return i2t.reshape(-1, top_texts.shape[1]), t2i.reshape(-1, top_images.shape[1])


def _recall_at(i2t: np.ndarray, t2i: np.ndarray, ks, name: str) -> dict:
    metrics = {}
    for k in ks:
        metrics[f"i2t_{name}{k}"] = float(i2t[:, :k].any(axis=1).mean())
        metrics[f"t2i_{name}{k}"] = float(t2i[:, :k].any(axis=1).mean())
    return metrics


def embed_images(encoder: Encoder, images: Sequence, batch_size: int = 256) -> np.ndarray:
    """Paths or PIL images -> [N, D] in batches."""
    chunks = [
        encoder.encode_images(load_pixels(list(images[i : i + batch_size]), encoder))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, encoder.embed_dim), np.float32)


def zeroshot(
    encoder: Encoder,
    images: Sequence,
    targets: Sequence[int],
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> dict:
    """Zero-shot top-1/top-5 of `images` against `classnames` with prompt-template ensembling."""
    class_embeds = label_embeddings(encoder, list(classnames), tuple(templates))
    return topk_accuracy(embed_images(encoder, images), class_embeds, np.asarray(targets))


def retrieval(
    encoder: Encoder,
    images: Sequence,
    captions: Sequence[Sequence[str]],
    fits: Callable[[int, str], bool] | None = None,
) -> dict:
    """Retrieval recall for images each with a list of captions; with ``fits(image index, caption)``, also
    the recall that counts any image a caption is true of (``matching_recall``)."""
    texts = [text for group in captions for text in group]
    owners = np.array([i for i, group in enumerate(captions) for _ in group])
    image_embeds, text_embeds = embed_images(encoder, images), encoder.encode_texts(texts)
    metrics = retrieval_recall(image_embeds, text_embeds, owners)
    if fits is not None:
        metrics |= matching_recall(image_embeds, text_embeds, lambda image, text: fits(image, texts[text]))
    return metrics
