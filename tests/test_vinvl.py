"""VinVL region features in the two layouts they exist in on disk, written here with softclip's own writers
following the real formats: scene_graph_benchmark's predictions.tsv (+ hw.tsv) and Microsoft's chunked download
(features.tsv + predictions.tsv + imageid2idx.json), joined to CSV or WebDataset captions by key."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from softclip.cli import main
from softclip.training.data import UnreadableSample
from softclip.training.tsv_rows import encode_floats, lineidx_path, write_imageid2idx, write_tsv
from softclip.training.vinvl import VinvlDataset
from softclip.training.vinvl_layouts import ATTRIBUTE_THRESHOLD, NotVinvl, region_tag

# Objects 3 and 7 tie at the top (file order breaks the tie); the rest rank by index, so 0 and 1 drop out.
CONFIDENCES = [i / 100 for i in range(12)]
CONFIDENCES[3] = CONFIDENCES[7] = 0.9
TOP_TEN = [3, 7, 11, 10, 9, 8, 6, 5, 4, 2]


def detected(index: int, name: str, conf: float, rect: list[float], attributes: dict[str, float] | None = None) -> dict:
    """One object as scene_graph_benchmark describes it (without its feature); attributes padded to 3 slots."""
    names, scores = list((attributes or {}).keys()), list((attributes or {}).values())
    padding = ["__no_attribute__", "striped", "wooden"][: 3 - len(names)]  # zero-score slots, arbitrary names
    return {
        "rect": rect,
        "bbox_id": index,
        "class": name,
        "conf": conf,
        "attributes": names + padding,
        "attr_scores": scores + [0.0] * len(padding),
    }


def twelve_objects() -> list[dict]:
    objects = [detected(i, f"thing{i}", CONFIDENCES[i], [0, 0, 10, 10]) for i in range(12)]
    objects[3] = detected(3, "dog", 0.9, [40, 50, 400, 250], {"white": 0.6, "small": 0.2})
    objects[7] = detected(7, "table", 0.9, [0, 0, 200, 100], {"red": ATTRIBUTE_THRESHOLD / 2})
    return objects


def with_features(objects: list[dict], values: list[float] | None = None) -> list[dict]:
    """Objects as written with TEST.OUTPUT_FEATURE: each carries its 2048 float32 appearance values."""
    values = values if values is not None else list(range(len(objects)))
    return [{**o, "feature": encode_floats(np.full(2048, v, np.float32))} for o, v in zip(objects, values)]


def write_extracted(folder: Path, images: dict[str, list[dict]], sizes: dict[str, object] | None = None) -> Path:
    """predictions.tsv (+ lineidx) as scene_graph_benchmark's inference writes it, and the dataset's hw.tsv."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(key, json.dumps({"objects": objects, "relations": None})) for key, objects in images.items()]
    if sizes is not None:
        write_tsv(folder / "train.hw.tsv", [(key, json.dumps(size)) for key, size in sizes.items()])
    return write_tsv(folder / "predictions.tsv", rows)


def download_row(objects: list[dict], appearance: list[float], height: int, width: int) -> np.ndarray:
    """float32 [n, 2054]: the appearance values, then x1, y1, x2, y2, w, h as fractions of the image."""
    rows = np.zeros((len(objects), 2054), np.float32)
    for row, (detection, value) in enumerate(zip(objects, appearance)):
        x1, y1, x2, y2 = detection["rect"]
        rows[row, :2048] = value
        rows[row, 2048:] = [x1 / width, y1 / height, x2 / width, y2 / height, (x2 - x1) / width, (y2 - y1) / height]
    return rows


