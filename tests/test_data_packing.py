"""Best-fit packing against rows worked out by hand."""

from __future__ import annotations

from harness.data.packing import BestFitPacker

B = 0  # BOS


def doc(letter: int, length: int) -> list[int]:
    """A BOS-prefixed document of `length` tokens whose body is the token `letter`."""
    return [B] + [letter] * (length - 1)


def rows_of(documents: list[list[int]], row_len: int, buffer_size: int) -> list[list[int]]:
    packer = BestFitPacker(iter(enumerate(documents)), row_len, buffer_size)
    rows = []
    while (row := packer.next_row()) is not None:
        rows.append(row.tolist())
    return rows


def test_hand_packed_example():
    # Documents in arrival order (letter, length incl. BOS): A5 C3 D10 E2 F4 G7 H9;
    # rows of 8 tokens, a buffer of 3. Worked by hand:
    #  row 1: buffer {A5, C3, D10}, space 8 -> largest fitting A5; top up with E2;
    #         space 3 -> {C3, D10, E2}: C3 fits exactly.                      row = A5 + C3
    #  row 2: buffer {D10, E2, F4}, space 8 -> F4; top up with G7;
    #         space 4 -> {D10, E2, G7}: E2; top up with H9;
    #         space 2 -> {D10, G7, H9}: nothing fits, crop the shortest, G7, to 2.  row = F4 + E2 + G[:2]
    #  row 3: buffer {D10, H9} (stream exhausted): nothing fits 8, crop H9 to 8.
    #  row 4: buffer {D10}: crop D10 to 8.
    #  row 5: the buffer is empty: no row.
    A, C, D, E, F, G, H = 1, 3, 4, 5, 6, 7, 8
    documents = [doc(A, 5), doc(C, 3), doc(D, 10), doc(E, 2), doc(F, 4), doc(G, 7), doc(H, 9)]
    assert rows_of(documents, row_len=8, buffer_size=3) == [
        [B, A, A, A, A, B, C, C],
        [B, F, F, F, B, E, B, G],
        [B, H, H, H, H, H, H, H],
        [B, D, D, D, D, D, D, D],
    ]


def test_ties_go_to_the_earliest_document():
    # Two documents of length 4 fit a row of 8 equally well: the earlier one (X) goes first,
    # then Y fills the rest; Z (also 4) starts the next row.
    X, Y, Z = 1, 2, 3
    assert rows_of([doc(X, 4), doc(Y, 4), doc(Z, 4)], row_len=8, buffer_size=3)[0] == [B, X, X, X, B, Y, Y, Y]
    # For cropping, the shortest of several too-long documents is cropped, earliest on ties.
    assert rows_of([doc(X, 12), doc(Y, 10), doc(Z, 10)], row_len=8, buffer_size=3)[0] == [B, Y, Y, Y, Y, Y, Y, Y]


def test_rows_start_with_bos_and_are_full():
    documents = [doc(1 + i % 7, 2 + (i * 7) % 23) for i in range(200)]
    rows = rows_of(documents, row_len=16, buffer_size=20)
    assert rows and all(len(r) == 16 and r[0] == B for r in rows)
    # No padding: every token is a document token (BOS or a letter 1..7).
    assert {t for r in rows for t in r} <= set(range(8))


def test_saved_buffer_ids_restore_the_same_rows():
    documents = [doc(1 + i % 5, 3 + (i * 5) % 11) for i in range(60)]
    pulled = []

    def stream():
        for i, d in enumerate(documents):
            pulled.append(i)
            yield i, d

    first = BestFitPacker(stream(), 10, 6)
    for _ in range(5):
        first.next_row()
    buffered = first.buffered_ids()
    consumed = len(pulled)
    second = BestFitPacker(iter(list(enumerate(documents))[consumed:]), 10, 6)
    for i in buffered:
        second.add(i, documents[i])
    for _ in range(10):
        assert first.next_row().tolist() == second.next_row().tolist()
