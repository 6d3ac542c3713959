"""The SoftCLIP trainer: AdamW + warm-up/cosine, AMP, DDP under torchrun, atomic checkpoints, exact resume.

The loop never names the objective: the loss module is built from the config and consumes the model's
output dict, so CLIP and every SoftCLIP variant are the same code path.

Data order is a pure function of (seed, step): step `s` of epoch `e` takes slice `s` of a permutation
seeded by (seed, e), and each sample's augmentation is seeded by (seed, e, index). Resuming therefore
needs only the step counter, and a resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import gc
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from itertools import zip_longest
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from softclip.atomic import write_text_atomically
from softclip.loss import LossConfig, SoftCLIPLoss
from softclip.model import create_model
from softclip.pretrained import from_pretrained
from softclip.save import save_pretrained
from softclip.tokenizer import Tokenizer
from softclip.training.batches import Collate, StepSampler, TrainingSamples, train_tokenizer
from softclip.training.checkpoints import has_regions, latest_checkpoint, restore_rng, rng_state, save_atomic
from softclip.training.data import SkipLog
from softclip.training.datasets import open_dataset
from softclip.training.distributed import init_distributed
from softclip.training.optimiser import parameter_groups, resolve_precision, warmup_cosine
from softclip.transform import PreprocessConfig


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

    @classmethod
    def from_dict(cls, fields: dict) -> TrainConfig:
        """The config a run saved as `train_config.json` (its `loss` a nested dict)."""
        return cls(**{**fields, "loss": LossConfig(**fields.get("loss", {}))})


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
        resumed_from = self._resume(resume) if resume else None
        if self.is_main:
            keep_log_until(self.metrics_path, self.step)
        self.tensorboard = tensorboard_writer(self.out / "tensorboard", self.step) if self.is_main else None
        if resumed_from:
            self._log({"event": "resumed", "from": str(resumed_from), "step": self.step})

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

    def _resume(self, resume: str) -> Path | None:
        """Load the checkpoint ``resume`` names ("latest": the newest in the run's folder); returns its path."""
        path = latest_checkpoint(self.out / "checkpoints") if resume == "latest" else Path(resume)
        if path is None:
            return None  # nothing to resume: a fresh run
        state = torch.load(path, map_location=self.dist.device, weights_only=True)
        _check_resumable(state["config"], self.config, path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        restore_rng(state["rng"][min(self.dist.rank, len(state["rng"]) - 1)])
        return path

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
        if self.tensorboard is not None:
            self.tensorboard.flush()  # the events up to a checkpoint are on disk as long as it is
        return path

    def _finish(self) -> Path:
        final = self.out / "final"
        if self.is_main:
            save_pretrained(self.model, final)
        if self.tensorboard is not None:
            self.tensorboard.close()
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


# What may change between a run and its resumption: where it writes and how often it saves, logs and measures.
# Anything else (loss, data, schedule, seed) would silently splice two different runs together.
RESUMABLE_CHANGES = frozenset({"out", "workers", "save_every", "eval_every", "evaluate", "log_every"})


def _check_resumable(saved: dict, config: TrainConfig, checkpoint: Path) -> None:
    now = asdict(config)
    changed = [name for name in now if name not in RESUMABLE_CHANGES and saved.get(name) != now[name]]
    if changed:
        differences = "; ".join(f"{name}: {saved.get(name)!r} there, {now[name]!r} now" for name in changed)
        raise ValueError(
            f"{checkpoint} belongs to a run with other settings ({differences}): resume with that run's "
            "settings, or train into a new --out"
        )


def keep_log_until(metrics_path: Path, step: int) -> None:
    """Drop the records past ``step`` from a run's log, so a resumed run's log reads as an uninterrupted one's.

    They come from a sitting killed after its last checkpoint, whose later steps are trained again (a fresh
    run, at step 0, starts a new log); a line cut short by the kill goes too.
    """
    if not metrics_path.exists():
        return
    kept = [line for line in metrics_path.read_text().splitlines() if _record_step(line) <= step]
    write_text_atomically(metrics_path, "".join(f"{line}\n" for line in kept))


def _record_step(line: str) -> float:
    """The step a log line records, infinite for a line that is not a whole record."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def tensorboard_writer(folder: Path, step: int):
    """A TensorBoard writer when the tensorboard package is installed, else None (metrics.jsonl has it all).

    It hides the events past ``step`` that an earlier sitting wrote, as ``keep_log_until`` drops them.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder), purge_step=step + 1)


def train(config: TrainConfig, resume: str | None = None) -> Path:
    """Train with `config` (under torchrun too); returns the final checkpoint folder."""
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.fit()
    finally:
        if dist.is_initialized():
            # DDP's reducer holds gloo work objects; left for the interpreter's shutdown they can abort the
            # process after training has finished, so they go while the process group is still alive
            del trainer
            gc.collect()
            dist.destroy_process_group()
