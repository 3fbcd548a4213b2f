"""Training and validation batches that are the same rows whatever the number of ranks.

Training reads `data.streams` (S) virtual streams. A corpus split is a list of *units* (a parquet
row group, a file, or one cached document), each read as a list of BOS-prefixed token documents.
Epoch e's units are shuffled with `data.seed` and e, and stream s takes positions s, s+S, ... of
that order, epoch after epoch; each stream best-fit packs its own documents into rows. The global
batch of an optimizer step, R = train.total_batch_tokens / model.sequence_len rows, is the next
R/S rows of every stream, stream after stream. Rank r of W produces streams [r S/W, (r+1) S/W),
which are global rows [r R/W, (r+1) R/W), and serves them as its micro-batches in that order. None
of this depends on W or on how a rank's rows split into micro-batches: with the same device batch,
micro-batch m of rank r holds exactly the rows of micro-batch r A + m of one process accumulating
W A of them, so only the order of the gradient sums differs. A rank reads and tokenizes only its
own streams' units, ahead, in background threads.

Validation is one fixed, ordered set of rows: the first max(1, eval.val_tokens // seq_len) rows one
packer makes from the validation split's documents in stored order. Rank 0 packs them and
broadcasts them; rank r scores rows [r N/W, (r+1) N/W).

A document is named by (epoch, position of its unit in its stream's epoch order, index in the
unit). A stream's state is the name of its next document plus the names of the documents waiting
in its packing buffer; the loader's state, taken between optimizer steps, is its streams' states.
Restoring re-reads the buffered documents and continues exactly, on any number of ranks: each rank
takes its streams from the states all ranks saved (`merge_states`).
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

from harness.data.config import DataConfig
from harness.data.corpus import Corpus, Document, RowPieceCorpus
from harness.data.packing import BestFitPacker
from harness.data.sources import open_source
from harness.data.tokenizer import Tokenizer
from harness.distributed import broadcast_rows_from_main, process_group_ready
from harness.errors import ConfigError

# 2: per-stream positions (1 held one position per rank, tied to the world size).
STATE_VERSION = 2
# Units read ahead of each stream's packer; a fineweb row group is ~1000 documents, so two is plenty.
READ_AHEAD_UNITS = 2
# Threads that re-read the documents saved in the streams' packing buffers on resume: the reads are
# I/O and tokenization, and a d24 run's buffers span many row groups.
RESTORE_THREADS = 8

DocId = tuple[int, int, int]  # (epoch, unit position in its stream's epoch order, document index)
Batch = tuple[torch.Tensor, torch.Tensor]
T = TypeVar("T")


# documents --------------------------------------------------------------------------------
def epoch_units(num_units: int, seed: int, epoch: int, stream: int, streams: int) -> list[int]:
    """One stream's units for one training epoch, in reading order."""
    order = list(range(num_units))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order[stream::streams]


def training_documents(
    corpus: Corpus, seed: int, stream: int, streams: int, start: DocId
) -> Iterator[tuple[DocId, Document]]:
    """One stream's training documents from `start` on, epoch after epoch, forever."""
    units = _units_from(corpus, seed, stream, streams, start)
    if corpus.prefetch:
        units = read_ahead(units, READ_AHEAD_UNITS)
    for epoch, position, documents in units:
        first = start[2] if (epoch, position) == start[:2] else 0
        for index in range(first, len(documents)):
            yield (epoch, position, index), documents[index]


def _units_from(
    corpus: Corpus, seed: int, stream: int, streams: int, start: DocId
) -> Iterator[tuple[int, int, list[Document]]]:
    epoch, first = start[:2]
    while True:
        units = epoch_units(corpus.num_units, seed, epoch, stream, streams)
        found = 0
        for position in range(first, len(units)):
            documents = corpus.read(units[position])
            found += len(documents)
            yield epoch, position, documents
        if first == 0 and found == 0:
            raise ConfigError(
                f"{corpus.name}: stream {stream} of data.streams={streams} has no documents in a whole epoch"
            )
        epoch, first = epoch + 1, 0


def read_documents(corpus: Corpus, seed: int, stream: int, streams: int, ids: Sequence[DocId]) -> list[Document]:
    """One stream's training documents with these ids (to restore its packing buffer).

    After a long run the buffer can hold documents from hundreds of units (best-fit leaves the
    longest documents waiting), so each unit is read once, only the needed documents of it are
    tokenized, and units are read in parallel.
    """
    wanted: dict[tuple[int, int], list[int]] = {}
    for epoch, position, index in ids:
        wanted.setdefault((epoch, position), []).append(index)
    epochs = {epoch for epoch, _ in wanted}  # one shuffle per epoch, not one per unit read
    orders = {epoch: epoch_units(corpus.num_units, seed, epoch, stream, streams) for epoch in epochs}

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
def owned_streams(streams: int, rank: int, world_size: int) -> range:
    """The contiguous block of streams rank `rank` of `world_size` produces."""
    per_rank = streams // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)


