"""The SoftCLIP objective against hand computations (explicit loops in float64), gradients, dtypes, DDP."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softclip.loss import VARIANTS, LossConfig, SoftCLIPLoss, softclip_loss

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_loss_worker.py")
SCALE = 5.0


# ---------------------------------------------------------------------------------------------------------
# the hand computation: plain Python loops over a batch of N pairs, float64


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [e / sum(exps) for e in exps]


def similarity(a: np.ndarray, b: np.ndarray, scale: float) -> list[list[float]]:
    n = len(a)
    return [[scale * float(np.dot(a[i], b[j])) for j in range(n)] for i in range(n)]


def row_softmaxes(logits: list[list[float]]) -> list[list[float]]:
    return [softmax(row) for row in logits]


def transpose(matrix: list[list[float]]) -> list[list[float]]:
    return [list(column) for column in zip(*matrix, strict=True)]


def cross_entropy(targets: list[list[float]], probs: list[list[float]]) -> float:
    """-sum_j q_ij log p_ij, mean over rows."""
    n, total = len(targets), 0.0
    for i in range(n):
        total -= sum(targets[i][j] * math.log(probs[i][j]) for j in range(n))
    return total / n


def kl(q: list[list[float]], p: list[list[float]]) -> float:
    """KL(q || p) per row (terms with q = 0 contribute 0), mean over rows."""
    total = 0.0
    for q_row, p_row in zip(q, p, strict=True):
        total += sum(qi * math.log(qi / pi) for qi, pi in zip(q_row, p_row, strict=True) if qi > 0)
    return total / len(q)


def divergence(q: list[list[float]], p: list[list[float]], symmetric: bool) -> float:
    return (kl(p, q) + kl(q, p)) / 2 if symmetric else kl(q, p)


def smoothed_targets(n: int, alpha: float) -> list[list[float]]:
    return [[1 - alpha if i == j else alpha / (n - 1) for j in range(n)] for i in range(n)]


def soft_targets(features: np.ndarray, scale: float, beta: float) -> list[list[float]]:
    guidance = row_softmaxes(similarity(features, features, scale))
    n = len(features)
    return [[(1 - beta) * (i == j) + beta * guidance[i][j] for j in range(n)] for i in range(n)]


def negatives_renormalised(matrix: list[list[float]]) -> list[list[float]]:
    rows = []
    for i, row in enumerate(matrix):
        negatives = [x for j, x in enumerate(row) if j != i]
        rows.append([x / sum(negatives) for x in negatives])
    return rows


def hand_loss(image, text, roi, tag, scale, *, soft=True, relation=True, symmetric=True, label_smoothing=0.0,
              beta=0.3, lam=1.0, mu=0.5) -> dict[str, float]:  # fmt: skip
    """Eqs. 1-16 written out directly."""
    image, text = np.asarray(image, np.float64), np.asarray(text, np.float64)
    p_it = row_softmaxes(similarity(image, text, scale))
    p_ti = row_softmaxes(similarity(text, image, scale))
    y = smoothed_targets(len(image), label_smoothing)
    clip = (cross_entropy(y, p_it) + cross_entropy(y, p_ti)) / 2
    if not soft:
        return {"loss": clip, "clip": clip}
    q_v2l = soft_targets(np.asarray(roi, np.float64), scale, beta)
    q_l2v = soft_targets(np.asarray(tag, np.float64), scale, beta)
    out = {"clip": clip, "soft": (divergence(q_v2l, p_it, symmetric) + divergence(q_l2v, p_ti, symmetric)) / 2}
    out["loss"] = out["soft"] + mu * clip
    if relation:
        v2l = divergence(negatives_renormalised(q_v2l), negatives_renormalised(p_it), symmetric)
        l2v = divergence(negatives_renormalised(q_l2v), negatives_renormalised(p_ti), symmetric)
        out["relation"] = (v2l + l2v) / 2
        out["loss"] += lam * out["relation"]
    return out


def random_features(n: int = 4, dim: int = 6, seed: int = 0, requires_grad: bool = False) -> list[torch.Tensor]:
    """image, text, roi, tag: each (n, dim), L2-normalised."""
    generator = torch.Generator().manual_seed(seed)
    features = [F.normalize(torch.randn(n, dim, generator=generator), dim=1) for _ in range(4)]
    return [f.requires_grad_(requires_grad) for f in features]


def model_outputs(features: list[torch.Tensor], scale: float = SCALE) -> dict[str, torch.Tensor]:
    names = ("image_features", "text_features", "roi_features", "tag_features")
    return {**dict(zip(names, features, strict=True)), "logit_scale": torch.tensor(math.log(scale))}


def assert_matches(got: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == torch.float32
        assert got[key].item() == pytest.approx(value, rel=1e-5, abs=1e-6), key


# ---------------------------------------------------------------------------------------------------------
# the CLIP term


def test_clip_loss_on_orthonormal_features_has_closed_form():
    # p(I,T)_ii = e^s / (e^s + 2) for three orthonormal pairs, so the loss is log(1 + 2 e^-s)
    basis = torch.eye(3)
    out = softclip_loss(basis, basis, None, None, torch.tensor(SCALE), soft=False)
    assert out["loss"].item() == pytest.approx(math.log(1 + 2 * math.exp(-SCALE)), rel=1e-5)
    assert set(out) == {"loss", "clip"}


def test_clip_loss_equals_symmetric_cross_entropy():
    image, text, _, _ = random_features()
    logits = SCALE * image @ text.T
    labels = torch.arange(4)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    out = softclip_loss(image, text, None, None, torch.tensor(SCALE), soft=False)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["clip"].item() == out["loss"].item()


def test_label_smoothing_matches_manual_computation():
    image, text, _, _ = random_features()
    alpha, n = 0.2, 4
    logits = (SCALE * image @ text.T).double().numpy()
    total = 0.0
    for matrix in (logits, logits.T):
        for i in range(n):
            log_p = matrix[i] - math.log(sum(math.exp(x) for x in matrix[i]))
            total -= sum((1 - alpha if j == i else alpha / (n - 1)) * log_p[j] for j in range(n))
    expected = total / (2 * n)
    out = softclip_loss(image, text, None, None, SCALE, soft=False, label_smoothing=alpha)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    # eq. 5 spreads alpha over the N-1 negatives only, unlike F.cross_entropy's label_smoothing
    torch_style = F.cross_entropy(SCALE * image @ text.T, torch.arange(n), label_smoothing=alpha)
    assert abs(out["loss"].item() - torch_style.item()) > 1e-3


# ---------------------------------------------------------------------------------------------------------
# soft, relation and symmetric terms against the hand computation


@pytest.mark.parametrize("n", [3, 4])
@pytest.mark.parametrize("symmetric", [False, True])
def test_soft_and_relation_terms_match_hand_computation(n, symmetric):
    features = random_features(n=n, seed=n)
    expected = hand_loss(*features, SCALE, symmetric=symmetric, beta=0.3, lam=0.7, mu=0.4)
    assert_matches(softclip_loss(*features, SCALE, symmetric=symmetric, beta=0.3, lam=0.7, mu=0.4), expected)


def test_relation_term_is_kl_over_renormalised_negatives():
    image, text, roi, tag = (f.double().numpy() for f in random_features(n=3, seed=7))
    # written out for N = 3: row i keeps the two negatives j != i, renormalised to sum to 1
    total = 0.0
    for predictor, guide in (((image, text), roi), ((text, image), tag)):
        for i in range(3):
            negatives = [j for j in range(3) if j != i]
            p = np.array([math.exp(SCALE * predictor[0][i] @ predictor[1][j]) for j in negatives])
            q = np.array([math.exp(SCALE * guide[i] @ guide[j]) for j in negatives])
            p, q = p / p.sum(), q / q.sum()
            total += float(np.sum(q * np.log(q / p)))
    features = [torch.from_numpy(f).float() for f in (image, text, roi, tag)]
    for beta in (0.1, 0.3, 0.9):  # renormalising removes beta from the relation targets
        out = softclip_loss(*features, SCALE, symmetric=False, beta=beta)
        assert out["relation"].item() == pytest.approx(total / 6, rel=1e-5)


def test_symmetric_kl_averages_both_directions():
    features = random_features(seed=3)
    forward = softclip_loss(*features, SCALE, symmetric=False)
    both = softclip_loss(*features, SCALE, symmetric=True)
    assert both["soft"].item() != pytest.approx(forward["soft"].item(), rel=1e-3)
    image, text, roi, tag = (f.double().numpy() for f in features)
    p_it = row_softmaxes(similarity(image, text, SCALE))
    p_ti = row_softmaxes(similarity(text, image, SCALE))
    q_v2l, q_l2v = soft_targets(roi, SCALE, 0.3), soft_targets(tag, SCALE, 0.3)
    reverse = (kl(p_it, q_v2l) + kl(p_ti, q_l2v)) / 2
    expected = (forward["soft"].item() + reverse) / 2
    assert both["soft"].item() == pytest.approx(expected, rel=1e-5)


def test_total_combines_terms_with_lambda_and_mu():
    out = softclip_loss(*random_features(seed=4), SCALE, lam=0.25, mu=2.0)
    expected = out["soft"] + 0.25 * out["relation"] + 2.0 * out["clip"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    without_relation = softclip_loss(*random_features(seed=4), SCALE, relation=False, lam=0.25, mu=2.0)
    assert "relation" not in without_relation
    assert without_relation["loss"].item() == pytest.approx((out["soft"] + 2.0 * out["clip"]).item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# the variants through LossConfig and SoftCLIPLoss

VARIANT_EXPECTATIONS = {
    "clip": {"soft": False},
    "label_smoothing": {"soft": False, "label_smoothing": 0.2},
    "soft": {"relation": False, "symmetric": False},
    "soft_relation": {"symmetric": False},
    "softclip": {},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_matches_hand_computation(variant):
    features = random_features(seed=11)
    out = SoftCLIPLoss(LossConfig(variant=variant, detach_targets=False, roi_tag_align=0.0))(model_outputs(features))
    assert_matches(out, hand_loss(*features, SCALE, **VARIANT_EXPECTATIONS[variant]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_maps_to_loss_flags(variant):
    kwargs = LossConfig(variant=variant, detach_targets=False, roi_tag_align=0.0).loss_kwargs()
    defaults = {"soft": True, "relation": True, "symmetric": True, "label_smoothing": 0.0}
    for key, value in {**defaults, **VARIANT_EXPECTATIONS[variant]}.items():
        assert kwargs[key] == value, key
    assert (kwargs["beta"], kwargs["lam"], kwargs["mu"], kwargs["detach_targets"]) == (0.3, 1.0, 0.5, False)


def test_scale_comes_from_raw_logit_scale_clamped_at_100():
    features = random_features(seed=12)
    outputs = {**model_outputs(features), "logit_scale": torch.tensor(math.log(1000.0))}
    out = SoftCLIPLoss(LossConfig(detach_targets=False, roi_tag_align=0.0))(outputs)
    assert_matches(out, hand_loss(*features, 100.0))


def test_image_text_guidance_builds_targets_from_image_and_text():
    image, text, roi, tag = random_features(seed=13)
    outputs = model_outputs([image, text, None, None])  # no ROI or tag needed for this guidance
    out = SoftCLIPLoss(LossConfig(guidance="image_text", detach_targets=False, roi_tag_align=0.0))(outputs)
    assert_matches(out, hand_loss(image, text, image, text, SCALE))


def test_mix_guidance_weights_both_target_sources_by_gamma():
    image, text, roi, tag = random_features(seed=14)
    out = SoftCLIPLoss(LossConfig(guidance="mix", gamma=0.25, detach_targets=False, roi_tag_align=0.0))(
        model_outputs([image, text, roi, tag])
    )
    from_roi_tag = hand_loss(image, text, roi, tag, SCALE)
    from_image_text = hand_loss(image, text, image, text, SCALE)
    assert_matches(out, {k: 0.25 * from_roi_tag[k] + 0.75 * from_image_text[k] for k in from_roi_tag})


def test_roi_tag_align_adds_a_clip_loss_between_rois_and_tags():
    features = random_features(seed=15)
    _, _, roi, tag = features
    out = SoftCLIPLoss(LossConfig(roi_tag_align=0.5, detach_targets=False))(model_outputs(features))
    logits, labels = SCALE * roi @ tag.T, torch.arange(4)
    align = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert out["roi_tag_align"].item() == pytest.approx(align.item(), rel=1e-5)
    expected = hand_loss(*features, SCALE)["loss"] + 0.5 * align.item()
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert "roi_tag_align" not in SoftCLIPLoss(LossConfig(detach_targets=False, roi_tag_align=0.0))(
        model_outputs(features)
    )


# ---------------------------------------------------------------------------------------------------------
# numerics: zero-probability targets, gradients, low precision


def test_zero_probability_targets_give_finite_loss_and_gradients():
    # beta = 0 makes q one-hot; scale 100 with opposite ROI features makes the softmax underflow to 0
    image, text, _, _ = random_features(seed=16, requires_grad=True)
    roi = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]).requires_grad_(True)
    for beta in (0.0, 0.3, 1.0):
        out = softclip_loss(image, text, roi, roi, torch.tensor(100.0), beta=beta)
        grads = torch.autograd.grad(out["loss"], [image, text, roi])
        assert all(torch.isfinite(v) for v in out.values()), beta
        assert all(torch.isfinite(g).all() for g in grads), beta


def test_one_hot_soft_targets_reduce_to_cross_entropy():
    # KL(y || p) = cross-entropy when q = y (beta = 0): the soft term then equals the CLIP term
    features = random_features(seed=17)
    out = softclip_loss(*features, SCALE, beta=0.0, symmetric=False)
    assert out["soft"].item() == pytest.approx(out["clip"].item(), rel=1e-6)


@pytest.mark.parametrize("detach", [False, True])
def test_gradients_reach_roi_and_tag_only_when_targets_are_not_detached(detach):
    image, text, roi, tag = random_features(seed=18, requires_grad=True)
    scale = torch.tensor(SCALE, requires_grad=True)
    out = softclip_loss(image, text, roi, tag, scale, detach_targets=detach)
    out["loss"].backward()
    assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
    for features in (roi, tag):
        if detach:
            assert features.grad is None
        else:
            assert features.grad is not None and features.grad.abs().sum() > 0


def test_bfloat16_inputs_under_autocast_are_computed_in_float32():
    features = [f.bfloat16() for f in random_features(seed=19)]
    expected = softclip_loss(*[f.float() for f in features], SCALE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = softclip_loss(*features, torch.tensor(SCALE))
        module_out = SoftCLIPLoss(LossConfig(roi_tag_align=1.0))(model_outputs(features))
    for key, value in out.items():
        assert value.dtype == torch.float32 and torch.isfinite(value)
        assert value.item() == pytest.approx(expected[key].item(), rel=1e-5), key
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in module_out.values())


# ---------------------------------------------------------------------------------------------------------
# bad input


def test_soft_loss_without_roi_or_tag_raises():
    image, text, roi, _ = random_features()
    with pytest.raises(ValueError, match="soft targets need ROI and tag features"):
        softclip_loss(image, text, None, None, SCALE)
    with pytest.raises(ValueError, match="soft targets need ROI and tag features"):
        softclip_loss(image, text, roi, None, SCALE)


def test_module_names_missing_outputs():
    image, text, _, _ = random_features()
    outputs = model_outputs([image, text, None, None])
    with pytest.raises(ValueError, match="roi_features, tag_features"):
        SoftCLIPLoss(LossConfig(variant="soft"))(outputs)
    with pytest.raises(ValueError, match="roi_features, tag_features"):
        SoftCLIPLoss(LossConfig(variant="clip", roi_tag_align=0.1))(outputs)
    assert torch.isfinite(SoftCLIPLoss(LossConfig(variant="clip"))(outputs)["loss"])
    with pytest.raises(ValueError, match="logit_scale"):
        SoftCLIPLoss(LossConfig(variant="clip"))({"image_features": image, "text_features": text})


def test_mismatched_shapes_raise():
    image, text, roi, tag = random_features()
    with pytest.raises(ValueError, match="image_features .* text_features"):
        softclip_loss(image, text[:3], None, None, SCALE, soft=False)
    with pytest.raises(ValueError, match="roi_features/tag_features have 3 rows"):
        softclip_loss(image, text, roi[:3], tag[:3], SCALE)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        softclip_loss(image[0], text[0], None, None, SCALE, soft=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"variant": "simclr"}, "unknown loss variant"),
        ({"guidance": "captions"}, "unknown guidance"),
        ({"beta": 1.5}, "beta"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"gamma": -0.1}, "gamma"),
        ({"roi_tag_align": -1.0}, "roi_tag_align"),
    ],
)
def test_bad_loss_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# two processes: the global-batch loss


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tower_features(inputs: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The worker's LinearTowers, written out: x @ W, L2-normalised."""
    features = {f"{m}_features": F.normalize(inputs[m] @ weights[m], dim=1) for m in ("image", "text", "roi", "tag")}
    return {**features, "logit_scale": weights["logit_scale"]}


