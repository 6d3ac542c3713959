"""Training batches: the step-exact sampler, per-sample augmentation, collation, and the tokenizer a run trains."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from softclip.tokenizer import Tokenizer
from softclip.training.datasets import sample_texts
from softclip.transform import PreprocessConfig, RandomResizedCrop, image_to_tensor


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