def check_stream_split(streams: int, rows_per_step: int, world_size: int) -> None:
    """Every rank must produce whole streams, and every stream the same number of rows per step."""
    if streams <= 0 or streams % world_size:
        raise ConfigError(
            f"data.streams={streams} must be a positive multiple of the world size {world_size} (each rank "
            "produces whole streams); use the same data.streams in every run you compare"
        )
    if rows_per_step % streams:
        raise ConfigError(
            f"data.streams={streams} must divide the {rows_per_step} rows of a global batch "
            "(train.total_batch_tokens / model.sequence_len)"
        )


class Stream:
    """One virtual stream: its documents best-fit packed into an endless sequence of rows."""

    def __init__(
        self, corpus: Corpus, index: int, streams: int, seed: int, row_len: int, buffer_size: int, state: dict | None
    ):
        self.index = index
        start: DocId = (0, 0, 0)
        buffered: list[DocId] = []
        if state is not None:
            start = tuple(state["next"])
            buffered = [tuple(doc_id) for doc_id in state["buffer"]]
        self._next: DocId = start
        documents = training_documents(corpus, seed, index, streams, start)
        self._packer = BestFitPacker(self._track(documents), row_len, buffer_size)
        for doc_id, document in zip(buffered, read_documents(corpus, seed, index, streams, buffered), strict=True):
            self._packer.add(doc_id, document)

    def _track(self, documents: Iterator[tuple[DocId, Document]]) -> Iterator[tuple[DocId, Document]]:
        for (epoch, position, index), document in documents:
            self._next = (epoch, position, index + 1)
            yield (epoch, position, index), document

    def next_row(self) -> np.ndarray:
        return self._packer.next_row()  # never None: the documents go on, epoch after epoch

    def state_dict(self) -> dict:
        return {
            "stream": self.index,
            "next": list(self._next),
            "buffer": [list(doc_id) for doc_id in self._packer.buffered_ids()],
        }


class TrainLoader:
    """Infinite (inputs, targets) int64 micro-batches of shape (batch_size, seq_len): this rank's
    rows of each global batch of `rows_per_step` rows, in order."""

    def __init__(
        self,
        corpus: Corpus,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int,
        world_size: int,
        buffer_size: int,
        streams: int,
        rows_per_step: int,
        state: dict | None = None,
    ):
        check_stream_split(streams, rows_per_step, world_size)
        if (rows_per_step // world_size) % batch_size:
            raise ConfigError(
                f"{rows_per_step // world_size} rows per rank and step do not split into micro-batches of {batch_size}"
            )
        if corpus.num_units < streams:
            raise ConfigError(
                f"{corpus.name} has {corpus.num_units} units (files, row groups or documents) for "
                f"data.streams={streams}; every stream needs at least one (lower data.streams)"
            )
        self.batch_size, self.seed, self.streams = batch_size, seed, streams
        self.rows_per_stream = rows_per_step // streams
        saved = self._saved_streams(state, owned_streams(streams, rank, world_size)) if state is not None else {}
        self._streams = [
            Stream(corpus, s, streams, seed, seq_len + 1, buffer_size, saved.get(s))
            for s in owned_streams(streams, rank, world_size)
        ]
        # This step's rows, and how many of them have been served.
        self._step_rows = np.empty((0, seq_len + 1), dtype=np.int64)
        self._served = 0

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Batch:
        if self._served == len(self._step_rows):
            self._step_rows = np.stack(
                [stream.next_row() for stream in self._streams for _ in range(self.rows_per_stream)]
            )
            self._served = 0
        rows = self._step_rows[self._served : self._served + self.batch_size]
        self._served += len(rows)
        return split_rows(rows)

    def state_dict(self) -> dict:
        """Where this rank's streams are, between two optimizer steps: JSON-serialisable; pass it
        back as `state` (or several ranks' states through `merge_states`) to continue exactly."""
        if self._served != len(self._step_rows):
            raise RuntimeError(
                f"the loader's state is taken between optimizer steps; {len(self._step_rows) - self._served} "
                "rows of this step are still unread"
            )
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "streams": self.streams,
            "stream_states": [stream.state_dict() for stream in self._streams],
        }

    def _saved_streams(self, state: dict, owned: range) -> dict[int, dict]:
        saved = tuple(state.get(key) for key in ("version", "seed", "streams"))
        here = (STATE_VERSION, self.seed, self.streams)
        if saved[0] != STATE_VERSION:
            raise ConfigError(
                f"the checkpoint's data loader state is version {saved[0]} and this release reads version "
                f"{STATE_VERSION} (the data order changed): this run cannot be resumed by design; finish it with "
                "the release that wrote it, or restart it with train.resume=never (its files are kept in attempts/)"
            )
        if saved != here:
            raise ConfigError(
                f"data loader state (version, data.seed, data.streams)={saved} does not match this run's {here}; "
                "resume with the same data.seed and data.streams (a version-1 state predates world-size-free "
                "data order: restart with train.resume=never)"
            )
        by_stream = {entry["stream"]: entry for entry in state["stream_states"]}
        missing = [s for s in owned if s not in by_stream]
        if missing:
            raise ConfigError(f"the data loader state has no position for streams {missing}; pass every rank's state")
        return by_stream


