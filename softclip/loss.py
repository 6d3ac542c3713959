"""The SoftCLIP objective: CLIP loss, softened ROI/tag targets, relation term, symmetric KL (eqs. 1-16).

``softclip_loss`` is the pure function over L2-normalised features; ``SoftCLIPLoss`` wraps it as a module
that reads the model's output dict, gathers the global batch under ``torch.distributed`` and always works
in float32.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

VARIANTS = ("clip", "label_smoothing", "soft", "soft_relation", "softclip")
GUIDANCES = ("roi_tag", "image_text", "mix")
MAX_SCALE = 100.0  # the multiplier 1/tau is clamped here, as in CLIP

# log of the smallest normal float32: stands in for log(0) where a target is exactly one-hot (beta = 0),
# so KL(p || q) stays finite instead of infinite
_LOG_FLOOR = math.log(torch.finfo(torch.float32).tiny)


# ---------------------------------------------------------------------------------------------------------
# the pure loss


def softclip_loss(
    image_features: Tensor,
    text_features: Tensor,
    roi_features: Tensor | None,
    tag_features: Tensor | None,
    scale: Tensor | float,
    *,
    soft: bool = True,
    relation: bool = True,
    symmetric: bool = True,
    label_smoothing: float = 0.0,
    beta: float = 0.3,
    lam: float = 1.0,
    mu: float = 0.5,
    detach_targets: bool = False,
) -> dict[str, Tensor]:
    """SoftCLIP loss of one batch of N pairs; every input is L2-normalised and (N, D).

    ``scale`` is the multiplier 1/tau (already exponentiated and clamped). Returns scalar tensors:
    ``"clip"`` (eqs. 1-5, label-smoothed when ``label_smoothing`` > 0), ``"soft"`` (eqs. 6-11, 15) when
    ``soft``, ``"relation"`` (eqs. 12-15) when ``soft`` and ``relation``, and ``"loss"``: ``clip`` without
    ``soft``, else ``soft + lam * relation + mu * clip`` (eq. 16). Computed in float32 whatever the inputs.
    """
    _check_hyperparameters(beta, label_smoothing)
    with _without_autocast(image_features.device.type):
        image, text = image_features.float(), text_features.float()
        _check_pair(image, text, "image_features", "text_features")
        scale = _as_scale(scale, image.device)
        logits = scale * image @ text.T  # (N, N): row i scores image i against every text
        clip = _clip_loss_from_logits(logits, label_smoothing)
        if not soft:
            return {"loss": clip, "clip": clip}
        roi, tag = _soft_guidance(roi_features, tag_features, image.shape[0])
        targets = _target_logits(roi, tag, scale, detach_targets)
        terms = {"clip": clip, "soft": _soft_term(logits, targets, beta, symmetric)}
        total = terms["soft"] + mu * clip
        if relation:
            terms["relation"] = _relation_term(logits, targets, symmetric)
            total = total + lam * terms["relation"]
        return {"loss": total, **terms}


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Turns autocast off so the loss runs in float32 even inside a mixed-precision region."""
    if device_type in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _as_scale(scale: Tensor | float, device: torch.device) -> Tensor:
    """The multiplier as a float32 scalar tensor, keeping its gradient."""
    scale = scale.float().to(device) if isinstance(scale, Tensor) else torch.tensor(float(scale), device=device)
    if scale.numel() != 1:
        raise ValueError(f"scale must be a scalar, got shape {tuple(scale.shape)}")
    return scale.reshape(())


def _check_hyperparameters(beta: float, label_smoothing: float) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")


