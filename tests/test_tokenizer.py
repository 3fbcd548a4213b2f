"""The byte-level BPE: split pattern, special tokens, round trips, byte lengths, storage."""

from __future__ import annotations

import pytest

from harness.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from harness.errors import ConfigError

# English prose and code, enough for a few hundred merges; no CJK and no emoji on purpose, so
# those must fall back to single-byte tokens.
TRAINING_TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's what they'll say, we've seen, they're here.\n",
    "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n",
    "Numbers like 2024, 31415 and 7 appear in text; so do prices ($12.50) and dates (2024-01-29).\n",
] * 30
VOCAB = 300


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TRAINING_TEXTS, VOCAB, doc_cap=10_000, max_chars=10**9)


ROUND_TRIP_TEXTS = [
    "plain ascii text",
    "héllo wörld, ça va? naïve café",
    "emoji: 😀👍🏽 and a family 👨‍👩‍👧",
    "日本語のテキストと한국어 and Ελληνικά",
    "control \x00\x01\x7f bytes, tabs\tand\r\nnewlines",
    "literal special tokens <|bos|> and <|assistant_end|> stay text",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_token_byte_lengths_sum_to_utf8_length(tok, text):
    ids = tok.encode(text, prepend_bos=True)
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))


def test_unseen_characters_fall_back_to_one_token_per_byte(tok):
    # Neither character occurs in the training texts, so no merge can involve their bytes:
    # 日 is 3 UTF-8 bytes and 😀 is 4, so 7 tokens of one byte each.
    ids = tok.encode("日😀")
    assert len(ids) == 7
    assert tok.token_bytes()[ids].tolist() == [1] * 7


def test_split_pattern_limits_numbers_to_two_digits_and_splits_contractions(tok):
    pieces = [piece for piece, _ in tok._hf.pre_tokenizer.pre_tokenize_str("12345 hello world's")]
    # Byte-level spelling shows a leading space as "Ġ".
    assert pieces == ["12", "34", "5", "Ġhello", "Ġworld", "'s"]


def test_special_tokens(tok):
    ids = [tok.token_id(name) for name in SPECIAL_TOKENS]
    assert len(set(ids)) == 9
    assert tok.bos_id == tok.token_id("<|bos|>")
    assert tok.token_bytes()[ids].tolist() == [0] * 9
    assert tok.decode([tok.bos_id]) == "<|bos|>"
    # A special token's text inside a document is ordinary text, never the control token.
    assert not set(ids) & set(tok.encode("a <|bos|> b <|user_start|>"))
    with pytest.raises(KeyError, match="not a special token"):
        tok.token_id("<|pad|>")


def test_prepend_bos_and_batch(tok):
    texts = ["first document", "second 😀"]
    assert tok.encode_batch(texts, prepend_bos=True) == [[tok.bos_id, *tok.encode(t)] for t in texts]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_vocab_size_and_token_bytes_shape(tok):
    assert tok.vocab_size == VOCAB  # enough text for every merge
    table = tok.token_bytes()
    assert table.shape == (VOCAB,) and str(table.dtype) == "torch.int32"
    # 256 single bytes + 9 specials, so the merges are the remaining 35 tokens, each >= 2 bytes.
    assert int((table == 1).sum()) == 256
    assert int((table >= 2).sum()) == VOCAB - 256 - 9


def test_training_stops_at_max_chars_and_crops_documents():
    # Only "aaaa..." is seen (cropped to 4 chars, then max_chars reached), so "b" never merges.
    tok = Tokenizer.train(["aaaaaaaaaaaa", "bbbbbbbbbbbb"] * 10, 300, doc_cap=4, max_chars=4)
    assert len(tok.encode("aaaa")) < 4
    assert len(tok.encode("bbbb")) == 4


def test_save_and_load(tok, tmp_path):
    tok.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    text = ROUND_TRIP_TEXTS[2] + ROUND_TRIP_TEXTS[5]
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.token_bytes().tolist() == tok.token_bytes().tolist()
    assert loaded.vocab_size == tok.vocab_size and loaded.bos_id == tok.bos_id


def test_vocab_too_small_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.vocab_size=100 is too small; it must be at least 265"):
        Tokenizer.train(["abc"], 100, doc_cap=10, max_chars=10)
