"""Checkpoint folders: round trip, the Hub cache offline, push_to_hub without network, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from softclip import create_model, from_pretrained
from softclip.pretrained import CHECKPOINT_FILES, CheckpointError
from softclip.tokenizer import Tokenizer

CAPTIONS = ["a red circle left of a blue star", "two green squares", "a yellow ring on a grey background"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny-vit")
    model.tokenizer = Tokenizer.train(CAPTIONS * 5, vocab_size=300)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


def embeddings(model) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(model.tokenizer(CAPTIONS, 32))


def test_round_trip_reproduces_embeddings_exactly(checkpoint: Path) -> None:
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(CHECKPOINT_FILES)
    first, second = from_pretrained(checkpoint), from_pretrained(checkpoint)
    for a, b in zip(embeddings(first), embeddings(second), strict=True):
        assert torch.equal(a, b)
    assert first.tokenizer.vocab_size == 300 and first.preprocess_config.size == 64


def test_saved_weights_equal_the_original(tmp_path: Path) -> None:
    model = create_model("tiny-rn").eval()
    loaded = from_pretrained(model.save_pretrained(tmp_path))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def hub_cache(cache: Path, repo_id: str, checkpoint: Path) -> None:
    """Lay out a checkpoint as the Hugging Face Hub cache stores a downloaded snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(checkpoint, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)


def test_loads_from_the_hub_cache_offline(checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    hub_cache(tmp_path, "softclip/tiny-test", checkpoint)
    loaded = from_pretrained("softclip/tiny-test", cache_dir=tmp_path)
    assert torch.equal(embeddings(loaded)[0], embeddings(from_pretrained(checkpoint))[0])


def test_unknown_hub_id_offline_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="nobody/nothing"):
        from_pretrained("nobody/nothing", cache_dir=tmp_path)


class RecordingHubApi:
    """Stands in for the Hub's HTTP API (the network): records what would be uploaded."""

    def __init__(self) -> None:
        self.created, self.uploaded = [], []

    def create_repo(self, repo_id: str, private: bool, exist_ok: bool) -> None:
        self.created.append((repo_id, private))

    def upload_folder(self, folder_path: str, repo_id: str, commit_message: str) -> None:
        self.uploaded.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))


def test_push_to_hub_uploads_the_checkpoint_folder(checkpoint: Path) -> None:
    api = RecordingHubApi()
    files = from_pretrained(checkpoint).push_to_hub("me/softclip-tiny", private=True, api=api)
    assert files == sorted(CHECKPOINT_FILES)
    assert api.created == [("me/softclip-tiny", True)]
    assert api.uploaded == [("me/softclip-tiny", sorted(CHECKPOINT_FILES))]


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_missing_file_is_named(checkpoint: Path, tmp_path: Path, name: str) -> None:
    broken = Path(shutil.copytree(checkpoint, tmp_path / "broken"))
    (broken / name).unlink()
    with pytest.raises((CheckpointError, FileNotFoundError), match=name.replace(".", r"\.")):
        from_pretrained(broken)


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_corrupt_file_is_named(checkpoint: Path, tmp_path: Path, name: str) -> None:
    broken = Path(shutil.copytree(checkpoint, tmp_path / "broken"))
    (broken / name).write_bytes(b"\x00garbage{")
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        from_pretrained(broken)


def test_not_a_folder_nor_hub_id(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="neither a model folder or file nor a Hub repo id"):
        from_pretrained(tmp_path / "missing" / "deeper")
