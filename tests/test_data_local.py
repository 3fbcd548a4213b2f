"""data=local: .txt, .jsonl and .parquet files, held-out splits, and the mistakes users make."""

from __future__ import annotations

import json
import math
import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from harness.cli import compose
from harness.data import build_tokenizer, build_train_loader, check_data, val_batches
from harness.data.config import data_config
from harness.data.corpus import held_out
from harness.data.loader import open_corpus, training_documents, validation_documents
from harness.data.packing import row_pieces
from harness.data.sources import open_source
from harness.errors import ConfigError

TXT = {f"notes/{i}.txt": f"note number {i}: " + "the cat sat on the mat. " * (3 + i) for i in range(4)}
JSONL = [f"record {i} says hello to the world of local data " * (1 + i % 3) for i in range(30)]
PARQUET = [f"parquet row {i}: columns of text, rows of documents. " * (1 + i % 4) for i in range(40)]
ALL_TEXTS = sorted([*TXT.values(), *JSONL, *PARQUET])


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "cache"))
    root = tmp_path / "mydata"
    for name, text in TXT.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "records.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(JSONL)))
    pq.write_table(pa.table({"text": PARQUET}), root / "table.parquet", row_group_size=8)
    (root / "README.md").write_text("not data: ignored")
    return root


def local(folder, *extra):
    # A small validation need (one row of 129 tokens) that the fixture's held-out text fills.
    small = ["model=tiny", "train.device_batch_size=1", "eval.val_tokens=128"]
    return compose(
        ["data=local", f"data.path={folder}", "data.vocab_size=300", "data.val_fraction=0.3", *small, *extra]
    )


def texts_of(documents, tok):
    return sorted(tok.decode(list(doc[1:])) for _, doc in documents)


def test_every_format_is_read_and_the_splits_partition_the_documents(folder):
    cfg = local(folder)
    check_data(cfg)
    tok = build_tokenizer(data_config(cfg))
    source = open_source(data_config(cfg))
    train, val = source.corpus("train", tok), source.corpus("val", tok)
    # Units: 4 .txt files + 1 .jsonl file + 5 parquet row groups of 8 rows.
    assert train.num_units == val.num_units == 10
    train_texts = texts_of(validation_documents(train), tok)
    val_texts = texts_of(validation_documents(val), tok)
    assert train_texts and val_texts
    assert sorted(train_texts + val_texts) == ALL_TEXTS


def test_local_loader_trains_and_resumes(folder):
    cfg = local(folder)
    tok = build_tokenizer(data_config(cfg))
    # 8 rows per step: one from each of the 8 streams (10 units: every stream has one), 4 micro-batches
    loader = build_train_loader(data_config(cfg), tok, batch_size=2, seq_len=24, rank=0, world_size=1, rows_per_step=8)
    for _ in range(4):
        inputs, _ = next(loader)
        assert (inputs[:, 0] == tok.bos_id).all()
    state = loader.state_dict()
    expected = [next(loader) for _ in range(12)]
    resumed = build_train_loader(
        data_config(cfg), tok, batch_size=2, seq_len=24, rank=0, world_size=1, state=state, rows_per_step=8
    )
    assert all(x.equal(next(resumed)[0]) for x, _ in expected)


def test_val_path_is_the_validation_split(folder, tmp_path):
    held = tmp_path / "held"
    held.mkdir()
    (held / "v.txt").write_text("a held out document about mats and cats " * 20)
    cfg = local(folder, f"data.val_path={held}")
    tok = build_tokenizer(data_config(cfg))
    source = open_source(data_config(cfg))
    assert texts_of(validation_documents(source.corpus("val", tok)), tok) == [(held / "v.txt").read_text()]
    assert texts_of(validation_documents(source.corpus("train", tok)), tok) == ALL_TEXTS
    assert len(val_batches(data_config(cfg), tok, batch_size=1, seq_len=16, num_tokens=16, rank=0, world_size=1)) == 1


def test_ranks_split_local_units(folder):
    cfg = local(folder)
    tok = build_tokenizer(data_config(cfg))
    corpus = open_source(data_config(cfg)).corpus("train", tok)

    seen = [texts_of(_first_epoch(training_documents(corpus, 0, rank, 2, (0, 0, 0))), tok) for rank in range(2)]
    assert not set(seen[0]) & set(seen[1])
    everything = texts_of(validation_documents(corpus), tok)
    assert sorted(seen[0] + seen[1]) == everything


def _first_epoch(stream):
    for doc_id, doc in stream:
        if doc_id[0] > 0:
            return
        yield doc_id, doc


def test_missing_path_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as error:
        check_data(compose(["data=local", "data.path=/x/y"]))
    assert (
        str(error.value) == "data.path=/x/y does not exist; point it at a file or folder of .txt/.jsonl/.parquet files"
    )
    with pytest.raises(ConfigError, match=r"^data.path is not set; point it at a file or folder"):
        check_data(compose(["data=local"]))


def test_folder_without_text_files_is_a_config_error(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n")
    with pytest.raises(ConfigError, match=r"has no .txt, .jsonl, .parquet files"):
        check_data(compose(["data=local", f"data.path={tmp_path}"]))


def test_jsonl_without_the_text_field_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "cache"))
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "hi"}) + "\n")
    with pytest.raises(ConfigError, match=r"d.jsonl:1 has no string field 'text'; set data.text_field"):
        build_tokenizer(data_config(compose(["data=local", f"data.path={tmp_path}", "data.vocab_size=300"])))


