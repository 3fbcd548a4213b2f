"""Training and validation batches: document streams per rank, best-fit packed, resumable.

A corpus split is a list of *units* (a parquet row group, a file, or one cached document), each
read as a list of BOS-prefixed token documents. Training walks the units epoch after epoch: epoch
e's units are shuffled with `data.seed` and e, and rank r of W takes positions r, r+W, ... of that
order, so ranks see disjoint documents and together all of them. Units are read and tokenized
ahead in a background thread. Validation takes units r, r+W, ... in their stored order, once.

A document is named by (epoch, position of its unit in this rank's epoch order, index in the
unit). The loader's state is the name of the next document to read plus the names of the
documents waiting in the packing buffer; restoring re-reads those and continues exactly.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from omegaconf import DictConfig

from harness.data.config import data_config
from harness.data.corpus import Corpus, Document, RowPieceCorpus
from harness.data.packing import BestFitPacker
from harness.data.sources import open_source
from harness.data.tokenizer import Tokenizer
from harness.errors import ConfigError

STATE_VERSION = 1
# Units read ahead of the packer; a fineweb row group is ~1000 documents, so two is plenty.
READ_AHEAD_UNITS = 2
RESTORE_THREADS = 8

DocId = tuple[int, int, int]  # (epoch, unit position in this rank's epoch order, document index)
Batch = tuple[torch.Tensor, torch.Tensor]
T = TypeVar("T")


# documents --------------------------------------------------------------------------------
def epoch_units(num_units: int, seed: int, epoch: int, rank: int, world_size: int) -> list[int]:
    """This rank's units for one training epoch, in reading order."""
    order = list(range(num_units))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order[rank::world_size]


def training_documents(
    corpus: Corpus, seed: int, rank: int, world_size: int, start: DocId
) -> Iterator[tuple[DocId, Document]]:
    """This rank's training documents from `start` on, epoch after epoch, forever."""
    units = _units_from(corpus, seed, rank, world_size, start)
    if corpus.prefetch:
        units = read_ahead(units, READ_AHEAD_UNITS)
    for epoch, position, documents in units:
        first = start[2] if (epoch, position) == start[:2] else 0
        for index in range(first, len(documents)):
            yield (epoch, position, index), documents[index]


def _units_from(
    corpus: Corpus, seed: int, rank: int, world_size: int, start: DocId
) -> Iterator[tuple[int, int, list[Document]]]:
    epoch, first = start[:2]
    while True:
        units = epoch_units(corpus.num_units, seed, epoch, rank, world_size)
        found = 0
        for position in range(first, len(units)):
            documents = corpus.read(units[position])
            found += len(documents)
            yield epoch, position, documents
        if first == 0 and found == 0:
            raise ConfigError(f"{corpus.name}: rank {rank} of {world_size} has no documents in a whole epoch")
        epoch, first = epoch + 1, 0


def read_documents(corpus: Corpus, seed: int, rank: int, world_size: int, ids: Sequence[DocId]) -> list[Document]:
    """The training documents with these ids (to restore a packing buffer).

    After a long run the buffer can hold documents from hundreds of units (best-fit leaves the
    longest documents waiting), so each unit is read once, only the needed documents of it are
    tokenized, and units are read in parallel.
    """
    wanted: dict[tuple[int, int], list[int]] = {}
    for epoch, position, index in ids:
        wanted.setdefault((epoch, position), []).append(index)
    orders = {epoch: epoch_units(corpus.num_units, seed, epoch, rank, world_size) for epoch, _ in wanted}

    def read(key: tuple[int, int]) -> dict[int, Document]:
        epoch, position = key
        unit = orders[epoch][position]
        indices = sorted(set(wanted[key]))
        return dict(zip(indices, corpus.read(unit, indices), strict=True))

    with ThreadPoolExecutor(RESTORE_THREADS) as pool:
        documents = dict(zip(wanted, pool.map(read, wanted), strict=True))
    return [documents[epoch, position][index] for epoch, position, index in ids]