def single_process_reference(data: dict) -> dict:
    weights = {name: w.clone().requires_grad_(True) for name, w in data["weights"].items()}
    outputs = tower_features(data["inputs"], weights)
    for name, value in outputs.items():
        if name != "logit_scale":
            value.retain_grad()
    losses = SoftCLIPLoss(LossConfig(**data["config"]))(outputs)
    losses["loss"].backward()
    return {"losses": losses, "outputs": outputs, "weights": weights}


def run_two_ranks(data_path: Path, out_dir: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2"]
    launcher += ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    result = subprocess.run(
        [*launcher, str(WORKER), str(data_path), str(out_dir)],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_process_loss_equals_single_process_loss_on_the_global_batch(tmp_path):
    generator = torch.Generator().manual_seed(20)
    sizes = [5, 3]  # uneven on purpose: the gather pads and trims
    inputs = {m: torch.randn(sum(sizes), 6, generator=generator) for m in ("image", "text", "roi", "tag")}
    weights = {m: torch.randn(6, 4, generator=generator) for m in ("image", "text", "roi", "tag")}
    weights["logit_scale"] = torch.tensor(math.log(8.0))
    config = {"variant": "softclip", "guidance": "mix", "gamma": 0.7, "roi_tag_align": 0.5}
    data = {"inputs": inputs, "weights": weights, "sizes": sizes, "config": config}
    torch.save(data, tmp_path / "data.pt")
    run_two_ranks(tmp_path / "data.pt", tmp_path)
    reference = single_process_reference(data)
    starts = [0, sizes[0]]
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key, value in reference["losses"].items():
            assert got["losses"][key].item() == pytest.approx(value.item(), rel=1e-5), key
        rows = slice(starts[rank], starts[rank] + sizes[rank])
        for m in ("image", "text", "roi", "tag"):
            # every rank computes the same global loss and the backward sums their gradients for the local rows
            expected = 2 * reference["outputs"][f"{m}_features"].grad[rows]
            torch.testing.assert_close(got["feature_grads"][m], expected, rtol=1e-4, atol=1e-6)
        for name, weight in reference["weights"].items():
            # after DDP averages over ranks, the parameter gradients equal the single-process ones
            torch.testing.assert_close(got["param_grads"][name], weight.grad, rtol=1e-4, atol=1e-6)


def test_soft_variants_default_to_the_measured_switches() -> None:
    """Soft-target variants detach their targets and align ROIs with tags unless told otherwise; CLIP does neither."""
    soft, clip = LossConfig(), LossConfig(variant="clip")
    assert soft.targets_detached and soft.align_weight == 1.0 and soft.loss_kwargs()["detach_targets"]
    assert not clip.targets_detached and clip.align_weight == 0.0 and not clip.needs_roi_tag()
    explicit = LossConfig(detach_targets=False, roi_tag_align=0.0)
    assert not explicit.targets_detached and explicit.align_weight == 0.0