def _check_pair(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Both (N, D) with the same N and D."""
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{name_a} and {name_b} must be (N, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape")
    if a.shape[0] == 0:
        raise ValueError(f"{name_a} is an empty batch")


def _soft_guidance(roi: Tensor | None, tag: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
    """The features the soft targets are built from, checked and cast to float32."""
    if roi is None or tag is None:
        raise ValueError("soft targets need ROI and tag features (roi_features and tag_features); got None")
    roi, tag = roi.float(), tag.float()
    _check_pair(roi, tag, "roi_features", "tag_features")
    if roi.shape[0] != n:
        raise ValueError(f"roi_features/tag_features have {roi.shape[0]} rows, image_features {n}")
    if n < 2:
        raise ValueError("soft targets need a batch of at least 2 pairs")
    return roi, tag


def _target_logits(roi: Tensor, tag: Tensor, scale: Tensor, detach: bool) -> tuple[Tensor, Tensor]:
    """Logits of p(R,R) and p(A,A), each (N, N); detached when the targets carry no gradient."""
    with torch.no_grad() if detach else contextlib.nullcontext():
        return scale * roi @ roi.T, scale * tag @ tag.T


def _clip_loss_from_logits(logits: Tensor, label_smoothing: float) -> Tensor:
    """Mean cross-entropy of p(I,T) (rows of ``logits``) and p(T,I) (rows of its transpose), eqs. 1-5."""
    log_targets = _smoothed_log_targets(logits.shape[0], label_smoothing, logits.device)
    image_to_text = _cross_entropy(log_targets, logits.log_softmax(dim=1))
    text_to_image = _cross_entropy(log_targets, logits.T.log_softmax(dim=1))
    return (image_to_text + text_to_image) / 2


def _smoothed_log_targets(n: int, alpha: float, device: torch.device) -> Tensor:
    """log y~ with y~ = (1 - alpha) y + alpha / (N - 1) (1 - y); exact zeros become ``_LOG_FLOOR``."""
    eye = torch.eye(n, dtype=torch.bool, device=device)
    if alpha == 0.0:
        return torch.where(eye, 0.0, _LOG_FLOOR)
    if n < 2:
        raise ValueError("label smoothing needs a batch of at least 2 pairs")
    return torch.where(eye, math.log1p(-alpha), math.log(alpha / (n - 1)))


def _cross_entropy(log_targets: Tensor, log_probs: Tensor) -> Tensor:
    """-sum_j q_ij log p_ij, mean over rows i."""
    return -(log_targets.exp() * log_probs).sum(dim=1).mean()


def _kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(q || p) per row, mean over rows; log-space inputs, so zero-probability entries stay finite."""
    return (log_q.exp() * (log_q - log_p)).sum(dim=1).mean()


def _divergence(log_targets: Tensor, log_probs: Tensor, symmetric: bool) -> Tensor:
    """KL(q || p), or (KL(p || q) + KL(q || p)) / 2 when ``symmetric`` (eq. 15)."""
    forward = _kl(log_targets, log_probs)
    if not symmetric:
        return forward
    return (forward + _kl(log_probs, log_targets)) / 2


def _soft_target_log_probs(target_logits: Tensor, beta: float) -> Tensor:
    """log q with q = (1 - beta) y + beta softmax(target_logits), (N, N), eqs. 8-9.

    Off the diagonal log q = log beta + log_softmax, which stays finite where the softmax underflows.
    """
    if beta == 0.0:
        return _smoothed_log_targets(target_logits.shape[0], 0.0, target_logits.device)
    log_mix = math.log(beta) + target_logits.log_softmax(dim=1)
    if beta == 1.0:
        return log_mix
    one_hot_part = torch.full_like(log_mix.diagonal(), math.log1p(-beta))
    return log_mix.diagonal_scatter(torch.logaddexp(log_mix.diagonal(), one_hot_part))


def _soft_term(logits: Tensor, targets: tuple[Tensor, Tensor], beta: float, symmetric: bool) -> Tensor:
    """Average of D(q_v2l, p(I,T)) and D(q_l2v, p(T,I)), eqs. 10-11."""
    roi_logits, tag_logits = targets
    vision_to_language = _divergence(_soft_target_log_probs(roi_logits, beta), logits.log_softmax(dim=1), symmetric)
    language_to_vision = _divergence(_soft_target_log_probs(tag_logits, beta), logits.T.log_softmax(dim=1), symmetric)
    return (vision_to_language + language_to_vision) / 2


def _off_diagonal(matrix: Tensor) -> Tensor:
    """(N, N) -> (N, N-1): each row without its diagonal entry, order kept."""
    n = matrix.shape[0]
    return matrix.masked_select(~torch.eye(n, dtype=torch.bool, device=matrix.device)).view(n, n - 1)


def _relation_term(logits: Tensor, targets: tuple[Tensor, Tensor], symmetric: bool) -> Tensor:
    """Soft loss over the N-1 negatives only, renormalised, eqs. 12-14.

    Renormalising q's off-diagonal part removes both the (1 - beta) y term and beta, so the targets are
    the softmax of the off-diagonal target logits.
    """
    roi_logits, tag_logits = targets

    def log_negatives(matrix: Tensor) -> Tensor:
        return _off_diagonal(matrix).log_softmax(dim=1)  # (N, N-1)

    vision_to_language = _divergence(log_negatives(roi_logits), log_negatives(logits), symmetric)
    language_to_vision = _divergence(log_negatives(tag_logits), log_negatives(logits.T), symmetric)
    return (vision_to_language + language_to_vision) / 2


# ---------------------------------------------------------------------------------------------------------
# configuration of the objective

# each variant's keyword flags for softclip_loss; label_smoothing is filled in by LossConfig
VARIANT_FLAGS: dict[str, dict[str, bool]] = {
    "clip": {"soft": False},
    "label_smoothing": {"soft": False},
    "soft": {"relation": False, "symmetric": False},
    "soft_relation": {"symmetric": False},
    "softclip": {},
}
LABEL_SMOOTHING_BY_VARIANT = {"label_smoothing": 0.2}  # alpha of eq. 5; every other variant uses one-hot
# Defaults of the two switches the paper leaves open, for the soft-target variants; measured on SynthScenes
# (docs/method.md, "Choices the paper leaves open"): detached targets plus ROI-tag alignment train best.
SOFT_DEFAULT_DETACH_TARGETS = True
SOFT_DEFAULT_ROI_TAG_ALIGN = 1.0


@dataclass
class LossConfig:
    """Which objective to train with, and its weights.

    ``label_smoothing=None`` means the variant's default (0.2 for ``"label_smoothing"``, 0 otherwise).
    ``guidance`` picks what the soft targets are built from: ROI and tag features (``"roi_tag"``), image
    and text features (``"image_text"``) or ``gamma * L(R,A) + (1 - gamma) * L(I,T)`` (``"mix"``).
    ``roi_tag_align`` weights a plain CLIP loss between ROI and tag features, added to the total.
    ``detach_targets=None`` and ``roi_tag_align=None`` mean the measured defaults for soft-target variants
    (``SOFT_DEFAULT_*``) and no detaching / no alignment for the CLIP variants.
    """

    variant: str = "softclip"
    beta: float = 0.3
    lam: float = 1.0
    mu: float = 0.5
    label_smoothing: float | None = None
    guidance: str = "roi_tag"
    gamma: float = 0.5
    detach_targets: bool | None = None
    roi_tag_align: float | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown loss variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.guidance not in GUIDANCES:
            raise ValueError(f"unknown guidance {self.guidance!r}; choose one of {', '.join(GUIDANCES)}")
        _check_hyperparameters(self.beta, self.smoothing)
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")
        for name in ("lam", "mu", "roi_tag_align"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def smoothing(self) -> float:
        """The label-smoothing alpha actually used."""
        if self.label_smoothing is not None:
            return self.label_smoothing
        return LABEL_SMOOTHING_BY_VARIANT.get(self.variant, 0.0)

    @property
    def targets_detached(self) -> bool:
        """Whether the soft targets carry no gradient."""
        if self.detach_targets is not None:
            return self.detach_targets
        return SOFT_DEFAULT_DETACH_TARGETS and VARIANT_FLAGS[self.variant].get("soft", True)

    @property
    def align_weight(self) -> float:
        """The weight of the ROI-tag CLIP loss actually used."""
        if self.roi_tag_align is not None:
            return self.roi_tag_align
        return SOFT_DEFAULT_ROI_TAG_ALIGN if VARIANT_FLAGS[self.variant].get("soft", True) else 0.0

    @property
    def soft(self) -> bool:
        """Whether the variant uses soft targets (needs ROI/tag or image/text guidance)."""
        return self.loss_kwargs()["soft"]

    def loss_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``softclip_loss`` for this variant."""
        kwargs = {"soft": True, "relation": True, "symmetric": True, "beta": self.beta, "lam": self.lam}
        kwargs.update(mu=self.mu, label_smoothing=self.smoothing, detach_targets=self.targets_detached)
        kwargs.update(VARIANT_FLAGS[self.variant])
        return kwargs

    def needs_roi_tag(self) -> bool:
        """Whether the loss reads ``roi_features`` and ``tag_features``."""
        return self.align_weight > 0 or (self.soft and self.guidance != "image_text")


# ---------------------------------------------------------------------------------------------------------
# the module the trainer uses


class SoftCLIPLoss(nn.Module):
    """The configured objective over the model's output dict, on the global batch, in float32.

    Under ``torch.distributed`` (initialised, world size > 1) every feature set is gathered from every rank
    with gradients; the backward pass sums each rank's gradient for the local rows, so after DDP averages
    parameter gradients over ranks they equal those of a single process on the concatenated batch.
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()

    def forward(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """``outputs`` holds ``image_features``, ``text_features``, ``logit_scale`` (the raw parameter) and,
        when the variant needs them, ``roi_features`` and ``tag_features``. Returns ``softclip_loss``'s dict,
        plus ``"roi_tag_align"`` when that weight is > 0."""
        scale = _scale_from_outputs(outputs)
        with _without_autocast(scale.device.type):
            features = gather_features(self._features(outputs))
            return self._loss(features, scale)

    def _features(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        names = ["image_features", "text_features"]
        if self.config.needs_roi_tag():
            names += ["roi_features", "tag_features"]
        missing = [name for name in names if outputs.get(name) is None]
        if missing:
            raise ValueError(f"loss variant {self.config.variant!r} needs {', '.join(missing)} in the outputs")
        return {name: outputs[name].float() for name in names}

    def _loss(self, features: dict[str, Tensor], scale: Tensor) -> dict[str, Tensor]:
        image, text = features["image_features"], features["text_features"]
        roi, tag = features.get("roi_features"), features.get("tag_features")
        out = self._guided_loss(image, text, roi, tag, scale)
        if self.config.align_weight > 0:
            _check_pair(roi, tag, "roi_features", "tag_features")
            out["roi_tag_align"] = _clip_loss_from_logits(scale * roi @ tag.T, 0.0)
            out["loss"] = out["loss"] + self.config.align_weight * out["roi_tag_align"]
        return out

    def _guided_loss(
        self, image: Tensor, text: Tensor, roi: Tensor | None, tag: Tensor | None, scale: Tensor
    ) -> dict[str, Tensor]:
        kwargs, guidance = self.config.loss_kwargs(), self.config.guidance
        if not kwargs["soft"] or guidance == "roi_tag":
            return softclip_loss(image, text, roi, tag, scale, **kwargs)
        from_image_text = softclip_loss(image, text, image, text, scale, **kwargs)
        if guidance == "image_text":
            return from_image_text
        from_roi_tag = softclip_loss(image, text, roi, tag, scale, **kwargs)
        gamma = self.config.gamma
        return {key: gamma * from_roi_tag[key] + (1 - gamma) * from_image_text[key] for key in from_roi_tag}


def _scale_from_outputs(outputs: dict[str, Tensor]) -> Tensor:
    """The multiplier 1/tau from the raw ``logit_scale`` parameter."""
    if outputs.get("logit_scale") is None:
        raise ValueError("the model outputs need 'logit_scale' (the raw log-scale parameter)")
    return outputs["logit_scale"].float().exp().clamp(max=MAX_SCALE)


# ---------------------------------------------------------------------------------------------------------
# global batch under torch.distributed


def gather_features(features: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each (n_rank, D) tensor concatenated over ranks in rank order, with gradients; unchanged when not
    distributed. Ranks may hold different batch sizes. One collective for all tensors."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return features
    names = list(features)
    widths = [features[name].shape[1] for name in names]
    local = torch.cat([features[name] for name in names], dim=1)  # (n_local, sum of D)
    gathered = _AllGatherWithGrad.apply(local, _batch_sizes(local))
    return dict(zip(names, gathered.split(widths, dim=1), strict=True))


def _batch_sizes(local: Tensor) -> list[int]:
    """Every rank's number of rows."""
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of the global rows and keeps the local slice."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, sizes: list[int]) -> Tensor:
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        padded = local.new_zeros(max(sizes), local.shape[1])  # all_gather needs equal shapes
        padded[: local.shape[0]] = local
        slots = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(slots, padded)
        return torch.cat([slot[:n] for slot, n in zip(slots, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()  # (sum of sizes, C): this rank's gradient of every global row
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None