def read_ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """Iterate `items` in a background thread, up to `depth` items ahead of the consumer."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message) -> bool:
        while not stop.is_set():
            try:
                handoff.put(message, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as error:  # re-raised in the consumer
            put(("error", error))

    threading.Thread(target=produce, daemon=True, name="data-read-ahead").start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "error":
                raise value
            if kind == "end":
                return
            yield value
    finally:
        stop.set()


# training ---------------------------------------------------------------------------------
class TrainLoader:
    """Infinite (inputs, targets) int64 batches of shape (batch_size, seq_len) for one rank."""

    def __init__(
        self,
        corpus: Corpus,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int,
        world_size: int,
        buffer_size: int,
        state: dict | None = None,
    ):
        if corpus.num_units < world_size:
            raise ConfigError(
                f"{corpus.name} has {corpus.num_units} units (files, row groups or documents) for "
                f"{world_size} ranks; every rank needs at least one"
            )
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        # Document indices count pieces in a RowPieceCorpus: a state of another kind names other text.
        self.pieces = getattr(corpus, "row_len", None)
        start: DocId = (0, 0, 0)
        buffered: list[DocId] = []
        if state is not None:
            self._check_state(state)
            start = tuple(state["next"])
            buffered = [tuple(doc_id) for doc_id in state["buffer"]]
        self._next: DocId = start
        documents = training_documents(corpus, seed, rank, world_size, start)
        self._packer = BestFitPacker(self._track(documents), seq_len + 1, buffer_size)
        for doc_id, document in zip(buffered, read_documents(corpus, seed, rank, world_size, buffered), strict=True):
            self._packer.add(doc_id, document)

    def _track(self, documents: Iterator[tuple[DocId, Document]]) -> Iterator[tuple[DocId, Document]]:
        for (epoch, position, index), document in documents:
            self._next = (epoch, position, index + 1)
            yield (epoch, position, index), document

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Batch:
        rows = np.stack([self._packer.next_row() for _ in range(self.batch_size)])
        return split_rows(rows)

    def state_dict(self) -> dict:
        """Where this rank is: JSON-serialisable; pass it back as `state` to continue exactly."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "pieces": self.pieces,
            "next": list(self._next),
            "buffer": [list(doc_id) for doc_id in self._packer.buffered_ids()],
        }

    def _check_state(self, state: dict) -> None:
        saved = tuple(state.get(key) for key in ("version", "seed", "rank", "world_size"))
        here = (STATE_VERSION, self.seed, self.rank, self.world_size)
        if saved != here:
            raise ConfigError(
                "data loader state (version, data.seed, rank, world_size)="
                f"{saved} does not match this run's {here}; resume with the same data.seed and GPU count"
            )
        if state.get("pieces") != self.pieces:
            raise ConfigError(
                f"data loader state counts documents in pieces of {state.get('pieces')} tokens, this run in pieces "
                f"of {self.pieces} (model.sequence_len + 1; None: whole documents); train.resume=never restarts"
            )


def split_rows(rows: np.ndarray) -> Batch:
    batch = torch.from_numpy(rows)
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def open_corpus(cfg: DictConfig, split: str, tok: Tokenizer, seq_len: int) -> Corpus:
    """The source's split; in row-sized pieces for a source of long documents (data=local)."""
    source = open_source(cfg)
    corpus = source.corpus(split, tok)
    return RowPieceCorpus(corpus, seq_len + 1) if getattr(source, "splits_long_documents", False) else corpus


def build_train_loader(
    cfg: DictConfig,
    tok: Tokenizer,
    batch_size: int,
    seq_len: int,
    rank: int,
    world_size: int,
    state: dict | None = None,
) -> TrainLoader:
    data = data_config(cfg)
    corpus = open_corpus(cfg, "train", tok, seq_len)
    return TrainLoader(corpus, batch_size, seq_len, data.seed, rank, world_size, data.buffer_size, state)


# validation -------------------------------------------------------------------------------
def val_batches(
    cfg: DictConfig, tok: Tokenizer, batch_size: int, seq_len: int, num_tokens: int, rank: int, world_size: int
) -> list[Batch]:
    """This rank's share of `num_tokens` held-out tokens (a total over ranks) as packed batches.

    The count is rounded down to whole batches on every rank, with at least one batch per rank;
    the same arguments give the same batches on every call.
    """
    data = data_config(cfg)
    corpus = open_corpus(cfg, "val", tok, seq_len)
    num_batches = validation_rows(num_tokens, batch_size, seq_len, world_size) // batch_size
    packer = BestFitPacker(validation_documents(corpus, rank, world_size), seq_len + 1, data.buffer_size)
    rows = []
    for _ in range(num_batches * batch_size):
        row = packer.next_row()
        if row is None:
            raise ConfigError(
                f"eval.val_tokens={num_tokens} needs {num_batches} batches of {batch_size}x{seq_len} tokens "
                f"on each of {world_size} ranks, but rank {rank}'s share of {corpus.name} fills only "
                f"{len(rows) // batch_size}; lower eval.val_tokens or add validation data"
            )
        rows.append(row)
    rows_array = np.stack(rows)
    return [split_rows(rows_array[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def validation_rows(num_tokens: int, batch_size: int, seq_len: int, world_size: int) -> int:
    """Rows of seq_len + 1 tokens each rank validates on: num_tokens (a total over ranks) rounded down
    to whole batches on every rank, at least one batch."""
    return max(1, num_tokens // (world_size * batch_size * seq_len)) * batch_size


def validation_documents(corpus: Corpus, rank: int, world_size: int) -> Iterator[tuple[DocId, Document]]:
    units = (
        (0, position, corpus.read(unit)) for position, unit in enumerate(range(rank, corpus.num_units, world_size))
    )
    if corpus.prefetch:
        units = read_ahead(units, READ_AHEAD_UNITS)
    for epoch, position, documents in units:
        for index, document in enumerate(documents):
            yield (epoch, position, index), document
