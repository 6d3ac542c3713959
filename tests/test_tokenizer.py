"""The tokenizer: fixed special ids, padding and truncation, save/load, word spans."""

import json
import pickle

import pytest
import tokenizers
import torch

from softclip.tokenizer import END_ID, PAD_ID, START_ID, Tokenizer, WordSpan, tokenize

SENTENCES = [
    "A red circle next to a blue square.",
    "Two small dogs play with a red ball in the park.",
    "The blue square is above the green triangle!",
    "A photo of a cat sleeping on a red sofa.",
    "Don't move the green circle; it's next to the square.",
] * 4


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train(SENTENCES, vocab_size=400, min_frequency=2)


def test_special_tokens_have_fixed_ids(trained: Tokenizer) -> None:
    for tokenizer in (trained, Tokenizer.default()):
        assert [tokenizer.backend.token_to_id(t) for t in ("<pad>", "<start_of_text>", "<end_of_text>")] == [0, 1, 2]
    assert (PAD_ID, START_ID, END_ID) == (0, 1, 2)


def test_training_learns_merges(trained: Tokenizer) -> None:
    assert Tokenizer.default().vocab_size == 3 + 256
    assert 259 < trained.vocab_size <= 400
    assert len(trained.encode("a red circle")) < len(Tokenizer.default().encode("a red circle"))


@pytest.mark.parametrize("text", SENTENCES[:5] + ["  Mixed   CASE\tand\nwhitespace  ", "émoji 🐈 ünïcode"])
def test_decode_round_trips_to_lowercase(trained: Tokenizer, text: str) -> None:
    row = trained(text, context_length=77)[0]
    assert trained.decode(row) == " ".join(text.lower().split())


def test_rows_are_start_tokens_end_padding(trained: Tokenizer) -> None:
    ids = trained(["a red circle", "a photo of a cat sleeping on a red sofa"], context_length=20)
    assert ids.dtype == torch.int64 and ids.shape == (2, 20)
    for row, text in zip(ids, ["a red circle", "a photo of a cat sleeping on a red sofa"], strict=True):
        count = len(trained.encode(text))
        assert row[0] == START_ID
        assert row[1 : count + 1].tolist() == trained.encode(text)
        assert row[count + 1] == END_ID
        assert (row[count + 2 :] == PAD_ID).all()
        assert (row[: count + 2] != PAD_ID).all()  # the model pools at the last non-pad position


def test_truncation_keeps_end_token(trained: Tokenizer) -> None:
    long_text = " ".join(SENTENCES)
    row = trained(long_text, context_length=8)[0]
    assert row.tolist() == [START_ID, *trained.encode(long_text)[:6], END_ID]


def test_empty_text_is_start_and_end() -> None:
    assert tokenize("", context_length=4).tolist() == [[START_ID, END_ID, PAD_ID, PAD_ID]]


def test_special_token_text_is_plain_text(trained: Tokenizer) -> None:
    row = trained("a <pad> and an <end_of_text> inside", context_length=77)[0]
    count = int((row != PAD_ID).sum())
    assert (row[:count] != PAD_ID).all() and (row[1 : count - 1] != END_ID).all()
    assert trained.decode(row) == "a <pad> and an <end_of_text> inside"


def test_pickled_tokenizer_behaves_the_same(trained: Tokenizer) -> None:
    texts = ["a <pad> inside", *SENTENCES[:3]]
    assert torch.equal(pickle.loads(pickle.dumps(trained))(texts), trained(texts))  # as in data loader workers


def test_default_tokenizer_encodes_bytes() -> None:
    row = tokenize("Ab!")[0]
    assert row.shape == (77,)
    assert len(Tokenizer.default().encode("Ab!")) == 3  # one token per byte, no merges
    assert Tokenizer.default().decode(row) == "ab!"


def test_save_load_gives_identical_ids(trained: Tokenizer, tmp_path) -> None:
    file = trained.save(tmp_path / "ckpt")
    assert file == tmp_path / "ckpt" / "tokenizer.json"
    json.loads(file.read_text())  # the tokenizers library's JSON
    for path in (tmp_path / "ckpt", file):
        loaded = Tokenizer.load(path)
        assert loaded.vocab_size == trained.vocab_size
        assert torch.equal(loaded(SENTENCES, 16), trained(SENTENCES, 16))


def test_load_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match=str(tmp_path / "tokenizer.json")):
        Tokenizer.load(tmp_path)


def test_load_refuses_wrong_special_ids(tmp_path) -> None:
    foreign = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={"a": 0, "<pad>": 1}, merges=[]))
    foreign.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="<pad>"):
        Tokenizer.load(tmp_path / "tokenizer.json")


def test_word_spans_map_words_to_their_tokens(trained: Tokenizer) -> None:
    text = "The dog's RED ball, next to 'café' (42 cats)!"
    spans = trained.word_spans(text)
    assert [span.word for span in spans] == ["The", "dog's", "RED", "ball", "next", "to", "café", "42", "cats"]
    row = trained(text)[0]
    for span in spans:
        assert isinstance(span, WordSpan)
        assert text[span.start : span.end] == span.word
        assert trained.decode(row[list(span.token_positions)]).strip() == span.word.lower()
    positions = [p for span in spans for p in span.token_positions]
    assert positions == sorted(positions) and min(positions) >= 1


def test_word_spans_drop_truncated_words(trained: Tokenizer) -> None:
    text = "red circle next to a blue square"
    full, short = trained.word_spans(text), trained.word_spans(text, context_length=6)
    kept = [span for span in full if max(span.token_positions) <= 4]  # positions 1..4 survive [start, 4 ids, end]
    assert short == kept and 0 < len(short) < len(full)


def test_bad_input_is_named() -> None:
    with pytest.raises(TypeError, match="int"):
        tokenize(["fine", 3])
    with pytest.raises(ValueError, match="context_length"):
        tokenize("a", context_length=1)
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(SENTENCES, vocab_size=100)
