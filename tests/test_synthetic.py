"""SynthScenes: determinism, caption truth and noise rates, held-out compositions, geometry, the simulated
detector, the evaluation sets and the on-disk layouts the real readers read."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from softclip.training.captions import caption_fits, caption_for, spatial_relation
from softclip.training.detector import detector_projection, simulate_detector
from softclip.training.eval_sets import (
    held_out_compositions,
    pointing_set,
    retrieval_set,
    zeroshot_colour_shape,
    zeroshot_shapes,
)
from softclip.training.render import background_pixels, render_scene
from softclip.training.scenes import (
    COLOURS,
    HELD_OUT,
    SHAPES,
    TEXTURE_CONTRAST,
    TEXTURES,
    TONES,
    Scene,
    SceneObject,
    SynthConfig,
)
from softclip.training.synthetic import SynthScenes, write_split

# A noun phrase of a caption: determiner, optional size, optional colour, shape (singular or plural).
_NOUN = r"(a|an|the|two|three|four) (?:(small|large) )?(?:({colours}) )?({shapes})(?:es|s)?\b".format(
    colours="|".join(COLOURS), shapes="|".join(SHAPES)
)
MENTION = re.compile(r"\b" + _NOUN)
RELATION = re.compile(r"\b" + _NOUN + r" (to the left of|to the right of|above|below) " + _NOUN)
COUNTS = {"two": 2, "three": 3, "four": 4}


def matching(scene: Scene, size: str, colour: str, shape: str) -> list[SceneObject]:
    """Objects fitting a parsed noun phrase ('' = attribute not said)."""
    return [o for o in scene.objects if o.shape == shape and colour in ("", o.colour) and size in ("", o.size)]


def mention_is_true(scene: Scene, determiner: str, size: str, colour: str, shape: str) -> bool:
    found = len(matching(scene, size, colour, shape))
    if determiner in COUNTS:
        return found == COUNTS[determiner]
    return found == 1 if determiner == "the" else found >= 1


def caption_is_true(caption: str, scene: Scene) -> bool:
    mentions = MENTION.findall(caption)
    assert mentions, f"no object mentioned in {caption!r}"
    return all(mention_is_true(scene, *m) for m in mentions)


@pytest.fixture(scope="module")
def train() -> SynthScenes:
    return SynthScenes(length=2000)


def test_sample_is_a_pure_function_of_seed_and_index() -> None:
    first, again, other_seed = SynthScenes(length=20), SynthScenes(length=20), SynthScenes(length=20, seed=7)
    for i in (0, 5, 19):
        a, b = first[i], again[i]
        assert a.image.tobytes() == b.image.tobytes()
        assert (a.caption, a.tags, a.clean_captions) == (b.caption, b.tags, b.clean_captions)
        np.testing.assert_array_equal(a.rois, b.rois)
    differing = sum(first[i].image.tobytes() != other_seed[i].image.tobytes() for i in range(5))
    assert differing == 5
    assert first[0].image.tobytes() != first[1].image.tobytes()
    assert first[-1].image.tobytes() == first[19].image.tobytes()


def test_sample_has_the_documented_fields() -> None:
    sample = SynthScenes(SynthConfig(image_size=48), length=3)[2]
    assert sample.image.mode == "RGB" and sample.image.size == (48, 48)
    assert sample.rois.dtype == np.float32 and sample.rois.shape == (10, 2052)
    assert sample.roi_mask.dtype == np.bool_ and sample.roi_mask.shape == (10,)
    assert len(sample.clean_captions) == 5 and all(isinstance(c, str) and c for c in sample.clean_captions)
    assert sample.key == "000002" and sample.noise in ("clean", "swapped", "wrong_attribute")
    with pytest.raises(IndexError, match="out of range"):
        SynthScenes(length=3)[3]


def test_noise_rates_and_kinds(train: SynthScenes) -> None:
    kinds: dict[str, list[bool]] = {"clean": [], "swapped": [], "wrong_attribute": []}
    for i in range(len(train)):
        caption, noise = train.caption(i)
        kinds[noise].append(caption_is_true(caption, train.scene(i)))
    assert abs(len(kinds["swapped"]) / len(train) - 0.2) < 0.03
    assert abs(len(kinds["wrong_attribute"]) / len(train) - 0.05) < 0.02
    assert all(kinds["clean"])
    assert not any(kinds["wrong_attribute"])  # exactly one attribute is wrong: never true of the scene
    assert np.mean(kinds["swapped"]) < 0.4  # another scene's caption rarely fits by chance


def test_noise_free_config_gives_clean_captions() -> None:
    data = SynthScenes(SynthConfig(caption_noise=0.0, attribute_noise=0.0), length=200)
    assert {data.caption(i)[1] for i in range(200)} == {"clean"}
    assert all(data.caption(i)[0] == data.clean_captions(i)[0] for i in range(20))


def test_clean_captions_are_true_varied_and_many_to_many(train: SynthScenes) -> None:
    captions = {i: train.clean_captions(i) for i in range(400)}
    scenes = {i: train.scene(i) for i in captions}
    text = [(c, scenes[i]) for i, cs in captions.items() for c in cs]
    assert all(caption_is_true(c, s) for c, s in text)
    counted = [c for c, _ in text if re.search(r"\b(two|three|four) ", c)]
    related = [(c, s) for c, s in text if RELATION.search(c)]
    backgrounds = [c for c, _ in text if "background" in c or "backdrop" in c]
    assert len(counted) > 0.05 * len(text) and len(related) > 0.05 * len(text) and len(backgrounds) > 0.3 * len(text)
    for caption, scene in related:
        match = [group or "" for group in RELATION.search(caption).groups()]
        (a,), (b,) = matching(scene, *match[1:4]), matching(scene, *match[6:9])  # relations name unique objects
        assert spatial_relation(a, b) == match[4], caption
    assert sum(len(set(cs)) >= 3 for cs in captions.values()) > 0.9 * len(captions)
    first = [cs[0] for cs in captions.values()]
    assert len(set(first)) < len(first)  # some caption is shared by several images


def test_caption_fits_every_clean_caption_of_its_scene_and_no_noisy_one(train: SynthScenes) -> None:
    rng = np.random.default_rng(0)
    for i in range(300):
        scene = train.scene(i)
        assert all(caption_fits(c, scene) for c in train.clean_captions(i))
        assert not caption_fits(caption_for(scene, rng, wrong_attribute=True), scene)


def test_caption_fits_other_scenes_as_its_mentions_say(train: SynthScenes) -> None:
    # On captions without relations or background words, caption_fits must agree with this file's own
    # reading of the mentions, for captions of one scene asked of another.
    plain = [c for i in range(200) for c in train.clean_captions(i) if not RELATION.search(c) and "back" not in c]
    others = [train.scene(i) for i in range(200, 260)]
    answers = [(caption_fits(c, s), caption_is_true(c, s)) for c in plain[:300] for s in others]
    assert all(fits == expected for fits, expected in answers)
    assert 0.01 < np.mean([fits for fits, _ in answers]) < 0.9  # many-to-many, yet far from everything


def test_caption_fits_reads_relations_backgrounds_and_counts() -> None:
    circle = SceneObject("circle", "red", "small", (0.0, 0.4, 0.2, 0.6))
    star = SceneObject("star", "blue", "large", (0.6, 0.4, 0.9, 0.7))
    scene = Scene([circle, star], "stripes", "grey")
    assert caption_fits("a red circle to the left of the blue star.", scene)
    assert not caption_fits("a red circle to the right of the blue star.", scene)
    assert caption_fits("a photo of a large star on a striped grey background.", scene)
    assert caption_fits("a small red circle against a grey backdrop.", scene)
    assert not caption_fits("a red circle on a checkered background.", scene)
    assert not caption_fits("two red circles.", scene) and not caption_fits("a small star.", scene)
    assert not caption_fits("a red circle beside a blue star.", scene)  # not a caption softclip writes


def test_spatial_relation_follows_the_larger_offset() -> None:
    left, right = (
        SceneObject("circle", "red", "small", (0.0, 0.4, 0.2, 0.6)),
        SceneObject("star", "red", "small", (0.6, 0.5, 0.8, 0.7)),
    )
    top = SceneObject("ring", "blue", "small", (0.1, 0.0, 0.3, 0.2))
    assert spatial_relation(left, right) == "to the left of" and spatial_relation(right, left) == "to the right of"
    assert spatial_relation(top, left) == "above" and spatial_relation(left, top) == "below"


def test_wrong_attribute_never_forms_an_excluded_pair() -> None:
    scene = Scene([SceneObject("star", "red", "small", (0.1, 0.1, 0.3, 0.3))], "plain", "grey")
    rng = np.random.default_rng(0)
    for _ in range(200):
        caption = caption_for(scene, rng, wrong_attribute=True, excluded=frozenset(HELD_OUT))
        (determiner, size, colour, shape), *_ = MENTION.findall(caption)
        assert (colour, shape) not in HELD_OUT and not mention_is_true(scene, determiner, size, colour, shape)


def test_held_out_compositions_never_appear_in_train() -> None:
    assert held_out_compositions() == list(HELD_OUT) and len(set(HELD_OUT)) == 8
    assert {c for c, _ in HELD_OUT} == set(COLOURS) and {s for _, s in HELD_OUT} == set(SHAPES)
    noisy = SynthConfig(attribute_noise=0.8, detector_mislabel=1.0, detector_miss=0.0)
    data = SynthScenes(noisy, length=1500)
    for i in range(len(data)):
        assert not {(o.colour, o.shape) for o in data.scene(i).objects} & set(HELD_OUT)
        caption, tags = data.texts(i)
        named = {(colour, shape) for _, _, colour, shape in MENTION.findall(caption) if colour}
        named |= {tuple(tag.split()[1:]) for tag in tags.split(", ")}
        assert not named & set(HELD_OUT), (caption, tags)
    test = SynthScenes(SynthConfig(split="test"), length=1500)
    seen_in_test = {(o.colour, o.shape) for i in range(len(test)) for o in test.scene(i).objects}
    assert set(HELD_OUT) <= seen_in_test


def test_colour_shape_eval_set_has_all_64_classes_with_held_out_marked() -> None:
    data = zeroshot_colour_shape(128)
    assert len(data.classnames) == 64 and sorted(np.bincount(data.labels)) == [2] * 64
    assert sorted(data.classnames[k] for k in data.held_out_classes) == sorted(f"{c} {s}" for c, s in HELD_OUT)
    for image, label, scene in zip(data.images, data.labels, data.scenes, strict=True):
        assert [o.name for o in scene.objects] == [data.classnames[label]] and image.size == (64, 64)
    assert all("{}" in t for t in data.templates)


def test_shape_eval_set_is_balanced_and_labelled_by_shape() -> None:
    data = zeroshot_shapes(24, image_size=32)
    assert data.classnames == list(SHAPES) and np.bincount(data.labels).tolist() == [3] * 8
    assert all(s.objects[0].shape == data.classnames[k] for s, k in zip(data.scenes, data.labels, strict=True))
    assert data.images[0].size == (32, 32)


def test_retrieval_and_pointing_sets() -> None:
    retrieval = retrieval_set(6)
    assert len(retrieval.images) == 6 and all(len(c) == 5 for c in retrieval.captions)
    assert all(caption_is_true(c, s) for cs, s in zip(retrieval.captions, retrieval.scenes, strict=True) for c in cs)
    pointing = pointing_set(20)
    assert pointing.boxes.shape == (20, 4) and pointing.boxes.dtype == np.float32
    for query, box, scene in zip(pointing.queries, pointing.boxes, pointing.scenes, strict=True):
        targets = [o for o in scene.objects if o.name == query]
        assert len(scene.objects) >= 2 and len(targets) == 1
        np.testing.assert_allclose(box, targets[0].box, atol=1e-6)


def test_objects_do_not_overlap_and_render_inside_their_boxes(train: SynthScenes) -> None:
    size = 64
    for i in range(150):
        scene = train.scene(i)
        boxes = np.array([o.box for o in scene.objects])
        assert 1 <= len(boxes) <= 4 and boxes.min() >= 0 and boxes.max() <= 1
        for a, b in itertools.combinations(boxes, 2):
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (a, b)
        pixels = np.asarray(render_scene(scene, size)).astype(int)
        outside = np.ones((size, size), bool)
        for obj in scene.objects:
            x0, y0, x1, y1 = (int(c * size) for c in obj.box)
            outside[max(0, y0 - 1) : y1 + 2, max(0, x0 - 1) : x1 + 2] = False
            if obj.shape != "ring":  # the centre of every filled shape is inside it
                cx, cy = (int(c * size) for c in obj.center)
                assert np.abs(pixels[cy, cx] - COLOURS[obj.colour]).max() <= 2, (obj, pixels[cy, cx])
        np.testing.assert_array_equal(pixels[outside], background_pixels(scene, size)[outside])


def test_every_colour_stands_out_from_every_background_and_from_each_other() -> None:
    colours = np.array(list(COLOURS.values()), float)
    for tone in TONES.values():
        shades = np.array(tone, float) + np.linspace(-TEXTURE_CONTRAST, TEXTURE_CONTRAST, 9)[:, None]  # (9, 3)
        assert np.linalg.norm(colours[:, None] - shades[None], axis=-1).min() >= 80
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(colours, 2)) >= 80
    for texture, tone in itertools.product(TEXTURES, TONES):
        pixels = background_pixels(Scene([], texture, tone, texture_seed=11), 32).astype(int)
        assert np.abs(pixels - TONES[tone]).max() <= TEXTURE_CONTRAST
        assert (pixels.std(axis=(0, 1)).max() > 3) == (texture != "plain")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_roi_features_encode_attributes_and_boxes() -> None:
    boxes = [(0.0, 0.0, 0.3, 0.3), (0.6, 0.6, 0.9, 0.9), (0.0, 0.6, 0.2, 0.8), (0.6, 0.0, 0.8, 0.2)]
    attributes = [("circle", "red", "large"), ("circle", "red", "large"), ("square", "blue", "small")]
    attributes.append(("circle", "blue", "small"))
    scene = Scene([SceneObject(*a, box) for a, box in zip(attributes, boxes, strict=True)], "plain", "grey")
    exact = SynthConfig(detector_miss=0.0, detector_mislabel=0.0)
    rois, mask, tags = simulate_detector(scene, np.random.default_rng(0), exact)
    appearance = rois[:, :-4]
    assert cosine(appearance[0], appearance[1]) > 0.6  # same attributes, different places
    assert abs(cosine(appearance[0], appearance[2])) < 0.15  # nothing in common
    assert 0.1 < cosine(appearance[0], appearance[3]) < 0.5  # shares the shape only
    np.testing.assert_allclose(rois[:4, -4:], boxes)
    assert mask.tolist() == [True] * 4 + [False] * 6 and not rois[4:].any()
    assert tags == "large red circle, large red circle, small blue square, small blue circle"
    again, _, _ = simulate_detector(scene, np.random.default_rng(1), SynthConfig(detector_miss=0.0, split="test"))
    assert cosine(appearance[2], again[2, :-4]) > 0.6  # one fixed detector for every split and seed


def test_detector_miss_and_mislabel_rates(train: SynthScenes) -> None:
    objects = detected = relabelled = 0
    for i in range(600):
        scene = train.scene(i)
        _, mask, _ = simulate_detector(scene, np.random.default_rng(i), SynthConfig(detector_mislabel=0.0))
        _, _, tags = simulate_detector(scene, np.random.default_rng(i), SynthConfig(detector_miss=0.0))
        objects, detected = objects + len(scene.objects), detected + int(mask.sum())
        relabelled += sum(t != f"{o.size} {o.colour} {o.shape}" for t, o in zip(tags.split(", "), scene.objects))
        assert mask.any()
    assert 0.06 < 1 - detected / objects < 0.12  # 10%, a little less as one region is always kept
    assert abs(relabelled / objects - 0.05) < 0.02


def test_mislabelled_region_feature_follows_its_wrong_tag() -> None:
    scene = Scene([SceneObject("star", "green", "large", (0.1, 0.1, 0.5, 0.5))], "plain", "grey")
    config = SynthConfig(detector_mislabel=1.0, roi_noise=0.1, split="test")
    rois, _, tags = simulate_detector(scene, np.random.default_rng(3), config)
    size, colour, shape = tags.split()
    assert (size, colour, shape) != ("large", "green", "star")
    projection = detector_projection(2048)

    def clean_feature(shape: str, colour: str, size: str) -> np.ndarray:
        rows = [SHAPES.index(shape), len(SHAPES) + list(COLOURS).index(colour), 16 + ("small", "large").index(size)]
        return projection[rows].sum(0)

    assert cosine(rois[0, :-4], clean_feature(shape, colour, size)) > 0.95
    assert cosine(rois[0, :-4], clean_feature("star", "green", "large")) < 0.8


def test_write_split_csv(tmp_path) -> None:
    config = SynthConfig(image_size=32)
    csv_path = write_split(tmp_path / "csv", 5, seed=3, config=config)
    rows = list(csv.DictReader(open(csv_path, newline="", encoding="utf-8")))
    assert len(rows) == 5 and list(rows[0]) == ["filepath", "caption", "roi_path", "tags"]
    expected = SynthScenes(config, length=5, seed=3)
    for row, sample in zip(rows, expected, strict=True):
        with Image.open(tmp_path / "csv" / row["filepath"]) as image:
            assert image.convert("RGB").size == (32, 32)
        rois = np.load(tmp_path / "csv" / row["roi_path"])
        assert rois.shape == (len(row["tags"].split(", ")), 2052) and rois.dtype == np.float32
        np.testing.assert_array_equal(rois, sample.rois[sample.roi_mask])
        assert (row["caption"], row["tags"]) == (sample.caption, sample.tags)


def test_write_split_webdataset(tmp_path) -> None:
    import webdataset as wds

    pattern = write_split(tmp_path, 5, fmt="wds", config=SynthConfig(image_size=32), shard_size=2, image_format="png")
    assert pattern == str(tmp_path / "shard-{000000..000002}.tar")
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert tar.getnames() == [
            f"00000{k}.{ext}" for k in (0, 1) for ext in ("png", "txt", "json", "roi.npy", "tags.txt")
        ]
    samples = list(wds.WebDataset(pattern, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:06d}" for i in range(5)]
    for sample in samples:
        meta = json.loads(sample["json"])
        assert meta["key"] == sample["__key__"] and meta["caption"] == sample["txt"].decode()
        assert Image.open(io.BytesIO(sample["png"])).convert("RGB").size == (32, 32)
        rois = np.load(io.BytesIO(sample["roi.npy"]))
        assert rois.shape == (len(sample["tags.txt"].decode().split(", ")), 2052)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SynthConfig(split="dev"), "split"),
        (lambda: SynthConfig(caption_noise=1.5), "caption_noise"),
        (lambda: SynthConfig(caption_noise=0.7, attribute_noise=0.5), "attribute_noise"),
        (lambda: SynthConfig(image_size=8), "image_size"),
        (lambda: SynthConfig(roi_noise=-1.0), "roi_noise"),
        (lambda: SynthScenes(length=0), "length"),
        (lambda: zeroshot_shapes(0), "n must"),
        (lambda: write_split("unused", 2, fmt="zip"), "format"),
    ],
)
def test_bad_input_is_refused_with_its_name(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
