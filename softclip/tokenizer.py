"""Lower-cased byte-level BPE tokenizer on the ``tokenizers`` library, saved as ``tokenizer.json``.

Every string can be encoded (the 256 byte tokens are always in the vocabulary), so there is no unknown
token. Special tokens have fixed ids: ``<pad>`` = 0 (the text tower pools at the last non-pad position),
``<start_of_text>`` = 1, ``<end_of_text>`` = 2. Special-token strings inside a caption are encoded as
plain text, so no caption can inject a pad or an end token.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tokenizers
import torch
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

PAD_TOKEN, START_TOKEN, END_TOKEN = "<pad>", "<start_of_text>", "<end_of_text>"
SPECIAL_TOKENS = (PAD_TOKEN, START_TOKEN, END_TOKEN)
PAD_ID, START_ID, END_ID = 0, 1, 2
FILE_NAME = "tokenizer.json"

# A word: letters and digits, with apostrophes inside ("don't", "rock'n'roll"); quotes around it are not part of it.
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


class WordSpan(NamedTuple):
    """One word of a caption and the positions of its tokens in the tokenised row."""

    word: str  # as written in the original text
    start: int  # character offsets in the original text
    end: int
    token_positions: tuple[int, ...]  # indices into the [context_length] row (the start token is position 0)


def _normalizer() -> normalizers.Normalizer:
    # NFC, lower case, runs of whitespace collapsed to one space, no leading or trailing space
    return normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Lowercase(),
            normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )


def _configure(backend: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    backend.normalizer = _normalizer()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return backend


def _check_special_tokens(backend: tokenizers.Tokenizer) -> None:
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        found = backend.token_to_id(token)
        if found != expected_id:
            raise ValueError(f"special token {token!r} must have id {expected_id}, found {found}")


def _to_file(path: str | Path) -> Path:
    """``path`` itself when it names a ``.json`` file, else ``path / tokenizer.json``."""
    path = Path(path)
    return path if path.suffix == ".json" else path / FILE_NAME


class Tokenizer:
    """Byte-level BPE: ``tokenizer(texts, context_length)`` gives int64 ids ``[B, context_length]``."""

    def __init__(self, backend: tokenizers.Tokenizer) -> None:
        _check_special_tokens(backend)
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = True  # "<pad>" in a caption is text, not id 0
        self.backend = backend

    @classmethod
    def default(cls) -> Tokenizer:
        """The 256 byte tokens and the specials, no merges: usable before any tokenizer is trained."""
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *alphabet])}
        backend = _configure(tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[])))
        backend.add_special_tokens(list(SPECIAL_TOKENS))
        return cls(backend)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 49408, min_frequency: int = 2) -> Tokenizer:
        """Learn BPE merges from ``texts`` until the vocabulary (specials and bytes included) has ``vocab_size``."""
        minimum = len(SPECIAL_TOKENS) + 256
        if vocab_size < minimum:
            raise ValueError(f"vocab_size must be at least {minimum} (3 special + 256 byte tokens), got {vocab_size}")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend = _configure(tokenizers.Tokenizer(models.BPE()))
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read ``tokenizer.json`` (give the file or the folder holding it)."""
        file = _to_file(path)
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
            return cls(backend)
        except Exception as error:  # the tokenizers library raises a bare Exception on bad JSON
            raise ValueError(f"{file} is not a valid softclip tokenizer: {error}") from error

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` into the folder ``path`` (or to ``path`` when it ends in ``.json``)."""
        file = _to_file(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(file), pretty=True)
        return file

    @property
    def vocab_size(self) -> int:
        """Number of token ids, specials included; the text tower's embedding needs at least this many rows."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start, end or padding."""
        return self.backend.encode(_checked_text(text), add_special_tokens=False).ids

    def __call__(self, texts: str | list[str], context_length: int = 77) -> torch.LongTensor:
        """``[B, context_length]`` int64: start token, tokens, end token, zeros; too long texts lose their tail."""
        _check_context_length(context_length)
        batch = [texts] if isinstance(texts, str) else [_checked_text(text) for text in texts]
        encodings = self.backend.encode_batch_fast(batch, add_special_tokens=False)
        return torch.from_numpy(_pack_rows([encoding.ids for encoding in encodings], context_length))

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of a row of ids; special tokens and padding are skipped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.flatten().tolist()
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def word_spans(self, text: str, context_length: int = 77) -> list[WordSpan]:
        """The words of ``text`` with their token positions in the row ``self(text, context_length)[0]``.

        Words are runs of letters and digits (apostrophes allowed inside); punctuation is no word.
        Words with any token cut off by truncation are left out.
        """
        _check_context_length(context_length)
        offsets = self.backend.encode(_checked_text(text), add_special_tokens=False).offsets
        kept = context_length - 2  # room between the start and end tokens
        spans = []
        for match in _WORD.finditer(text):
            indices = [i for i, (start, end) in enumerate(offsets) if start < match.end() and end > match.start()]
            if indices and indices[-1] < kept:
                positions = tuple(index + 1 for index in indices)  # +1: position 0 holds the start token
                spans.append(WordSpan(match.group(), match.start(), match.end(), positions))
        return spans

    def __getstate__(self) -> str:
        return self.backend.to_str()  # pickling the backend itself would drop encode_special_tokens

    def __setstate__(self, state: str) -> None:
        self.__init__(tokenizers.Tokenizer.from_str(state))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"


def _checked_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"texts must be strings, got {type(text).__name__}: {text!r:.80}")
    return text


def _check_context_length(context_length: int) -> None:
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")


def _pack_rows(id_lists: list[list[int]], context_length: int) -> np.ndarray:
    """``[B, context_length]`` int64 rows: start, ids (cut to fit), end, zero padding."""
    rows = np.zeros((len(id_lists), context_length), dtype=np.int64)
    rows[:, 0] = START_ID
    kept = context_length - 2
    for row, ids in zip(rows, id_lists, strict=True):
        count = min(len(ids), kept)
        row[1 : count + 1] = ids[:count]
        row[count + 1] = END_ID
    return rows


@functools.lru_cache(maxsize=1)
def _default_tokenizer() -> Tokenizer:
    return Tokenizer.default()


def tokenize(texts: str | list[str], context_length: int = 77, tokenizer: Tokenizer | None = None) -> torch.LongTensor:
    """Ids ``[B, context_length]`` from ``tokenizer``, or from the byte-only ``Tokenizer.default()`` when none."""
    return (_default_tokenizer() if tokenizer is None else tokenizer)(texts, context_length)
