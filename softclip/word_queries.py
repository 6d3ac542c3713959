"""Which words of a caption to explain, and the text embedding that stands for each (the ``METHODS``).

Which words: every content word of the caption, i.e. every word not in ``STOP_WORDS`` (articles,
prepositions, conjunctions, pronouns, forms of "to be", spatial relation words such as "left" or "above",
counts, and the framing words of prompts such as "photo"), plus short phrases: runs of 2 to
``MAX_PHRASE_WORDS`` content words separated only by spaces ("red circle", "large red circle").
Spatial words are skipped because a relation is not a region: "left of" is true of two objects at once.

How a word becomes a text embedding, queried in its caption's context (``method``):

- ``"contribution"`` (default): the caption's embedding minus the embedding of the caption with the
  word's tokens deleted. Grad-CAM of its cosine with the image is Grad-CAM of how much the caption's
  match with the image drops without the word. The difference also cancels the direction that all text
  sharing the rest of the caption has, which would otherwise light up the same region for every word.
- ``"isolate"``: the caption with every *other* content word deleted (stop words and the word stay).
- ``"template"``: the word alone in a short prompt (``DEFAULT_TEMPLATE``), without the caption.

Words are located by ``Tokenizer.word_spans``, so deleting a word deletes exactly its tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from softclip.gradcam import eval_mode
from softclip.tokenizer import Tokenizer, WordSpan

# Words that name no region of an image. Colours, shapes, objects, materials and sizes are content.
STOP_WORDS = frozenset(
    # articles, determiners, pronouns
    "a an the this that these those some any each every its it their there here"
    # prepositions and conjunctions
    " of on in at to for from with without by as into onto upon and or but nor than"
    # forms of "to be" and "to have"
    " is are was were be been being am has have had"
    # spatial relations: true of two regions at once
    " left right above below under over beneath behind beside besides near next between"
    " top bottom front back middle center centre side inside outside around against along across"
    # counts
    " no one two three four five six seven eight nine ten several many few"
    # the framing words of prompts
    " photo picture image drawing rendering shapes scene simple".split()
)
MAX_PHRASE_WORDS = 3
METHODS = ("contribution", "isolate", "template")
DEFAULT_METHOD = "contribution"
DEFAULT_TEMPLATE = "a photo of {}."


class Query(NamedTuple):
    """A word or phrase of a caption: its text as written and the spans of all its occurrences."""

    text: str
    spans: tuple[WordSpan, ...]

    @property
    def positions(self) -> set[int]:
        """Token positions of every occurrence, in the caption's row."""
        return {position for span in self.spans for position in span.token_positions}


def _is_content(span: WordSpan) -> bool:
    return span.word.lower() not in STOP_WORDS


def _phrase_runs(caption: str, spans: list[WordSpan]) -> list[list[WordSpan]]:
    """Maximal runs of content words separated only by whitespace."""
    runs: list[list[WordSpan]] = []
    for span in spans:
        if not _is_content(span):
            runs.append([])
        elif runs and runs[-1] and not caption[runs[-1][-1].end : span.start].strip():
            runs[-1].append(span)
        else:
            runs.append([span])
    return [run for run in runs if run]


def _written(caption: str, run: Sequence[WordSpan]) -> str:
    return caption[run[0].start : run[-1].end]


def _occurrences(spans: list[WordSpan], words: list[str]) -> tuple[WordSpan, ...]:
    """Every span of ``spans`` that is part of a match of the lower-case word sequence ``words``."""
    found: list[WordSpan] = []
    for start in range(len(spans) - len(words) + 1):
        window = spans[start : start + len(words)]
        if [span.word.lower() for span in window] == words:
            found.extend(window)
    return tuple(found)


def content_queries(caption: str, spans: list[WordSpan], phrases: bool = True) -> list[Query]:
    """The caption's content words (each once) and, with ``phrases``, its short phrases, in reading order."""
    queries: dict[str, Query] = {}
    for run in _phrase_runs(caption, spans):
        for span in run:
            key = span.word.lower()
            queries.setdefault(key, Query(span.word, _occurrences(spans, [key])))
        if phrases and 2 <= len(run) <= MAX_PHRASE_WORDS:
            key = " ".join(span.word.lower() for span in run)
            queries.setdefault(key, Query(_written(caption, run), _occurrences(spans, key.split())))
    return list(queries.values())


def requested_queries(tokenizer: Tokenizer, caption: str, spans: list[WordSpan], words: Sequence[str]) -> list[Query]:
    """``words`` (words or phrases of the caption, any case) as queries; a clear error for any not found."""
    queries = []
    for requested in words:
        if not isinstance(requested, str) or not requested.strip():
            raise ValueError(f"words must be non-empty strings, got {requested!r}")
        parts = [span.word.lower() for span in tokenizer.word_spans(requested)]
        occurrences = _occurrences(spans, parts) if parts else ()
        if not occurrences:
            raise ValueError(f"{requested!r} is not a word or phrase of the caption {caption!r}")
        queries.append(Query(requested.strip(), occurrences))
    return queries


def _without(row: Tensor, positions: set[int], tokenizer: Tokenizer) -> Tensor:
    """A [L] id row with the tokens at ``positions`` deleted, the rest (up to the end token) moved up and padded."""
    end = int((row == tokenizer.end_id).int().argmax())
    kept = [i for i in range(end + 1) if i not in positions]
    shortened = torch.full_like(row, tokenizer.settings.pad_id)
    shortened[: len(kept)] = row[kept]
    return shortened


def template_rows(tokenizer: Tokenizer, queries: list[Query], template: str, context_length: int) -> Tensor:
    """[Q, L] rows of ``template`` filled with each query; an error when a prompt does not fit the context."""
    prompts = [template.format(query.text) for query in queries]
    for prompt in prompts:
        if len(tokenizer.word_spans(prompt, context_length)) < len(tokenizer.word_spans(prompt, 1 << 16)):
            raise ValueError(f"the prompt {prompt!r} is longer than the text context ({context_length} tokens)")
    return tokenizer(prompts, context_length)


def query_token_rows(
    tokenizer: Tokenizer, caption: str, queries: list[Query], method: str, context_length: int, template: str
) -> Tensor:
    """Token rows to embed: [1 + Q, L] for "contribution" (the caption first), else [Q, L]."""
    if method == "template":
        return template_rows(tokenizer, queries, template, context_length)
    row = tokenizer(caption, context_length)[0]  # (L,)
    if method == "contribution":
        return torch.stack([row] + [_without(row, query.positions, tokenizer) for query in queries])
    spans = tokenizer.word_spans(caption, context_length)
    content = {position for span in spans if _is_content(span) for position in span.token_positions}
    return torch.stack([_without(row, content - query.positions, tokenizer) for query in queries])


@torch.no_grad()
def query_embeddings(
    model: nn.Module,
    caption: str,
    queries: list[Query],
    method: str = DEFAULT_METHOD,
    template: str = DEFAULT_TEMPLATE,
) -> Tensor:
    """One text embedding [Q, D] per query, by ``method`` (see the module docstring); not normalised."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tokenizer, context_length = model_tokenizer(model), model.config.text.context_length
    rows = query_token_rows(tokenizer, caption, queries, method, context_length, template)
    with eval_mode(model):
        embeddings = model.encode_text(rows.to(model_device(model))).float()
    if method == "contribution":
        return embeddings[:1] - embeddings[1:]  # what each query adds to the caption's embedding
    return embeddings


def model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def model_tokenizer(model: nn.Module) -> Tokenizer:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer: load it with from_pretrained or set model.tokenizer")
    return tokenizer
