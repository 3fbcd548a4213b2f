"""What the loader reads: one split of a source as numbered units of tokenized documents.

A unit is the smallest piece a source reads at once: a parquet row group, a text file, or one
cached document. The loader only ever asks for `num_units` and `read(unit)`, so every source
(builtin, fineweb, local) shares the same shuffling, rank split, packing and resume logic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from harness.data.packing import row_pieces
from harness.data.tokenizer import Tokenizer

Document = Sequence[int]  # token ids, starting with BOS


def stable_hash(key: str) -> int:
    """A 32-bit hash that is the same on every machine and Python version (unlike hash())."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def held_out(key: str, fraction: float) -> bool:
    """Whether the file or document named `key` belongs to the validation split."""
    return stable_hash(key) < fraction * 2**32


class Corpus(Protocol):
    name: str  # for messages, e.g. "data=fineweb validation split"
    num_units: int
    prefetch: bool  # reading a unit is slow enough (disk, tokenizing) to do ahead in a thread

    def read(self, unit: int, indices: Sequence[int] | None = None) -> list[Document]:
        """The unit's documents, or only those at `indices` (restoring a buffer needs a few)."""
        ...


class TextCorpus:
    """Units whose texts are read on demand and tokenized with BOS prepended."""

    prefetch = True

    def __init__(self, name: str, units: Sequence, read_texts: Callable[..., list[str]], tok: Tokenizer):
        self.name = name
        self.units = list(units)
        self.num_units = len(self.units)
        self._read_texts = read_texts
        self._tok = tok

    def read(self, unit: int, indices: Sequence[int] | None = None) -> list[Document]:
        texts = self._read_texts(self.units[unit])
        if indices is not None:
            texts = [texts[i] for i in indices]
        # int32 arrays take a ninth of the memory of lists of Python ints; the packing buffer can
        # hold a thousand long documents.
        return [np.asarray(ids, dtype=np.int32) for ids in self._tok.encode_batch(texts, prepend_bos=True)]


class TokenCorpus:
    """Already tokenized documents held in memory, one per unit (the builtin corpus's cache)."""

    prefetch = False

    def __init__(self, name: str, tokens: np.ndarray, offsets: np.ndarray):
        self.name = name
        self._tokens = tokens
        self._offsets = offsets
        self.num_units = len(offsets) - 1

    @property
    def num_tokens(self) -> int:
        """Tokens in the split, BOS included: one pass over it."""
        return len(self._tokens)

    def read(self, unit: int, indices: Sequence[int] | None = None) -> list[Document]:
        document = self._tokens[self._offsets[unit] : self._offsets[unit + 1]]
        return [document] if indices is None else [document for _ in indices]

    @classmethod
    def load(cls, name: str, directory: Path, split: str) -> TokenCorpus:
        return cls(name, np.load(directory / f"{split}_tokens.npy"), np.load(directory / f"{split}_offsets.npy"))

    @staticmethod
    def save(directory: Path, split: str, documents: Sequence[Sequence[int]]) -> None:
        lengths = np.array([len(d) for d in documents], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.fromiter((t for d in documents for t in d), dtype=np.int32, count=int(offsets[-1]))
        np.save(directory / f"{split}_tokens.npy", tokens)
        np.save(directory / f"{split}_offsets.npy", offsets)


class RowPieceCorpus:
    """Another corpus whose documents longer than `row_len` tokens are read as row-sized pieces
    (packing.row_pieces), one document of this corpus per piece: for sources of long documents
    (data=local) whose rows would otherwise keep one crop of each. Piece indices are stable, so the
    loader's state and its restore work on pieces as they do on documents."""

    def __init__(self, corpus: Corpus, row_len: int):
        self._corpus = corpus
        self.row_len = row_len
        self.name, self.num_units, self.prefetch = corpus.name, corpus.num_units, corpus.prefetch

    def read(self, unit: int, indices: Sequence[int] | None = None) -> list[Document]:
        pieces = [piece for document in self._corpus.read(unit) for piece in row_pieces(document, self.row_len)]
        return pieces if indices is None else [pieces[i] for i in indices]
