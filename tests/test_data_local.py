"""data=local: .txt, .jsonl and .parquet files, held-out splits, and the mistakes users make."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.cli import compose
from harness.data import build_tokenizer, build_train_loader, check_data, val_batches
from harness.data.loader import training_documents, validation_documents
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
    return compose(["data=local", f"data.path={folder}", "data.vocab_size=300", "data.val_fraction=0.3", *extra])


def texts_of(documents, tok):
    return sorted(tok.decode(list(doc[1:])) for _, doc in documents)


def test_every_format_is_read_and_the_splits_partition_the_documents(folder):
    cfg = local(folder)
    check_data(cfg)
    tok = build_tokenizer(cfg)
    source = open_source(cfg)
    train, val = source.corpus("train", tok), source.corpus("val", tok)
    # Units: 4 .txt files + 1 .jsonl file + 5 parquet row groups of 8 rows.
    assert train.num_units == val.num_units == 10
    train_texts = texts_of(validation_documents(train), tok)
    val_texts = texts_of(validation_documents(val), tok)
    assert train_texts and val_texts
    assert sorted(train_texts + val_texts) == ALL_TEXTS


def test_local_loader_trains_and_resumes(folder):
    cfg = local(folder)
    tok = build_tokenizer(cfg)
    # 8 rows per step: one from each of the 8 streams (10 units: every stream has one), 4 micro-batches
    loader = build_train_loader(cfg, tok, batch_size=2, seq_len=24, rank=0, world_size=1, rows_per_step=8)
    for _ in range(4):
        inputs, _ = next(loader)
        assert (inputs[:, 0] == tok.bos_id).all()
    state = loader.state_dict()
    expected = [next(loader) for _ in range(12)]
    resumed = build_train_loader(cfg, tok, batch_size=2, seq_len=24, rank=0, world_size=1, state=state, rows_per_step=8)
    assert all(x.equal(next(resumed)[0]) for x, _ in expected)


def test_val_path_is_the_validation_split(folder, tmp_path):
    held = tmp_path / "held"
    held.mkdir()
    (held / "v.txt").write_text("a held out document about mats and cats " * 20)
    cfg = local(folder, f"data.val_path={held}")
    tok = build_tokenizer(cfg)
    source = open_source(cfg)
    assert texts_of(validation_documents(source.corpus("val", tok)), tok) == [(held / "v.txt").read_text()]
    assert texts_of(validation_documents(source.corpus("train", tok)), tok) == ALL_TEXTS
    assert len(val_batches(cfg, tok, batch_size=1, seq_len=16, num_tokens=16, rank=0, world_size=1)) == 1


def test_ranks_split_local_units(folder):
    cfg = local(folder)
    tok = build_tokenizer(cfg)
    corpus = open_source(cfg).corpus("train", tok)

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
        build_tokenizer(compose(["data=local", f"data.path={tmp_path}", "data.vocab_size=300"]))