def merge_states(states: Sequence[dict]) -> dict:
    """One loader state holding every stream, from the states the ranks of a run saved (each holds its
    own streams): what a rank of another world size restores from."""
    entries = sorted((entry for state in states for entry in state["stream_states"]), key=lambda e: e["stream"])
    return {**states[0], "stream_states": entries}


def split_rows(rows: np.ndarray) -> Batch:
    batch = torch.from_numpy(rows)
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def open_corpus(data: DataConfig, split: str, tok: Tokenizer, seq_len: int) -> Corpus:
    """The source's split; in row-sized pieces for a source of long documents (data=local)."""
    source = open_source(data)
    corpus = source.corpus(split, tok)
    return RowPieceCorpus(corpus, seq_len + 1) if getattr(source, "splits_long_documents", False) else corpus


def build_train_loader(
    data: DataConfig,
    tok: Tokenizer,
    batch_size: int,
    seq_len: int,
    rank: int,
    world_size: int,
    state: dict | None = None,
    *,
    rows_per_step: int,
) -> TrainLoader:
    """Rank `rank`'s loader; a global batch is `rows_per_step` rows (a run's: its total batch in
    tokens / seq_len, as harness.run.spec resolved it)."""
    corpus = open_corpus(data, "train", tok, seq_len)
    return TrainLoader(
        corpus, batch_size, seq_len, data.seed, rank, world_size, data.buffer_size, data.streams, rows_per_step, state
    )


# validation -------------------------------------------------------------------------------
def val_rows(data: DataConfig, tok: Tokenizer, seq_len: int, num_rows: int) -> np.ndarray:
    """The validation set: the first `num_rows` rows (fewer if the split runs out) that one packer
    makes from the validation documents in stored order."""
    corpus = open_corpus(data, "val", tok, seq_len)
    packer = BestFitPacker(validation_documents(corpus), seq_len + 1, data.buffer_size)
    rows = []
    while len(rows) < num_rows and (row := packer.next_row()) is not None:
        rows.append(row)
    return np.stack(rows) if rows else np.empty((0, seq_len + 1), dtype=np.int64)


def val_batches(
    data: DataConfig, tok: Tokenizer, batch_size: int, seq_len: int, num_tokens: int, rank: int, world_size: int
) -> list[Batch]:
    """This rank's block of the validation set of max(1, num_tokens // seq_len) rows, in batches of
    `batch_size` rows; the last is filled up with rows whose targets are -1 (ignored, no bytes), so
    a compiled model sees one shape. The set depends on neither world_size nor batch_size.

    In an initialized process group rank 0 packs the rows and broadcasts them, so only one rank
    tokenizes; without one, every caller packs them itself."""
    num_rows = max(1, num_tokens // seq_len)
    shared = world_size > 1 and process_group_ready()
    rows = val_rows(data, tok, seq_len, num_rows) if rank == 0 or not shared else None
    if shared:
        rows = broadcast_rows_from_main(rows, seq_len + 1)
    require_val_rows(data.source, num_tokens, seq_len, num_rows, len(rows))
    mine = rows[rank * num_rows // world_size : (rank + 1) * num_rows // world_size]
    batches = []
    for first in range(0, len(mine), batch_size):
        inputs, targets = split_rows(mine[first : first + batch_size])
        missing = batch_size - len(inputs)
        if missing:
            inputs = torch.cat([inputs, inputs.new_full((missing, seq_len), tok.bos_id)])
            targets = torch.cat([targets, targets.new_full((missing, seq_len), -1)])
        batches.append((inputs, targets))
    return batches


_VAL_ROWS_CHECKED: set[tuple] = set()  # (data config, tokenizer, seq_len, rows) found to fill


def check_val_rows(data: DataConfig, tok: Tokenizer, seq_len: int, num_tokens: int) -> None:
    """The preflight's exact form of val_batches' check (it packs the rows and counts them): for
    sources whose tokenizer and tokenized validation split are at hand. Once per sweep and shape."""
    num_rows = max(1, num_tokens // seq_len)
    key = (data, tok.fingerprint(), seq_len, num_rows)
    if key not in _VAL_ROWS_CHECKED:
        require_val_rows(data.source, num_tokens, seq_len, num_rows, len(val_rows(data, tok, seq_len, num_rows)))
        _VAL_ROWS_CHECKED.add(key)


def require_val_rows(source: str, num_tokens: int, seq_len: int, num_rows: int, found: int) -> None:
    if found < num_rows:
        raise ConfigError(
            f"eval.val_tokens={num_tokens} needs {num_rows} rows of {seq_len} tokens, but the validation split "
            f"of data={source} fills only {found}; lower eval.val_tokens or add validation data"
        )


def validation_documents(corpus: Corpus) -> Iterator[tuple[DocId, Document]]:
    """The split's documents in stored order, unit after unit."""
    units = ((0, unit, corpus.read(unit)) for unit in range(corpus.num_units))
    if corpus.prefetch:
        units = read_ahead(units, READ_AHEAD_UNITS)
    for epoch, position, documents in units:
        for index, document in enumerate(documents):
            yield (epoch, position, index), document
