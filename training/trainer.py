"""The SoftCLIP trainer: AdamW + warm-up/cosine, AMP, DDP under torchrun, atomic checkpoints, exact resume.

The loop never names the objective: the loss module is built from the config and consumes the model's
output dict, so CLIP and every SoftCLIP variant are the same code path.

Data order is a pure function of (seed, step): step `s` of epoch `e` takes slice `s` of a permutation
seeded by (seed, e), and each sample's augmentation is seeded by (seed, e, index). Resuming therefore
needs only the step counter, and a resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from softclip.loss import LossConfig, SoftCLIPLoss
from softclip.model import create_model
from softclip.pretrained import from_pretrained
from softclip.save import save_pretrained
from softclip.tokenizer import Tokenizer
from softclip.training.data import SkipLog
from softclip.training.datasets import open_dataset, sample_texts
from softclip.transform import PreprocessConfig, RandomResizedCrop, image_to_tensor


@dataclass
class TrainConfig:
    """Everything a run needs; saved as `train_config.json` beside the checkpoints."""

    model: str = "tiny-vit"  # preset or config JSON of a model trained from scratch
    init: str | None = None  # or: start from these weights (softclip checkpoint, CLIP folder or file, Hub id)
    init_tokenizer: str | None = None  # CLIP vocab.json + merges.txt folder, for an --init without one beside it
    data: str = "synth"  # "synth", a CSV/TSV file or WebDataset shards "a-{000..009}.tar"
    vinvl: str | None = None  # VinVL features (either layout, see vinvl.py) joined to `data` by image key
    out: str = "runs/softclip"
    loss: LossConfig = field(default_factory=LossConfig)
    steps: int = 500
    batch_size: int = 128  # global batch (all ranks together), before accumulation
    accum_steps: int = 1  # micro-batches per optimiser step; negatives come from each micro-batch
    lr: float = 5e-4
    weight_decay: float = 0.2
    warmup: float = 0.1  # fraction of steps with a linear warm-up
    grad_clip: float = 1.0
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (bf16 on CUDA, fp32 on CPU: CPU bf16 matmul is slower)
    seed: int = 0
    workers: int = 1
    save_every: int = 0  # also checkpoint every K steps (0: at each epoch end and the end only)
    eval_every: int = 0  # evaluate every K steps (0: at each epoch end)
    evaluate: bool = True  # run the evaluation at all (SynthScenes sets; other data has none built in)
    vocab_size: int = 0  # tokenizer size when training one (0: the model's vocab_size)
    tokenizer_sample: int = 20000  # how many training samples the tokenizer is trained on
    synth_size: int = 100_000  # length of one epoch of SynthScenes
    caption_noise: float = 0.2
    augment: bool = True
    log_every: int = 10


# ----------------------------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")


def init_distributed() -> DistInfo:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


# ------------------------------------------------------------------------------------------------------- data


class StepSampler(Sampler[list[int]]):
    """Yields, for each step from `start_step`, this rank's slice of the global batch of dataset indices."""

    def __init__(self, size: int, batch_size: int, rank: int, world: int, seed: int, start_step: int, steps: int):
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world} ranks")
        if size < batch_size:
            raise ValueError(f"the dataset has {size} samples, fewer than one batch of {batch_size}")
        self.size, self.batch_size, self.rank, self.world = size, batch_size, rank, world
        self.seed, self.start_step, self.steps = seed, start_step, steps
        self.steps_per_epoch = size // batch_size

    def indices(self, step: int) -> list[int]:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng((self.seed, epoch)).permutation(self.size)
        batch = order[position * self.batch_size : (position + 1) * self.batch_size]
        local = self.batch_size // self.world
        return [int(i) for i in batch[self.rank * local : (self.rank + 1) * local]]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            yield [(step, i) for i in self.indices(step)]

    def __len__(self) -> int:
        return self.steps - self.start_step


