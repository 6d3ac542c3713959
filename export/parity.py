"""Parity of an exported encoder with the torch model it came from, measured on real preprocessed images.

``verify_parity`` compares any two encoders (see ``softclip.encoder.Encoder``) on the same images and
captions: the largest absolute difference of their embeddings, the mean and smallest cosine between
matching embeddings, and how often the nearest neighbours agree (the top-1 caption of each image and the
top-1 image of each caption). ``check_parity`` refuses an export whose numbers are poor for its precision:

- fp32: max abs difference at most 1e-4 (the same arithmetic, reordered; anything more is a bug) and
  top-1 ranking agreement at least 0.9,
- fp16: max abs difference at most 0.05 (embeddings are unit vectors, so 0.05 per coordinate is a large
  error) and ranking agreement at least 0.9,
- int8: mean cosine to the fp32 embeddings at least 0.99 and the smallest at least 0.98. Quantising the
  weights perturbs every embedding a little, so int8 is judged by how far each embedding moves, not by
  ranking agreement: on the parity samples the top-1 margins of a model can be smaller than any such
  perturbation (an untrained model's scores are all near ties), which says nothing about the export.
  The agreement is still measured and recorded.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from softclip.encoder import Encoder, load_pixels
from softclip.export.folder import ExportError


@dataclass(frozen=True)
class Tolerance:
    """The bounds an export of one precision must meet; None: not checked for that precision."""

    max_abs_diff: float | None = None
    min_ranking_agreement: float | None = None
    min_mean_cosine: float | None = None
    min_cosine: float | None = None


TOLERANCES = {
    "fp32": Tolerance(max_abs_diff=1e-4, min_ranking_agreement=0.9),
    "fp16": Tolerance(max_abs_diff=0.05, min_ranking_agreement=0.9),
    "int8": Tolerance(min_mean_cosine=0.99, min_cosine=0.98),
}

PARITY_COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (130, 50, 170),
    "orange": (250, 140, 20),
}
PARITY_SHAPES = ("circle", "square", "triangle", "stripes")
PARITY_SIZES = ((96, 96), (128, 80), (70, 110), (64, 64), (150, 100))  # non-square ones exercise the centre crop


class ParityError(ExportError):
    """An export refused because its embeddings are too far from the torch model's."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ParityReport:
    """How closely a candidate encoder reproduces a reference encoder."""

    precision: str
    max_abs_diff: float  # over image and text embeddings
    image_max_abs_diff: float
    text_max_abs_diff: float
    min_cosine: float  # between the two embeddings of one image or one caption, over both
    mean_cosine: float  # over images and captions
    image_mean_cosine: float
    text_mean_cosine: float
    ranking_agreement: float  # fraction of the images' and captions' top-1 neighbours that agree
    images: int
    texts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def problems(self) -> list[str]:
        """What makes this parity poor for its precision; empty when it is good enough."""
        tolerance = TOLERANCES[self.precision]
        upper = [("max abs difference", self.max_abs_diff, tolerance.max_abs_diff)]
        lower = [
            ("top-1 ranking agreement", self.ranking_agreement, tolerance.min_ranking_agreement),
            ("mean cosine", self.mean_cosine, tolerance.min_mean_cosine),
            ("min cosine", self.min_cosine, tolerance.min_cosine),
        ]
        # Both comparisons are written so that NaN fails them.
        found = [
            f"{name} {value:.5g} > {bound:g}"
            for name, value, bound in upper
            if bound is not None and not value <= bound
        ]
        found += [
            f"{name} {value:.5g} < {bound:g}"
            for name, value, bound in lower
            if bound is not None and not value >= bound
        ]
        return found


def draw_scene(shape: str, colour: str, background: str, size: tuple[int, int]) -> Image.Image:
    """One RGB image: a ``colour`` ``shape`` filling the middle of a ``background`` canvas of ``size``."""
    width, height = size
    image = Image.new("RGB", size, PARITY_COLOURS[background])
    draw = ImageDraw.Draw(image)
    side = min(width, height) * 0.35
    box = (width / 2 - side, height / 2 - side, width / 2 + side, height / 2 + side)
    fill = PARITY_COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(box[0], box[3]), (box[2], box[3]), (width / 2, box[1])], fill=fill)
    else:
        for x in range(0, width, 12):
            draw.rectangle((x, 0, x + 5, height), fill=fill)
    return image


