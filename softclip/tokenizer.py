"""Lower-cased byte-level BPE tokenizer on the ``tokenizers`` library, saved as ``tokenizer.json``.

Every string can be encoded (the 256 byte tokens are always in the vocabulary), so there is no unknown
token. softclip's own tokenizers have fixed special ids: ``<pad>`` = 0, ``<start_of_text>`` = 1,
``<end_of_text>`` = 2 (the text tower pools at the end token), and special-token strings inside a caption are
encoded as plain text, so no caption can inject a pad or an end token.

Tokenizers of pretrained CLIP models (``clip_tokenizer``) keep their source's ids, padding and text clean-up
exactly; those settings are written beside ``tokenizer.json`` as ``tokenizer_settings.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
SETTINGS_FILE_NAME = "tokenizer_settings.json"
CLEANINGS = ("none", "clip")

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


@dataclass(frozen=True)
class TokenizerSettings:
    """How rows are built around the BPE ids; softclip's own tokenizers use the defaults.

    ``clean="clip"`` is OpenAI's and open_clip's text clean-up before BPE: ftfy, HTML unescaping twice,
    runs of whitespace to one space, lower case. ``specials_as_text`` encodes special-token strings in a
    text as plain text; CLIP's tokenizers instead map ``<|endoftext|>`` in a text to the end token.
    """

    start_id: int = START_ID
    end_id: int = END_ID
    pad_id: int = PAD_ID
    clean: str = "none"
    specials_as_text: bool = True

    def __post_init__(self) -> None:
        if self.clean not in CLEANINGS:
            raise ValueError(f"clean must be one of {CLEANINGS}, got {self.clean!r}")

    @classmethod
    def load(cls, file: Path) -> TokenizerSettings:
        """The settings in ``file``, or the defaults when there is no such file."""
        if not file.is_file():
            return cls()
        try:
            return cls(**json.loads(file.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as error:
            raise ValueError(f"{file} is not a valid tokenizer settings file: {error}") from error


def _check_special_tokens(backend: tokenizers.Tokenizer, settings: TokenizerSettings) -> None:
    if settings != TokenizerSettings():
        size = backend.get_vocab_size(with_added_tokens=True)
        bad = {name: value for name, value in dataclasses.asdict(settings).items() if name.endswith("_id")}
        bad = {name: value for name, value in bad.items() if not 0 <= value < size}
        if bad:
            raise ValueError(f"special token ids {bad} are outside the vocabulary of {size} tokens")
        return
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        found = backend.token_to_id(token)
        if found != expected_id:
            raise ValueError(f"special token {token!r} must have id {expected_id}, found {found}")


def _to_file(path: str | Path) -> Path:
    """``path`` itself when it names a ``.json`` file, else ``path / tokenizer.json``."""
    path = Path(path)
    return path if path.suffix == ".json" else path / FILE_NAME


def _settings_file(tokenizer_file: Path) -> Path:
    return tokenizer_file.with_name(SETTINGS_FILE_NAME)


def clip_clean(text: str) -> str:
    """OpenAI's CLIP text clean-up: ftfy, HTML entities unescaped twice, whitespace collapsed, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class Tokenizer:
    """Byte-level BPE: ``tokenizer(texts, context_length)`` gives int64 ids ``[B, context_length]``."""

    def __init__(self, backend: tokenizers.Tokenizer, settings: TokenizerSettings | None = None) -> None:
        settings = settings or TokenizerSettings()
        _check_special_tokens(backend, settings)
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = settings.specials_as_text  # "<pad>" in a caption is text, not id 0
        self.backend, self.settings = backend, settings

    @property
    def end_id(self) -> int:
        """The end-of-text id, where the text tower pools."""
        return self.settings.end_id

    def clean(self, text: str) -> str:
        """``text`` as the BPE sees it (only CLIP-style tokenizers clean it up before their normaliser)."""
        return clip_clean(text) if self.settings.clean == "clip" else text

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
            return cls(backend, TokenizerSettings.load(_settings_file(file)))
        except Exception as error:  # the tokenizers library raises a bare Exception on bad JSON
            raise ValueError(f"{file} is not a valid softclip tokenizer: {error}") from error

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` into the folder ``path`` (or to ``path`` when it ends in ``.json``)."""
        file = _to_file(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(file), pretty=True)
        settings_file = _settings_file(file)
        if self.settings != TokenizerSettings():
            settings_file.write_text(json.dumps(dataclasses.asdict(self.settings), indent=2) + "\n")
        elif settings_file.exists():  # a folder saved over: no stale settings may apply to this tokenizer
            settings_file.unlink()
        return file

    @property
    def vocab_size(self) -> int:
        """Number of token ids, specials included; the text tower's embedding needs at least this many rows."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start, end or padding."""
        return self.backend.encode(self.clean(_checked_text(text)), add_special_tokens=False).ids

    def __call__(self, texts: str | list[str], context_length: int = 77) -> torch.LongTensor:
        """``[B, context_length]`` int64: start token, tokens, end token, padding; too long texts lose their tail."""
        _check_context_length(context_length)
        batch = [texts] if isinstance(texts, str) else [_checked_text(text) for text in texts]
        encodings = self.backend.encode_batch_fast([self.clean(text) for text in batch], add_special_tokens=False)
        return torch.from_numpy(_pack_rows([encoding.ids for encoding in encodings], context_length, self.settings))

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of a row of ids; special tokens and padding are skipped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.flatten().tolist()
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def word_spans(self, text: str, context_length: int = 77) -> list[WordSpan]:
        """The words of ``text`` with their token positions in the row ``self(text, context_length)[0]``.

        Words are runs of letters and digits (apostrophes allowed inside); punctuation is no word.
        Words with any token cut off by truncation are left out. A CLIP-style tokenizer's clean-up can change
        the text (HTML entities): then words and offsets are those of the cleaned text.
        """
        _check_context_length(context_length)
        text = self.clean(_checked_text(text))
        offsets = self.backend.encode(text, add_special_tokens=False).offsets
        kept = context_length - 2  # room between the start and end tokens
        spans = []
        for match in _WORD.finditer(text):
            indices = [i for i, (start, end) in enumerate(offsets) if start < match.end() and end > match.start()]
            if indices and indices[-1] < kept:
                positions = tuple(index + 1 for index in indices)  # +1: position 0 holds the start token
                spans.append(WordSpan(match.group(), match.start(), match.end(), positions))
        return spans

    def __getstate__(self) -> tuple[str, dict]:
        # pickling the backend itself would drop encode_special_tokens
        return self.backend.to_str(), dataclasses.asdict(self.settings)

    def __setstate__(self, state: tuple[str, dict]) -> None:
        backend, settings = state
        self.__init__(tokenizers.Tokenizer.from_str(backend), TokenizerSettings(**settings))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"


def _checked_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"texts must be strings, got {type(text).__name__}: {text!r:.80}")
    return text


def _check_context_length(context_length: int) -> None:
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")


def _pack_rows(id_lists: list[list[int]], context_length: int, settings: TokenizerSettings) -> np.ndarray:
    """``[B, context_length]`` int64 rows: start, ids (cut to fit), end, padding."""
    rows = np.full((len(id_lists), context_length), settings.pad_id, dtype=np.int64)
    rows[:, 0] = settings.start_id
    kept = context_length - 2
    for row, ids in zip(rows, id_lists, strict=True):
        count = min(len(ids), kept)
        row[1 : count + 1] = ids[:count]
        row[count + 1] = settings.end_id
    return rows


@functools.lru_cache(maxsize=1)
def _default_tokenizer() -> Tokenizer:
    return Tokenizer.default()


def tokenize(texts: str | list[str], context_length: int = 77, tokenizer: Tokenizer | None = None) -> torch.LongTensor:
    """Ids ``[B, context_length]`` from ``tokenizer``, or from the byte-only ``Tokenizer.default()`` when none."""
    return (_default_tokenizer() if tokenizer is None else tokenizer)(texts, context_length)