# long documents ------------------------------------------------------------------------------
WORDS = (
    "the of and to in is was for on that with as by it at from his an were are which this be or had not "
    "river valley harbour winter letter morning garden history village station market council evening"
).split()


@pytest.fixture(scope="module")
def long_texts(tmp_path_factory):
    """100 ordinary long .txt files, 1.2 MB in all: every one far longer than a CPU-sized row."""
    root = tmp_path_factory.mktemp("long") / "texts"
    root.mkdir()
    rng = random.Random(0)
    for i in range(100):
        sentences = (
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))).capitalize() + "." for _ in range(200)
        )
        text = ""
        while len(text) < 12_000:
            text += next(sentences, "The end.") + (" " if rng.random() < 0.8 else "\n\n")
        (root / f"chapter_{i:03d}.txt").write_text(text)
    return root


def smoke_on(folder, *extra):
    return compose(["experiment=smoke", "data=local", f"data.path={folder}", *extra])


def test_a_long_document_is_validated_on_all_of_its_text_in_row_sized_pieces(long_texts, tmp_path, monkeypatch):
    """One held-out 12 kB file: many rows, each led by BOS, and together (BOS dropped) they are the
    document's own tokens in order up to the last, partly filled row (before: one cropped row)."""
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "cache"))
    held = tmp_path / "held"
    held.mkdir()
    shutil.copy(long_texts / "chapter_000.txt", held / "chapter.txt")
    cfg = local(long_texts, f"data.val_path={held}", "data.vocab_size=512")
    tok = build_tokenizer(data_config(cfg))
    document = tok.encode((held / "chapter.txt").read_text())
    seq_len = 32
    rows_available = len(document) // seq_len  # pieces of BOS + 32 tokens: whole ones only fill a row alone
    batches = val_batches(
        data_config(cfg), tok, batch_size=1, seq_len=seq_len, num_tokens=rows_available * seq_len, rank=0, world_size=1
    )
    rows = [torch.cat([inputs[0], targets[0, -1:]]) for inputs, targets in batches]
    assert len(rows) == rows_available > 50
    assert all(row[0] == tok.bos_id for row in rows)
    assert [t for row in rows for t in row[1:].tolist()] == document[: rows_available * seq_len]


def test_row_pieces_keep_short_documents_and_lead_every_piece_with_bos():
    assert [piece.tolist() for piece in row_pieces(np.array([9, 1, 2]), row_len=4)] == [[9, 1, 2]]
    assert [piece.tolist() for piece in row_pieces(np.array([9, *range(10, 17)]), row_len=4)] == [
        [9, 10, 11, 12],
        [9, 13, 14, 15],
        [9, 16],
    ]


def test_training_reads_every_token_of_a_long_file_in_one_epoch(long_texts, tmp_path, monkeypatch):
    """Before, best-fit packing kept one row's crop of each file: a few percent of the text per epoch."""
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "cache"))
    cfg = local(long_texts, "data.vocab_size=512", "data.val_fraction=0.1")
    tok = build_tokenizer(data_config(cfg))
    source = open_source(data_config(cfg))
    whole = source.corpus("train", tok)
    pieces = open_corpus(data_config(cfg), "train", tok, seq_len=32)
    assert pieces.num_units == whole.num_units
    for unit in range(0, whole.num_units, 17):
        documents = whole.read(unit)
        read = pieces.read(unit)
        assert all(len(piece) <= 33 and piece[0] == tok.bos_id for piece in read)
        assert [t for piece in read for t in piece[1:].tolist()] == [t for d in documents for t in d[1:].tolist()]
        assert [p.tolist() for p in pieces.read(unit, [2, 0])] == [read[2].tolist(), read[0].tolist()]


def test_a_validation_split_too_small_is_one_line_in_the_preflight_before_any_tokenizer(
    long_texts, tmp_path, monkeypatch
):
    """1% of 100 files holds out none or one: the preflight says so from the text's size alone."""
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "cache"))
    from harness.run.spec import resolve_run

    held = [p.name for p in sorted(long_texts.iterdir()) if held_out(p.name + ":0:0", 0.01)]
    held_bytes = sum(len((long_texts / name).read_text().encode()) for name in held)
    rows_bound = (held_bytes + sum(max(1, -(-len((long_texts / n).read_bytes()) // 128)) for n in held)) // 129
    with pytest.raises(ConfigError) as error:
        resolve_run(smoke_on(long_texts))
    assert str(error.value) == (
        f"data.path={long_texts}: the validation split holds {len(held)} documents, {held_bytes:,} bytes of text, "
        f"at most {rows_bound} rows of 129 tokens, but eval.val_tokens=16384 needs 128; "
        "raise data.val_fraction=0.01, or lower eval.val_tokens"
    )
    assert not list((tmp_path / "cache").rglob("tokenizer.json"))  # no tokenizer was trained


def test_the_smoke_experiment_trains_on_a_folder_of_long_text_files(long_texts, tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "cache"))
    from harness.run.session import run_training
    from harness.run.spec import resolve_run

    cfg = smoke_on(long_texts, "data.val_fraction=0.1", "train.num_iterations=1", "eval.val_tokens=2048")
    summary = run_training(resolve_run(cfg), tmp_path / "run")
    assert summary["status"] == "completed" and math.isfinite(summary["final_val_bpb"])