def parity_samples(count: int = 8, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """``count`` varied images (shapes on backgrounds, several sizes) and a caption for each."""
    rng = random.Random(seed)
    images, captions = [], []
    for index in range(count):
        shape = PARITY_SHAPES[index % len(PARITY_SHAPES)]
        colour, background = rng.sample(sorted(PARITY_COLOURS), 2)
        images.append(draw_scene(shape, colour, background, PARITY_SIZES[index % len(PARITY_SIZES)]))
        captions.append(f"a {colour} {shape} on a {background} background")
    return images, captions


def top1_agreement(reference: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray]) -> float:
    """Fraction of images whose top-1 caption, and captions whose top-1 image, are the same for both encoders.

    Each argument is (image embeddings [N, D], text embeddings [M, D]).
    """
    reference_scores = reference[0] @ reference[1].T  # [N, M]
    candidate_scores = candidate[0] @ candidate[1].T
    same_caption = reference_scores.argmax(axis=1) == candidate_scores.argmax(axis=1)  # [N]
    same_image = reference_scores.argmax(axis=0) == candidate_scores.argmax(axis=0)  # [M]
    return float(np.concatenate([same_caption, same_image]).mean())


def _embed(encoder: Encoder, images: list[Image.Image], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    image_embeds = encoder.encode_images(load_pixels(images, encoder))
    return image_embeds.astype(np.float64), encoder.encode_texts(texts).astype(np.float64)


def verify_parity(
    reference: Encoder,
    candidate: Encoder,
    precision: str = "fp32",
    images: list[Image.Image] | None = None,
    texts: list[str] | None = None,
) -> ParityReport:
    """Measure how closely ``candidate`` reproduces ``reference``; each preprocesses the images itself.

    Images and texts default to ``parity_samples()``. ``precision`` names the candidate's weights and
    selects the tolerance ``ParityReport.problems`` applies.
    """
    if precision not in TOLERANCES:
        raise ValueError(f"precision must be one of {tuple(TOLERANCES)}, got {precision!r}")
    default_images, default_texts = parity_samples()
    images = default_images if images is None else images
    texts = default_texts if texts is None else texts
    if not images or not texts:
        raise ValueError("verify_parity needs at least one image and one text")
    expected, measured = _embed(reference, images, texts), _embed(candidate, images, texts)
    image_diff, text_diff = (float(np.abs(e - m).max()) for e, m in zip(expected, measured))
    image_cosines, text_cosines = ((e * m).sum(axis=1) for e, m in zip(expected, measured))  # [N], [M]
    cosines = np.concatenate([image_cosines, text_cosines])
    return ParityReport(
        precision=precision,
        max_abs_diff=max(image_diff, text_diff),
        image_max_abs_diff=image_diff,
        text_max_abs_diff=text_diff,
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
        image_mean_cosine=float(image_cosines.mean()),
        text_mean_cosine=float(text_cosines.mean()),
        ranking_agreement=top1_agreement(expected, measured),
        images=len(images),
        texts=len(texts),
    )


def check_parity(report: ParityReport) -> ParityReport:
    """``report`` when its parity is good enough for its precision, else ``ParityError`` saying why."""
    problems = report.problems()
    if problems:
        measured = (
            f"measured on {report.images} images and {report.texts} texts: max abs difference "
            f"{report.max_abs_diff:.3g}, mean cosine {report.mean_cosine:.5f}, min cosine {report.min_cosine:.5f}, "
            f"ranking agreement {report.ranking_agreement:.3f}"
        )
        raise ParityError(
            f"{report.precision} export refused, its embeddings are too far from the torch model's: "
            f"{'; '.join(problems)} ({measured})",
            report,
        )
    return report
