"""The tokenizers of pretrained CLIP models, rebuilt so that their ids equal the source library's.

Two families share CLIP's byte-level BPE vocabulary (49,408 tokens, ``</w>`` marking the end of a word):

- OpenAI's and open_clip's tokenizer (``style="openai"``): ftfy, HTML unescaping and whitespace clean-up in
  Python, then CLIP's word pattern, bytes mapped one to one, BPE; rows padded with 0.
- transformers' ``CLIPTokenizer`` (``style="transformers"``): NFC, whitespace and lower case in the
  normaliser, CLIP's word pattern and GPT-2's byte-level pattern, BPE; rows padded with its ``pad_token``.

A transformers folder with ``tokenizer.json`` is read as it is (the ``tokenizers`` library runs the very file
transformers runs); a folder with only ``vocab.json`` and ``merges.txt`` is built the way transformers builds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers

from softclip.tokenizer import Tokenizer, TokenizerSettings

START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
# CLIP's word pattern: the special tokens, English contractions, runs of letters, single digits, and runs of
# everything else but whitespace. transformers names the specials as the vocabulary does; open_clip names them
# <start_of_text> and <end_of_text>, so that "<|endoftext|>" in a caption is plain text there.
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
WORD_PATTERNS = {
    "transformers": r"<\|startoftext\|>|<\|endoftext\|>|" + _WORDS,
    "openai": r"<start_of_text>|<end_of_text>|" + _WORDS,
}
STYLES = ("openai", "transformers")


def read_vocab(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``vocab.json`` and ``merges.txt`` of ``folder`` (the merges file may start with a ``#version`` line)."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    bad = [line for line in merges if len(line) != 2]
    if bad:
        raise ValueError(f"{folder / 'merges.txt'}: a merge must be two tokens separated by a space, got {bad[0]}")
    return vocab, merges


def clip_backend(vocab: dict[str, int], merges: list[tuple[str, str]], style: str) -> tokenizers.Tokenizer:
    """CLIP's BPE over ``vocab`` and ``merges`` as ``style`` runs it (see the module's docstring)."""
    if style not in STYLES:
        raise ValueError(f"tokenizer style must be one of {STYLES}, got {style!r}")
    missing = [token for token in (START_TOKEN, END_TOKEN) if token not in vocab]
    if missing:
        raise ValueError(f"not a CLIP vocabulary: {missing} missing from vocab.json")
    bpe = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", unk_token=END_TOKEN, fuse_unk=False)
    backend = tokenizers.Tokenizer(bpe)
    if style == "transformers":
        whitespace = normalizers.Replace(Regex(r"\s+"), " ")
        backend.normalizer = normalizers.Sequence([normalizers.NFC(), whitespace, normalizers.Lowercase()])
    words = pre_tokenizers.Split(Regex(WORD_PATTERNS[style]), behavior="removed", invert=True)
    # OpenAI maps the bytes of each word one to one; transformers also splits them with GPT-2's pattern.
    to_bytes = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=style == "transformers")
    backend.pre_tokenizer = pre_tokenizers.Sequence([words, to_bytes])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([START_TOKEN, END_TOKEN])
    return backend


def clip_settings(backend: tokenizers.Tokenizer, style: str, pad_token: str | None = None) -> TokenizerSettings:
    """Start, end and pad ids of a CLIP vocabulary; OpenAI pads with id 0, transformers with ``pad_token``."""
    start, end = backend.token_to_id(START_TOKEN), backend.token_to_id(END_TOKEN)
    pad = 0 if style == "openai" else backend.token_to_id(pad_token or END_TOKEN)
    if None in (start, end, pad):
        raise ValueError(f"not a CLIP vocabulary: no id for {START_TOKEN}, {END_TOKEN} or pad token {pad_token!r}")
    # transformers maps "<|endoftext|>" in a text to the end token. open_clip maps its own names of the
    # specials instead, which softclip encodes as text: the one known difference from open_clip's ids.
    openai = style == "openai"
    return TokenizerSettings(
        start_id=start, end_id=end, pad_id=pad, clean="clip" if openai else "none", specials_as_text=openai
    )


def openai_tokenizer(folder: Path) -> Tokenizer:
    """OpenAI's / open_clip's CLIP tokenizer from ``vocab.json`` and ``merges.txt`` in ``folder``."""
    vocab, merges = read_vocab(folder)
    backend = clip_backend(vocab, merges, "openai")
    return Tokenizer(backend, clip_settings(backend, "openai"))


def transformers_tokenizer(folder: Path) -> Tokenizer:
    """transformers' CLIP tokenizer saved in ``folder``: ``tokenizer.json``, or ``vocab.json`` + ``merges.txt``."""
    pad_token = _pad_token(folder)
    if (folder / "tokenizer.json").is_file():
        backend = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    else:
        backend = clip_backend(*read_vocab(folder), "transformers")
    return Tokenizer(backend, clip_settings(backend, "transformers", pad_token))


def _pad_token(folder: Path) -> str | None:
    """The pad token named in ``tokenizer_config.json`` or ``special_tokens_map.json`` (either may be absent)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = folder / name
        if file.is_file():
            token = json.loads(file.read_text(encoding="utf-8")).get("pad_token")
            if isinstance(token, dict):  # an AddedToken written out
                token = token.get("content")
            if token:
                return token
    return None


def has_vocab(folder: Path) -> bool:
    """Whether ``folder`` holds a CLIP tokenizer's files."""
    return (folder / "tokenizer.json").is_file() or all((folder / n).is_file() for n in ("vocab.json", "merges.txt"))


def folder_tokenizer(folder: Path, style: str) -> Tokenizer:
    """The CLIP tokenizer saved in ``folder``, run as ``style`` runs it.

    An OpenAI-style tokenizer is built from ``vocab.json`` and ``merges.txt`` or, when only a transformers
    ``tokenizer.json`` is there, from the vocabulary and merges inside it.
    """
    if style == "transformers":
        return transformers_tokenizer(folder)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return openai_tokenizer(folder)
    bpe = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    backend = clip_backend(bpe["vocab"], merges, "openai")
    return Tokenizer(backend, clip_settings(backend, "openai"))
