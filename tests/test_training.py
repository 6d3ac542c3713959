"""The trainer through the real CLI, exact resume, and a 2-process torchrun run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softclip.cli import main
from softclip.config import load_config
from softclip.loss import LossConfig
from softclip.pretrained import from_pretrained
from softclip.training.checkpoints import latest_checkpoint
from softclip.training.optimiser import warmup_cosine
from softclip.training.trainer import TrainConfig, Trainer

TINY = ["--steps", "2", "--batch-size", "8", "--synth-size", "32", "--workers", "0", "--no-eval"]
VARIANT_TERMS = {
    "clip": {"loss", "clip"},
    "label_smoothing": {"loss", "clip"},
    "soft": {"loss", "clip", "soft"},
    "soft_relation": {"loss", "clip", "soft", "relation"},
    "softclip": {"loss", "clip", "soft", "relation"},
}


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("variant", sorted(VARIANT_TERMS))
def test_cli_trains_every_variant(tmp_path: Path, model: str, variant: str) -> None:
    out = tmp_path / "run"
    assert main(["train", "--model", model, "--loss", variant, "--out", str(out), *TINY]) == 0
    last = [r for r in records(out) if "loss" in r][-1]
    assert last["step"] == 2
    assert VARIANT_TERMS[variant] <= set(last)
    assert all(torch.isfinite(torch.tensor(last[k])) for k in VARIANT_TERMS[variant])
    loaded = from_pretrained(out / "final")
    assert loaded.config.name == model
    assert (out / "checkpoints" / "step_00000002.pt").is_file()


def small_config(out: Path, **changes) -> TrainConfig:
    loss = LossConfig(detach_targets=True, roi_tag_align=1.0)
    base = dict(steps=6, batch_size=8, synth_size=40, workers=0, evaluate=False, out=str(out), loss=loss)
    return TrainConfig(**(base | changes))


def test_resumed_run_matches_uninterrupted(tmp_path: Path) -> None:
    straight = Trainer(small_config(tmp_path / "straight"))
    straight.fit()
    interrupted = Trainer(small_config(tmp_path / "resumed", workers=1))
    assert interrupted.fit(until=3) is None
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step_00000003.pt"
    resumed = Trainer(small_config(tmp_path / "resumed", workers=1), resume="latest")
    assert resumed.step == 3
    resumed.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_resumed_runs_log_holds_each_step_once(tmp_path: Path) -> None:
    config = small_config(tmp_path, log_every=1, save_every=3)
    assert Trainer(config).fit(until=5) is None
    (tmp_path / "checkpoints" / "step_00000005.pt").unlink()  # killed after step 5: the last checkpoint is 3's
    with open(tmp_path / "metrics.jsonl", "a") as log:
        log.write('{"step": 6, "lr"')  # and in the middle of writing a record
    Trainer(config, resume="latest").fit()
    assert [r["step"] for r in records(tmp_path) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records(tmp_path) if r.get("event") == "resumed"] == [3]
    Trainer(config).fit()  # a fresh run into the same folder starts a new log
    assert [r["step"] for r in records(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_tensorboard_shows_a_resumed_runs_steps_once(tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    config = small_config(tmp_path, log_every=1, save_every=3)
    assert Trainer(config).fit(until=5) is None  # its events of steps 4 and 5 are flushed with the checkpoint
    (tmp_path / "checkpoints" / "step_00000005.pt").unlink()  # killed after step 5: the last checkpoint is 3's
    Trainer(config, resume="latest").fit()
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


def test_resuming_with_other_settings_is_refused(tmp_path: Path) -> None:
    assert Trainer(small_config(tmp_path)).fit(until=2) is None
    with pytest.raises(ValueError, match=r"step_00000002.pt belongs to a run with other settings \(lr: "):
        Trainer(small_config(tmp_path, lr=1e-3), resume="latest")
    with pytest.raises(ValueError, match=r"loss: .*'beta': 0.3.* there, .*'beta': 0.1"):
        Trainer(
            small_config(tmp_path, loss=LossConfig(detach_targets=True, roi_tag_align=1.0, beta=0.1)), resume="latest"
        )
    assert Trainer(small_config(tmp_path, workers=1, save_every=5), resume="latest").step == 2


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    trainer = Trainer(small_config(tmp_path, steps=1))
    trainer.fit()
    state = torch.load(latest_checkpoint(tmp_path / "checkpoints"), weights_only=True)
    assert state["step"] == 1 and set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng"}


def test_warmup_then_cosine() -> None:
    schedule = warmup_cosine(100, 0.1)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(55) == pytest.approx(0.5, abs=0.02)
    assert schedule(99) < 0.01


def test_weight_decay_only_on_matrices(tmp_path: Path) -> None:
    trainer = Trainer(small_config(tmp_path, steps=1))
    decay, no_decay = trainer.optimizer.param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in undecayed
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any("bias" in n for n in undecayed) and any("positional" in n or "token" in n for n in undecayed)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes_match_one(tmp_path: Path) -> None:
    """Two gloo ranks with half the batch each train to the same weights as one process on the whole batch.

    The model is tiny-vit with the patch stem: BatchNorm (conv stem, ResNet) normalises each rank's half
    batch on CPU, where SyncBatchNorm is unavailable, so only a BatchNorm-free model can match exactly.
    """
    config = load_config("tiny-vit")
    config.vision.stem, config.vision.stem_channels = "patch", []
    config.save(tmp_path / "tiny-vit-patch.json")
    args = [
        "train",
        "--model",
        str(tmp_path / "tiny-vit-patch.json"),
        "--roi-tag-align",
        "1",
        "--detach-targets",
        *TINY,
    ]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "softclip.cli",
        *args,
        "--out",
        str(tmp_path / "ddp"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    single = from_pretrained(tmp_path / "single" / "final").state_dict()
    ddp = from_pretrained(tmp_path / "ddp" / "final").state_dict()
    for name, tensor in single.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("fmt", ["csv", "wds"])
def test_trains_from_files_written_by_synth(tmp_path: Path, fmt: str, capsys) -> None:
    """`softclip synth` output read back by the real readers; a corrupt image is skipped and reported."""
    assert main(["synth", str(tmp_path / "data"), "--n", "16", "--format", fmt]) == 0
    source = capsys.readouterr().out.strip().splitlines()[-1]
    if fmt == "csv":
        next((tmp_path / "data" / "images").iterdir()).write_bytes(b"not an image")
    out = tmp_path / "run"
    args = ["train", "--data", source, "--out", str(out), "--steps", "2", "--batch-size", "8", "--workers", "0"]
    assert main([*args, "--no-eval", "--roi-tag-align", "1"]) == 0
    assert (out / "final" / "model.safetensors").is_file()
    skips = [r for r in records(out) if "skipped" in r]
    if fmt == "csv":
        assert skips and sum(skips[-1]["skipped"].values()) >= 1
    else:
        assert not skips


def test_trimmed_padding_gives_the_same_text_embeddings() -> None:
    from softclip import create_model
    from softclip.training.batches import trim_padding

    model = create_model("tiny-vit").eval()
    ids = model.tokenizer(["a red circle", "two blue squares"], 32)
    trimmed = trim_padding(ids, model.tokenizer.end_id)
    assert trimmed.shape[1] < 32 and (trimmed[:, -1] != 0).any()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(trimmed), model.encode_text(ids), atol=1e-6, rtol=1e-5)


def test_init_fine_tunes_a_pretrained_clip_keeping_its_tokenizer(tmp_path: Path, capsys) -> None:
    """`--init` starts from a converted CLIP: its weights and tokenizer, with a fresh ROI path."""
    from tests import clip_references as refs

    vocab = refs.write_clip_vocab(tmp_path / "vocab")
    reference, _ = refs.open_clip_model({"image_size": 32, "layers": 2, "width": 128, "patch_size": 8}, True)
    torch.save(reference.state_dict(), tmp_path / "clip.pt")
    assert main(["convert", str(tmp_path / "clip.pt"), "--tokenizer", str(vocab), "--out", str(tmp_path / "ckpt")]) == 0
    start = from_pretrained(tmp_path / "ckpt")

    out = tmp_path / "run"
    args = ["train", "--init", str(tmp_path / "ckpt"), "--lr", "1e-5", "--out", str(out), *TINY]
    assert main(args) == 0
    tuned = from_pretrained(out / "final")
    assert tuned.config == start.config and tuned.tokenizer.settings == start.tokenizer.settings
    texts = ["a red circle", "two blue squares!"]
    assert torch.equal(tuned.tokenizer(texts, 77), start.tokenizer(texts, 77))
    before, after = start.state_dict(), tuned.state_dict()
    moved = [name for name in before if not torch.equal(before[name], after[name])]
    assert moved and all((after[name] - before[name]).abs().max() < 0.01 for name in moved if "roi" not in name)
    assert json.loads((out / "train_config.json").read_text())["init"] == str(tmp_path / "ckpt")


def test_captions_without_regions_train_with_image_text_guidance(tmp_path: Path, capsys) -> None:
    import csv

    from softclip.training.scenes import SynthConfig
    from softclip.training.synthetic import SynthScenes

    data = SynthScenes(SynthConfig(split="train"), length=16)
    (tmp_path / "images").mkdir()
    with open(tmp_path / "captions.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["filepath", "caption"])
        for index in range(16):
            data[index].image.save(tmp_path / "images" / f"{index}.png")
            writer.writerow([f"images/{index}.png", data[index].caption])
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "captions.csv"), "--out", str(out), *TINY]
    assert main(args) == 0
    assert "no detector regions in this data" in capsys.readouterr().out
    loss = json.loads((out / "train_config.json").read_text())["loss"]
    assert loss["guidance"] == "image_text" and loss["roi_tag_align"] == 0.0
    assert {"soft", "relation"} <= set([r for r in records(out) if "loss" in r][-1])


def test_train_options_left_out_keep_the_configs_defaults() -> None:
    from softclip.cli import build_parser
    from softclip.cli.train import train_config
    from softclip.loss import LossConfig
    from softclip.training.trainer import TrainConfig

    assert train_config(build_parser().parse_args(["train"])) == TrainConfig()
    argv = ["train", "--loss", "clip", "--tokenizer", "vocab/", "--no-eval", "--no-detach-targets", "--lr", "1e-5"]
    config = train_config(build_parser().parse_args(argv))
    loss = LossConfig(variant="clip", detach_targets=False)
    assert config == TrainConfig(loss=loss, init_tokenizer="vocab/", evaluate=False, lr=1e-5)


def load_ablation():
    """benchmarks/ablation.py as a module (benchmarks are scripts, not a package)."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "ablation.py"
    spec = importlib.util.spec_from_file_location("ablation", path)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    return ablation


