"""Best-fit packing of BOS-prefixed documents into rows (recipe section 6).

Each row holds exactly `row_len` tokens (seq_len + 1: inputs are row[:-1], targets row[1:]).
Documents wait in a buffer that is topped up to `buffer_size` before every choice. A row is filled
by repeatedly taking the largest buffered document that fits the space left; when none fits, the
shortest one is cropped to fill the row exactly and its remainder is dropped. Every document
starts with BOS, so every row does too, and nothing is padded. Ties go to the document that
arrived first, so the rows depend only on the order documents arrive in.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterator, Sequence

import numpy as np

Document = Sequence[int]


class BestFitPacker:
    """Turns a stream of (id, document) pairs into packed rows; its buffer can be saved by id."""

    def __init__(self, documents: Iterator[tuple[Hashable, Document]], row_len: int, buffer_size: int):
        self._documents = documents
        self._exhausted = False
        self.row_len = row_len
        self.buffer_size = buffer_size
        # Sorted (length, arrival) keys for bisecting, and arrival -> (id, document) in arrival order.
        self._keys: list[tuple[int, int]] = []
        self._entries: dict[int, tuple[Hashable, Document]] = {}
        self._arrivals = 0

    def add(self, doc_id: Hashable, document: Document) -> None:
        """Put a document into the buffer (used by the stream, and to restore a saved buffer)."""
        key = (len(document), self._arrivals)
        self._arrivals += 1
        bisect.insort(self._keys, key)
        self._entries[key[1]] = (doc_id, document)

    def buffered_ids(self) -> list[Hashable]:
        """Ids of the buffered documents in arrival order: enough to rebuild the buffer exactly."""
        return [doc_id for doc_id, _ in self._entries.values()]

    def next_row(self) -> np.ndarray | None:
        """The next packed row, or None once the documents run out before a row is full."""
        row = np.empty(self.row_len, dtype=np.int64)
        filled = 0
        while filled < self.row_len:
            self._top_up()
            if not self._keys:
                return None
            space = self.row_len - filled
            document = self._take(space)
            used = min(len(document), space)
            row[filled : filled + used] = document[:used]
            filled += used
        return row

    def _top_up(self) -> None:
        while not self._exhausted and len(self._keys) < self.buffer_size:
            try:
                self.add(*next(self._documents))
            except StopIteration:
                self._exhausted = True

    def _take(self, space: int) -> Document:
        """Remove and return the largest document of length <= space (earliest among equals), else
        the shortest document (earliest among equals), which the caller crops."""
        last_fitting = bisect.bisect_right(self._keys, (space, self._arrivals)) - 1
        if last_fitting >= 0:
            length = self._keys[last_fitting][0]
            index = bisect.bisect_left(self._keys, (length, -1))
        else:
            index = 0
        _, arrival = self._keys.pop(index)
        return self._entries.pop(arrival)[1]


def row_pieces(document: Document, row_len: int) -> list[np.ndarray]:
    """A document longer than a row as row-sized pieces, each led by the document's BOS, so that all
    of it is packed (into many rows) instead of one row's crop; a shorter document as itself."""
    document = np.asarray(document)
    if len(document) <= row_len:
        return [document]
    body, step = document[1:], row_len - 1
    return [np.concatenate((document[:1], body[start : start + step])) for start in range(0, len(body), step)]