def write_chunk(folder: Path, images: dict[str, list[dict]], *, index: bool = True, size=(200, 400)) -> Path:
    """One chunk folder of Microsoft's download; an image's appearance values are 1000 * chunk-local row + box."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = size
    features, predictions = [], []
    for row, (key, objects) in enumerate(images.items()):
        values = download_row(objects, [1000 * row + i for i in range(len(objects))], height, width)
        features.append((key, len(objects), encode_floats(values)))
        predictions.append((key, json.dumps({"objects": objects, "image_h": height, "image_w": width})))
    write_tsv(folder / "features.tsv", features)
    write_tsv(folder / "predictions.tsv", predictions)
    if index:
        write_imageid2idx(folder, list(images))
    return folder


def write_image(path: Path, size: tuple[int, int] = (16, 16)) -> str:
    Image.new("RGB", size, (120, 30, 30)).save(path)
    return path.name


def write_captions(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "filepath", "caption"])
        writer.writerows(rows)
    return path


def regions_of(sample) -> tuple[list[float], np.ndarray]:
    """(first appearance value of each real region, their boxes)."""
    real = sample.rois[sample.roi_mask]
    return real[:, 0].tolist(), real[:, -4:]


# ------------------------------------------------------------------------------------ extracted layout


def test_extracted_predictions_with_hw_tsv(tmp_path: Path) -> None:
    images = {"a": with_features(twelve_objects()), "empty": [], "unused": with_features(twelve_objects()[:1])}
    hw = {"a": [{"height": 200, "width": 400}], "empty": [{"height": 9, "width": 9}]}
    write_extracted(tmp_path / "vinvl", images, hw)
    picture = write_image(tmp_path / "a.png")  # 16 x 16: the boxes must be normalised by hw.tsv's 400 x 200
    captions = [("a", picture, "a white dog"), ("a", picture, "a dog by a table"), ("empty", picture, "nothing")]
    data = VinvlDataset(tmp_path / "vinvl", write_captions(tmp_path / "captions.csv", [*captions, ("z", "x", "?")]))

    assert "predictions.tsv extracted with scene_graph_benchmark (vinvl/predictions.tsv: 3 images" in data.description
    assert "image sizes from train.hw.tsv" in data.description
    assert "joined 3 captions" in data.description and "1 captions without regions (e.g. key 'z')" in data.description
    assert "1 images with regions but no caption (e.g. id 'unused')" in data.description
    assert len(data) == 3 and (data.captions_without_regions, data.regions_without_captions) == (1, 1)
    first = data[0]
    values, boxes = regions_of(first)
    assert values == TOP_TEN and first.rois.shape == (10, 2052) and first.rois.dtype == np.float32
    np.testing.assert_allclose(boxes[0], [0.1, 0.25, 1.0, 1.0])  # x2 = 400 / 400; y2 = 250 / 200 clipped to 1
    np.testing.assert_allclose(boxes[1], [0, 0, 0.5, 0.5])
    assert first.tags.split(", ")[:4] == ["white dog", "table", "thing11", "thing10"]
    assert (first.key, first.caption) == ("a", "a white dog")
    assert data[2].tags == "" and not data[2].roi_mask.any() and not data[2].rois.any()
    assert data.texts(1) == ["a dog by a table", first.tags]


def test_missing_lineidx_is_built_and_sizes_come_from_the_image(tmp_path: Path) -> None:
    objects = [detected(0, "cat", 0.8, [4, 5, 20, 20], {"black": 0.5, "small": 0.4})]
    tsv = write_extracted(tmp_path, {"k1": with_features(objects, [7.0]), "k2": with_features(objects, [8.0])})
    written = lineidx_path(tsv).read_text()
    lineidx_path(tsv).unlink()
    picture = write_image(tmp_path / "wide.png", (40, 20))
    data = VinvlDataset(tsv, write_captions(tmp_path / "c.csv", [("k2", picture, "a black cat"), ("k1", picture, "x")]))
    assert lineidx_path(tsv).read_text() == written  # rebuilt exactly as the writer wrote it
    assert "built a missing .lineidx" in data.description and "image sizes from the images" in data.description
    values, boxes = regions_of(data[0])
    assert values == [8.0] and data[0].tags == "black cat"
    np.testing.assert_allclose(boxes[0], [0.1, 0.25, 0.5, 1.0])


def test_a_folder_of_extracted_parts_is_one_data_set(tmp_path: Path) -> None:
    cat = with_features([detected(0, "cat", 0.8, [0, 0, 8, 8])], [1.0])
    write_extracted(tmp_path / "vinvl" / "part1", {"k1": cat})
    write_extracted(tmp_path / "vinvl" / "part0", {"k0": with_features([detected(0, "dog", 0.7, [0, 0, 4, 4])])})
    picture = write_image(tmp_path / "p.png")
    rows = [("k1", picture, "a cat"), ("k0", picture, "a dog")]
    data = VinvlDataset(tmp_path / "vinvl", write_captions(tmp_path / "c.csv", rows))
    assert "(part0/predictions.tsv: 1 images; image sizes from the images, part1/predictions.tsv: 1 images" in (
        data.description
    )
    assert [data[0].tags, data[1].tags] == ["cat", "dog"] and regions_of(data[0])[0] == [1.0]


def test_bad_rows_are_skipped_and_counted_with_their_key(tmp_path: Path) -> None:
    good = with_features([detected(0, "cup", 0.9, [0, 0, 8, 8])])
    short = [{**good[0], "feature": encode_floats(np.ones(100, np.float32))}]
    nan = with_features([detected(0, "cup", 0.9, [0, 0, 8, 8])], [float("nan")])
    images = {"good": good, "b64": [{**good[0], "feature": "@@not base64@@"}], "short": short, "nan": nan}
    images |= {"nosize": good, "nofeature": [detected(0, "cup", 0.9, [0, 0, 8, 8])]}
    tsv = write_extracted(tmp_path, images, {"nosize": [{"height": 0, "width": 50}]})
    with tsv.open("a") as handle:  # a row that is not JSON, indexed like the others
        handle.write("broken\t{not json\n")
    lineidx_path(tsv).unlink()
    picture = write_image(tmp_path / "i.png")
    keys = [*images, "broken"]
    data = VinvlDataset(tsv, write_captions(tmp_path / "c.csv", [(key, picture, f"caption {key}") for key in keys]))
    expected = {
        "b64": "bad base64",
        "short": "wrong feature length",
        "nan": "non-finite features",
        "nosize": "missing size",
        "nofeature": "bad vinvl row",
        "broken": "bad vinvl row",
    }
    for index, key in enumerate(keys[1:], start=1):
        with pytest.raises(UnreadableSample) as error:
            data.read(index)
        assert error.value.reason == expected[key] and f"key {key!r}" in str(error.value)
    sample = data[1]  # every bad row after it is skipped, wrapping round to the good one
    assert sample.key == "good" and sample.skipped == tuple(expected.values())
    assert data.skipped.total == 6 and "key 'b64'" in data.skipped.report()
    assert data.texts(4) == ["caption nosize", "cup"]  # tags need no size


def test_attributes_need_a_score_over_the_threshold() -> None:
    assert region_tag({"class": "car", "attributes": ["red", "old"], "attr_scores": [0.3, 0.5]}) == "old car"
    padded = {"class": "car", "attributes": ["__no_attribute__", "furry", "wet"], "attr_scores": [0.0, 0.0, 0.0]}
    assert region_tag(padded) == "car"
    assert region_tag({"class": "car", "attributes": ["red", "blue"]}) == "car"  # no scores: padding unknowable
    assert region_tag({"class": "car", "attributes": ["red"], "attr_scores": [0.05]}, threshold=0.01) == "red car"


# ------------------------------------------------------------------------------------- download layout


def test_download_chunks_form_one_data_set(tmp_path: Path) -> None:
    root = tmp_path / "googlecc"
    write_chunk(root / "0", {"101": twelve_objects(), "102": twelve_objects()[:2]})
    write_chunk(root / "2", {"205": twelve_objects()[3:4], "101": twelve_objects()[:1]}, index=False)
    write_chunk(root / "10", {"1001": twelve_objects()[7:8]})
    lineidx_path(root / "10" / "features.tsv").unlink()
    (root / "0" / "annotations").mkdir()  # not a chunk: ignored
    picture = write_image(tmp_path / "p.png")
    rows = [(key, picture, f"caption {key}") for key in ("101", "205", "1001", "999")]
    data = VinvlDataset(root, write_captions(tmp_path / "c.csv", rows))

    assert "Microsoft's pre-extracted download, 3 chunk folder(s) (0: 2 images, 2: 2 images, 10: 1 images)" in (
        data.description
    )
    assert "built a missing .lineidx in 1 place(s)" in data.description
    assert "joined 3 captions" in data.description and "1 captions without regions (e.g. key '999')" in data.description
    assert "1 image ids appear in more than one VinVL part" in data.description
    first = data[0]
    values, boxes = regions_of(first)
    assert values == TOP_TEN  # chunk 0, row 0: appearance = box index
    np.testing.assert_allclose(boxes[0], [0.1, 0.25, 1.0, 1.0], rtol=1e-6)
    assert first.tags.split(", ")[:3] == ["white dog", "table", "thing11"]
    values, boxes = regions_of(data[1])  # chunk 2 has no imageid2idx.json: ids read from predictions.tsv
    assert values == [0.0] and data[1].tags == "white dog" and data[1].key == "205"
    assert regions_of(data[2])[0] == [0.0] and data[2].tags == "table"  # "red" scores under the threshold
    assert data.texts(0)[1] == first.tags
    for path in (root / "0", root / "0" / "predictions.tsv", root / "0" / "features.tsv"):
        assert "1 chunk folder(s) (0: 2 images)" in VinvlDataset(path, tmp_path / "c.csv").description


def test_corrupt_download_rows_are_skipped(tmp_path: Path) -> None:
    objects = twelve_objects()[:2]
    write_chunk(tmp_path / "chunk", {"ok": objects, "fewer": objects, "b64": objects, "nan": objects})
    features = tmp_path / "chunk" / "features.tsv"
    lines = features.read_text().splitlines()
    key, count, blob = lines[1].split("\t")
    lines[1] = "\t".join([key, "3", blob])  # claims 3 boxes for 2 objects
    lines[2] = "\t".join([*lines[2].split("\t")[:2], "!!" + lines[2].split("\t")[2][2:]])
    nan_values = np.full((2, 2054), np.nan, np.float32)
    lines[3] = "\t".join(["nan", "2", encode_floats(nan_values)])
    features.write_text("\n".join(lines) + "\n")
    lineidx_path(features).unlink()
    picture = write_image(tmp_path / "p.png")
    keys = ["ok", "fewer", "b64", "nan"]
    data = VinvlDataset(tmp_path / "chunk", write_captions(tmp_path / "c.csv", [(k, picture, k) for k in keys]))
    reasons = {"fewer": "bad vinvl row", "b64": "bad base64", "nan": "non-finite features"}
    for index, key in enumerate(keys[1:], start=1):
        with pytest.raises(UnreadableSample) as error:
            data.read(index)
        assert error.value.reason == reasons[key] and f"key {key!r}" in str(error.value)
    assert data[1].key == "ok" and data.skipped.total == 3


# --------------------------------------------------------------------------------- sources and errors


def test_webdataset_captions_join_by_sample_key(tmp_path: Path) -> None:
    tsv = write_extracted(tmp_path / "vinvl", {"000001": with_features(twelve_objects()[3:4], [5.0])})
    image = io.BytesIO()
    Image.new("RGB", (800, 400), (0, 0, 200)).save(image, format="PNG")
    members = {"000001.png": image.getvalue(), "000001.txt": b"a white dog", "000002.txt": b"no image, no regions"}
    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = VinvlDataset(tsv, str(tmp_path / "shard-{000000..000000}.tar"))
    assert len(data) == 1 and "1 captions without regions (e.g. key '000002')" in data.description
    sample = data[0]
    assert (sample.caption, sample.tags, regions_of(sample)[0]) == ("a white dog", "white dog", [5.0])
    np.testing.assert_allclose(regions_of(sample)[1][0], [0.05, 0.125, 0.5, 0.625])  # sized by the 800 x 400 image
    assert data.texts(0) == ["a white dog", "white dog"]


def test_files_in_neither_layout_get_a_clear_error(tmp_path: Path) -> None:
    captions = write_captions(tmp_path / "c.csv", [("k", "p.png", "c")])
    with pytest.raises(NotVinvl, match=r"row 1 is not key<TAB>\{\"objects\".*expected predictions.tsv extracted"):
        VinvlDataset(captions, captions)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotVinvl, match="holds no predictions.tsv, features.tsv or chunk folders"):
        VinvlDataset(tmp_path / "empty", captions)
    no_features = write_extracted(tmp_path / "labels", {"k": twelve_objects()})
    with pytest.raises(NotVinvl, match='objects have no "feature".*features.tsv'):
        VinvlDataset(no_features, captions)
    write_tsv(tmp_path / "chunk" / "features.tsv", [("k", 1, encode_floats(np.zeros(2048)))])  # no box columns
    with pytest.raises(NotVinvl, match="chunk has no predictions.tsv"):
        VinvlDataset(tmp_path / "chunk", captions)
    write_tsv(tmp_path / "chunk" / "predictions.tsv", [("k", json.dumps({"objects": twelve_objects()[:1]}))])
    with pytest.raises(NotVinvl, match=r"not id<TAB>num_boxes<TAB>base64 float32 \[num_boxes, 2054\]"):
        VinvlDataset(tmp_path / "chunk", captions)
    with pytest.raises(FileNotFoundError, match="VinVL features not found"):
        VinvlDataset(tmp_path / "nowhere", captions)
    tsv = write_extracted(tmp_path / "other", {"x": with_features(twelve_objects()[:1])})
    with pytest.raises(ValueError, match="(?s)no caption key matches a VinVL image id.*e.g. key 'k'.*e.g. id 'x'"):
        VinvlDataset(tsv, captions)


def test_a_stale_lineidx_is_refused(tmp_path: Path) -> None:
    tsv = write_extracted(tmp_path, {"a": with_features(twelve_objects()[:1]), "b": []})
    tsv.write_text("\n".join(["aa\t" + json.dumps({"objects": []}), "b\t" + json.dumps({"objects": []})]) + "\n")
    with pytest.raises(ValueError, match="predictions.lineidx does not match predictions.tsv.*delete it"):
        VinvlDataset(tsv, write_captions(tmp_path / "c.csv", [("a", "p.png", "c")]))


def test_train_command_reads_the_download_layout(tmp_path: Path, capsys) -> None:
    root = tmp_path / "features"
    write_chunk(root / "0", {str(k): twelve_objects()[k : k + 3] for k in range(4)})
    write_chunk(root / "1", {str(k): twelve_objects()[: k - 2] for k in range(4, 8)})
    features = root / "1" / "features.tsv"  # image 7's features are not base64: skipped, reported with its key
    features.write_text(features.read_text().replace("\t5\t", "\t5\t@@"))
    lineidx_path(features).unlink()
    picture = write_image(tmp_path / "p.png", (64, 48))
    captions = write_captions(tmp_path / "c.csv", [(str(k), picture, f"a photo number {k}") for k in range(8)])
    out = tmp_path / "run"
    args = ["train", "--data", str(captions), "--vinvl", str(root), "--out", str(out), "--steps", "2"]
    assert main([*args, "--batch-size", "4", "--workers", "0", "--no-eval", "--model", "tiny-vit"]) == 0
    printed = capsys.readouterr().out
    assert "Microsoft's pre-extracted download, 2 chunk folder(s)" in printed and "joined 8 captions" in printed
    assert "skipped 1 samples: 1 bad base64 (e.g. c.csv row 8 (key 7): key '7' (1/features.tsv row 4)" in printed
    assert (out / "final" / "model.safetensors").is_file()