def test_every_ablation_row_trains_the_loss_it_names() -> None:
    import argparse

    from softclip.cli import build_parser
    from softclip.cli.train import train_config

    ablation = load_ablation()
    recipe = argparse.Namespace(model="tiny-vit", steps=3, batch_size=8, lr=1e-3, caption_noise=0.0)
    assert len({ablation.slug(name) for name in ablation.ROWS}) == len(ablation.ROWS)  # one result file per row
    for name, row in ablation.ROWS.items():
        command = ablation.train_command(name, 0, recipe, Path("out"))
        loss = train_config(build_parser().parse_args(command[command.index("train") :])).loss
        for field, expected in row._asdict().items():
            assert getattr(loss, field) == (getattr(LossConfig(), field) if expected is None else expected), name


def test_the_ablation_table_holds_the_recipe_rows_and_seeds_asked_for(tmp_path: Path) -> None:
    import argparse

    ablation = load_ablation()
    args = argparse.Namespace(
        model="tiny-vit", steps=3, batch_size=8, lr=1e-3, caption_noise=0.0, results=tmp_path, rows=["CLIP"], seeds=[0]
    )
    other_recipe = argparse.Namespace(**(vars(args) | {"steps": 4}))
    for row, seed, recipe_args in [("CLIP", 0, args), ("CLIP", 1, args), ("CLIP + soft loss", 0, args)]:
        result = {"row": row, "seed": seed, "recipe": ablation.recipe(recipe_args), "seconds": 1, "metrics": {}}
        (tmp_path / f"{ablation.slug(row)}-seed{seed}.json").write_text(json.dumps(result))
    stale = {"row": "CLIP", "seed": 0, "recipe": ablation.recipe(other_recipe), "seconds": 1, "metrics": {}}
    (tmp_path / "clip-seed0-other-recipe.json").write_text(json.dumps(stale))
    assert [(r["row"], r["seed"], r["recipe"]["steps"]) for r in ablation.finished_runs(args)] == [("CLIP", 0, 3)]


def test_an_ablation_run_reuses_a_kept_result_of_its_own_recipe_only(tmp_path: Path) -> None:
    import argparse

    ablation = load_ablation()
    args = argparse.Namespace(
        model="tiny-vit", steps=3, batch_size=8, lr=1e-3, caption_noise=0.0, results=tmp_path, out=tmp_path / "out"
    )
    kept = {"row": "CLIP", "seed": 0, "recipe": ablation.recipe(args), "seconds": 1, "metrics": {"i2t_r1": 0.5}}
    (tmp_path / "clip-seed0.json").write_text(json.dumps(kept))
    assert ablation.run_one("CLIP", 0, args) == kept  # finished: not trained again
    with pytest.raises(ValueError, match="another recipe"):
        ablation.run_one("CLIP", 0, argparse.Namespace(**(vars(args) | {"steps": 4})))