class TrainingSamples(Dataset):
    """Turns dataset samples into tensors; augmentation is seeded by (seed, step's epoch, index)."""

    def __init__(self, dataset, preprocess: PreprocessConfig, seed: int, steps_per_epoch: int, augment: bool):
        self.dataset, self.preprocess, self.seed = dataset, preprocess, seed
        self.steps_per_epoch, self.augment = steps_per_epoch, augment
        self.crop = RandomResizedCrop(preprocess.size)
        # A random crop is already square: it is only resized, never centre-cropped again.
        self.crop_preprocess = replace(preprocess, resize_mode="squash")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        step, index = key
        sample = self.dataset[index]
        if self.augment:
            rng = np.random.default_rng((self.seed, step // self.steps_per_epoch, index))
            pixels = image_to_tensor(self.crop(sample.image, rng), self.crop_preprocess)
        else:
            pixels = image_to_tensor(sample.image, self.preprocess)
        return {
            "image": pixels,
            "caption": sample.caption,
            "tags": sample.tags,
            "rois": torch.from_numpy(np.asarray(sample.rois, dtype=np.float32)),
            "roi_mask": torch.from_numpy(np.asarray(sample.roi_mask, dtype=bool)),
            "skipped": tuple(sample.skipped),
            "skip_examples": tuple(sample.skip_examples),
        }


class Collate:
    """Stacks tensors and tokenises captions and tags (picklable for worker processes)."""

    def __init__(self, tokenizer: Tokenizer, context_length: int):
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        end_id = self.tokenizer.end_id
        return {
            "images": torch.stack([item["image"] for item in items]),
            "texts": trim_padding(self.tokenizer([item["caption"] for item in items], self.context_length), end_id),
            "tags": trim_padding(self.tokenizer([item["tags"] for item in items], self.context_length), end_id),
            "rois": torch.stack([item["rois"] for item in items]),
            "roi_mask": torch.stack([item["roi_mask"] for item in items]),
            "skipped": [reason for item in items for reason in item["skipped"]],
            "skip_examples": [example for item in items for example in item["skip_examples"]],
        }


def trim_padding(ids: torch.Tensor, end_id: int) -> torch.Tensor:
    """Drop the columns after every row's end token: the causal text tower gives the same embeddings, faster."""
    return ids[:, : int((ids == end_id).int().argmax(dim=1).max()) + 1]


def train_tokenizer(dataset, vocab_size: int, sample: int) -> Tokenizer:
    """A tokenizer trained on the captions and tags of the first `sample` training samples."""
    count = min(sample, len(dataset))
    texts = (text for i in range(count) for text in sample_texts(dataset, i))
    return Tokenizer.train(texts, vocab_size=vocab_size)


# ------------------------------------------------------------------------------------------------ optimiser


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: none on gains, biases, embeddings, tokens or logit_scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.ndim >= 2 and "embedding" not in name and "token" not in name
        (decay if is_matrix else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(steps: int, warmup_fraction: float):
    """Learning-rate multiplier: linear warm-up over `warmup_fraction` of steps, then cosine to zero."""
    warmup = max(1, int(steps * warmup_fraction))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of fp32, bf16, fp16 or auto, not {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs a CUDA device; use bf16 or fp32 on CPU")
    return dtypes[precision]


# ------------------------------------------------------------------------------------------------ checkpoints


def rng_state() -> dict:
    """Every generator's state as tensors and numbers, so checkpoints load with `weights_only=True`."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": [version, torch.tensor(internal, dtype=torch.int64), python_gauss],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, python_gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), python_gauss))


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def has_regions(dataset: Dataset, probe: int = 16) -> bool:
    """Whether any of the first ``probe`` samples has a detector region (a data set has them all or none)."""
    return any(dataset[index].roi_mask.any() for index in range(min(probe, len(dataset))))


def latest_checkpoint(folder: Path) -> Path | None:
    checkpoints = sorted(folder.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return checkpoints[-1] if checkpoints else None


# -------------------------------------------------------------------------------------------------- trainer


class Trainer:
    """One training run: build everything from a `TrainConfig`, then `fit()`."""

    def __init__(self, config: TrainConfig, resume: str | None = None) -> None:
        self.config = config
        self.dist = init_distributed()
        self.out = Path(config.out)
        self.is_main = self.dist.rank == 0
        torch.manual_seed(config.seed)
        self.dataset = open_dataset(config.data, config.vinvl, config.synth_size, config.caption_noise)
        if self.is_main and getattr(self.dataset, "description", ""):
            print(self.dataset.description, flush=True)  # which VinVL layout was found, and how the join went
        self.skipped = SkipLog()
        self._guide_without_regions()
        self.model = self._initial_model().to(self.dist.device)
        self.loss_fn = SoftCLIPLoss(config.loss)
        self.autocast_dtype = resolve_precision(config.precision, self.dist.device)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(config.steps, config.warmup))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.step = 0
        self.ddp_model = self._wrap_ddp()
        self.steps_per_epoch = len(self.dataset) // config.batch_size
        self.metrics_path = self.out / "metrics.jsonl"
        self.tensorboard = tensorboard_writer(self.out / "tensorboard") if self.is_main else None
        if resume:
            self._resume(resume)

    def _guide_without_regions(self) -> None:
        """Captions without detector regions: soft targets from image-image and text-text similarity instead."""
        if not self.config.loss.needs_roi_tag() or has_regions(self.dataset):
            return
        self.config.loss = replace(self.config.loss, guidance="image_text", roi_tag_align=0.0)
        if self.is_main:
            print(
                "no detector regions in this data: soft targets come from image-image and text-text similarity "
                "(guidance image_text, no ROI-tag alignment)",
                flush=True,
            )

    def _initial_model(self) -> torch.nn.Module:
        """The pretrained model of ``init`` (its tokenizer and preprocessing too), or a fresh ``model``."""
        if self.config.init:
            model = from_pretrained(self.config.init, tokenizer=self.config.init_tokenizer).train()
            self._write_run_config()
            return model
        model = create_model(self.config.model)
        model.preprocess_config = PreprocessConfig(size=model.config.vision.image_size)
        model.tokenizer = self._tokenizer(self.config.vocab_size or model.config.text.vocab_size)
        return model

    def _write_run_config(self) -> None:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    def _tokenizer(self, vocab_size: int) -> Tokenizer:
        """Trained on this data on rank 0 and shared through the output folder with the other ranks."""
        path = self.out / "tokenizer.json"
        if self.is_main and not path.exists():
            self.out.mkdir(parents=True, exist_ok=True)
            train_tokenizer(self.dataset, vocab_size, self.config.tokenizer_sample).save(path)
            self._write_run_config()
        if self.dist.world > 1:
            dist.barrier()
        return Tokenizer.load(path)

    def _wrap_ddp(self) -> torch.nn.Module:
        if self.dist.world == 1:
            return self.model
        ids = None
        if self.dist.device.type == "cuda":  # SyncBatchNorm needs CUDA; on CPU each rank normalises its own slice
            ids = [self.dist.local_rank]
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        # Detached targets without alignment leave the ROI and tag paths without gradient.
        loss = self.config.loss
        unused = not loss.needs_roi_tag() or (loss.targets_detached and loss.align_weight == 0)
        return torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=unused)

    def _resume(self, resume: str) -> None:
        path = latest_checkpoint(self.out / "checkpoints") if resume == "latest" else Path(resume)
        if path is None:
            return  # nothing to resume: a fresh run
        state = torch.load(path, map_location=self.dist.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        restore_rng(state["rng"][min(self.dist.rank, len(state["rng"]) - 1)])
        self._log({"event": "resumed", "from": str(path), "step": self.step})

    def _loader(self) -> DataLoader:
        sampler = StepSampler(
            len(self.dataset),
            self.config.batch_size,
            self.dist.rank,
            self.dist.world,
            self.config.seed,
            self.step,
            self.config.steps,
        )
        samples = TrainingSamples(
            self.dataset, self.model.preprocess_config, self.config.seed, sampler.steps_per_epoch, self.config.augment
        )
        collate = Collate(self.model.tokenizer, self.model.config.text.context_length)
        return DataLoader(
            samples,
            batch_sampler=sampler,
            num_workers=self.config.workers,
            collate_fn=collate,
            persistent_workers=False,
            prefetch_factor=4 if self.config.workers else None,
        )

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimiser step over `accum_steps` micro-batches; returns the loss terms."""
        self.ddp_model.train()
        skipped, examples = batch.pop("skipped", []), batch.pop("skip_examples", [])
        for reason, example in zip_longest(skipped, examples, fillvalue=""):  # the example names the sample's key
            self.skipped.add(reason, example)
        if not self.config.loss.needs_roi_tag():  # plain CLIP: the ROI and tag passes would be wasted work
            batch = {k: batch[k] for k in ("images", "texts")}
        micro = [{k: v[i :: self.config.accum_steps] for k, v in batch.items()} for i in range(self.config.accum_steps)]
        terms: dict[str, float] = {}
        for index, part in enumerate(micro):
            sync = index == len(micro) - 1 or self.dist.world == 1
            with self._autocast(), nullcontext() if sync else self.ddp_model.no_sync():
                part = {k: v.to(self.dist.device, non_blocking=True) for k, v in part.items()}
                losses = self.loss_fn(self.ddp_model(**part))
            self.scaler.scale(losses["loss"] / len(micro)).backward()
            for name, value in losses.items():
                terms[name] = terms.get(name, 0.0) + float(value.detach()) / len(micro)
        self.scaler.unscale_(self.optimizer)
        terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        with torch.no_grad():  # CLIP clamps the temperature so the scale stays <= 100
            self.model.logit_scale.clamp_(0, math.log(100))
        self.step += 1
        return terms

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.autocast_dtype)

    def fit(self, until: int | None = None) -> Path | None:
        """Train to `config.steps` and return the final `from_pretrained` folder.

        With `until`, stop after that step instead (a checkpoint is written there) and return None:
        the run continues later with `resume="latest"`, exactly as if it had never stopped.
        """
        from tqdm import tqdm

        bar = tqdm(total=self.config.steps, initial=self.step, disable=not self.is_main, desc="train", unit="step")
        started, seen = time.perf_counter(), 0
        for batch in self._loader():
            if until is not None and self.step >= until:
                self.save_checkpoint()
                bar.close()
                return None
            terms = self.train_step(batch)
            seen += self.config.batch_size
            rate = seen / (time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(
                {k: f"{v:.3f}" for k, v in terms.items() if k != "grad_norm"} | {"samples/s": f"{rate:.0f}"}
            )
            if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                self._log({"step": self.step, "lr": self.scheduler.get_last_lr()[0], "samples_per_s": rate, **terms})
            self._maybe_checkpoint_and_eval()
        bar.close()
        return self._finish()

    def _maybe_checkpoint_and_eval(self) -> None:
        epoch_end = self.step % self.steps_per_epoch == 0
        last = self.step == self.config.steps
        every = self.config.save_every and self.step % self.config.save_every == 0
        if epoch_end or last or every:
            self.save_checkpoint()
        if (epoch_end or last) and self.skipped.total:
            self._log({"step": self.step, "skipped": dict(self.skipped.counts), "report": self.skipped.report()})
            print(self.skipped.report(), flush=True)
            self.skipped.reset()
        eval_due = self.config.eval_every and self.step % self.config.eval_every == 0
        if (eval_due or epoch_end or last) and self.is_main and self.config.evaluate:
            self._log({"step": self.step, "eval": self.evaluate()})

    def evaluate(self) -> dict[str, float]:
        from softclip.training.evaluate import evaluate_for_training

        return evaluate_for_training(self.model, self.config.data)

    def save_checkpoint(self) -> Path | None:
        """Model, optimiser, scheduler, scaler, step and every rank's RNG, written atomically by rank 0."""
        states = [rng_state()]
        if self.dist.world > 1:
            states = [None] * self.dist.world
            dist.all_gather_object(states, rng_state())
        if not self.is_main:
            return None
        folder = self.out / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.step:08d}.pt"
        save_atomic(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step,
                "rng": states,
                "config": asdict(self.config),
            },
            path,
        )
        return path

    def _finish(self) -> Path:
        final = self.out / "final"
        if self.is_main:
            save_pretrained(self.model, final)
        if self.dist.world > 1:
            dist.barrier()
        return final

    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if "eval" in record:
            print(json.dumps(record), flush=True)
        if self.tensorboard is not None and "step" in record:
            group, scalars = ("eval", record["eval"]) if "eval" in record else ("train", record)
            for name, value in scalars.items():
                if isinstance(value, float | int) and name != "step":
                    self.tensorboard.add_scalar(f"{group}/{name}", value, record["step"])


def tensorboard_writer(folder: Path):
    """A TensorBoard writer when the tensorboard package is installed, else None (metrics.jsonl has it all)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


def train(config: TrainConfig, resume: str | None = None) -> Path:
    """Train with `config` (under torchrun too); returns the final checkpoint folder."""
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
