"""Data mistakes (issue 15, item 8): each is found before any run folder exists, in one line naming the
file (and line) and what is wrong, with exit code 2, through the real entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.data.tokenizer import Tokenizer
from harness.train import cli_main

SMALL_LOCAL = ["data.vocab_size=300", "eval.val_tokens=128", "train.device_batch_size=1", "data.val_fraction=0.5"]
GOOD_TEXT = "a line of ordinary text about rivers and harbours.\n" * 20


def run_cli(monkeypatch, capsys, runs: Path, *args: str) -> str:
    """The command's stderr; asserts exit code 2 and that no run folder was made."""
    monkeypatch.setattr(sys, "argv", ["harness.train", "experiment=smoke", *args, f"paths.runs_dir={runs}"])
    capsys.readouterr()  # the case's own setup output
    with pytest.raises(SystemExit) as exit_info:
        cli_main()
    assert exit_info.value.code == 2
    assert not runs.exists() or not any(runs.iterdir()), f"left behind: {sorted(runs.rglob('*'))}"
    return capsys.readouterr().err


def error_line(err: str) -> str:
    """The error, after whatever progress the preflight printed (tokenizer training)."""
    return err[err.index("error: ") :]


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """A folder of good files; a case adds its bad one. Caches go to a fresh data dir."""
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "cache"))
    root = tmp_path / "mydata"
    root.mkdir()
    for i in range(8):  # a unit for each of data.streams=8
        (root / f"good{i}.txt").write_text(GOOD_TEXT)
    return root


def write_parquet(path: Path, rows: int = 64) -> None:
    texts = [f"row {i}: " + "words in a parquet table " * 10 for i in range(rows)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=16)


def corrupt_first_page(path: Path) -> None:
    """Overwrite bytes inside the first row group's (snappy-compressed) data: the footer still reads."""
    raw = bytearray(path.read_bytes())
    raw[100:400] = b"\xab" * 300
    path.write_bytes(bytes(raw))


LOCAL_CASES = {
    "non_utf8_txt": (
        lambda root: (root / "latin1.txt").write_bytes(b"first line\ncaf\xe9 au lait\n"),
        "{root}/latin1.txt:2 is not UTF-8 text (byte 4 of the line is b'\\xe9')",
    ),
    "non_utf8_jsonl": (
        lambda root: (root / "r.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "na\xefve"}\n'),
        "{root}/r.jsonl:2 is not UTF-8 text (byte 13 of the line is b'\\xef')",
    ),
    "invalid_jsonl_line": (
        lambda root: (root / "r.jsonl").write_text('{"text": "one"}\n\n{"text": "two",}\n'),
        "{root}/r.jsonl:3 is not valid JSON (Expecting property name enclosed in double quotes at column 16)",
    ),
    "jsonl_without_text": (
        lambda root: (root / "r.jsonl").write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"body": "x"})),
        "{root}/r.jsonl:2 has no string field 'text'; set data.text_field",
    ),
    "parquet_not_parquet": (
        lambda root: (root / "t.parquet").write_bytes(b"these bytes were never a parquet file"),
        "{root}/t.parquet is not a readable parquet file: Parquet magic bytes not found in footer. "
        "Either the file is corrupted or this is not a parquet file.",
    ),
    "parquet_corrupt_page": (
        lambda root: (write_parquet(root / "t.parquet"), corrupt_first_page(root / "t.parquet")),
        "{root}/t.parquet: row group 0 does not read (Corrupt snappy compressed data.); the file is corrupt",
    ),
    "parquet_without_text": (
        lambda root: pq.write_table(pa.table({"body": ["x"]}), root / "t.parquet"),
        "{root}/t.parquet has no column 'text'; its columns: body",
    ),
}


@pytest.mark.parametrize("case", list(LOCAL_CASES))
def test_a_bad_local_file_is_named_in_the_preflight(case, data, tmp_path, monkeypatch, capsys):
    make, message = LOCAL_CASES[case]
    make(data)
    err = run_cli(monkeypatch, capsys, tmp_path / "runs", "data=local", f"data.path={data}", *SMALL_LOCAL)
    assert err == f"error: {message.format(root=data)}\n"
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("tokenizer.json"))


def test_a_clean_listing_is_read_once(data, tmp_path, monkeypatch):
    """The readability scan is remembered by name, size and mtime: a changed file is read again."""
    from harness.cli import compose
    from harness.data import local
    from harness.data.sources import open_source

    monkeypatch.setattr(local, "_READABLE", set())
    cfg = compose(["data=local", f"data.path={data}", *SMALL_LOCAL])
    open_source(cfg).check()
    assert len([p for p in (tmp_path / "cache").rglob("readable-*") if p.is_dir()]) == 1
    (data / "good0.txt").write_bytes(b"\xff\xfe now broken\n")
    with pytest.raises(Exception, match="good0.txt:1 is not UTF-8 text"):
        open_source(cfg).check()


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path, monkeypatch, capsys):
    """A prepared FineWeb folder whose tokenizer has more ids than data.vocab_size gives the model."""
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "fineweb"
    folder.mkdir(parents=True)
    for index in (0, 1):
        write_parquet(folder / f"shard_{index:05d}.parquet")
    texts = [f"document {i} " + GOOD_TEXT for i in range(50)]
    Tokenizer.train(texts, 400, 10_000, 1_000_000).save(folder / "tokenizer_300")
    ids = json.loads((folder / "tokenizer_300" / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(ids) > 300
    overrides = ["data=fineweb", "data.num_shards=1", "data.val_shard=1", "data.vocab_size=300"]
    err = run_cli(monkeypatch, capsys, tmp_path / "runs", *overrides, "eval.val_tokens=2048")
    assert err == (
        f"error: the tokenizer has {Tokenizer.load(folder / 'tokenizer_300').vocab_size} tokens but the model's "
        "vocabulary, data.vocab_size=300, is smaller: token ids past it have no embedding (set data.vocab_size to "
        "the tokenizer's size)\n"
    )


def test_a_corrupt_fineweb_shard_is_refused_in_the_preflight(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "fineweb"
    (folder / "tokenizer_300").mkdir(parents=True)
    (folder / "tokenizer_300" / "tokenizer.json").write_text("{}")  # never read: the shard check comes first
    write_parquet(folder / "shard_00000.parquet")
    (folder / "shard_00001.parquet").write_bytes(b"half a download")
    overrides = ["data=fineweb", "data.num_shards=1", "data.val_shard=1", "data.vocab_size=300"]
    err = run_cli(monkeypatch, capsys, tmp_path / "runs", *overrides)
    assert err == (
        f"error: {folder}/shard_00001.parquet: not a readable parquet file (Parquet magic bytes not found in footer. "
        "Either the file is corrupted or this is not a parquet file.); delete it and run: python -m harness.prepare "
        f"data=fineweb data.num_shards=1 data.vocab_size=300 data.dir={folder} (downloads it again)\n"
    )


def test_too_little_builtin_validation_is_counted_exactly_in_the_preflight(
    session_data_dir, tmp_path, monkeypatch, capsys
):
    """The builtin split is tokenized and packed by the preflight: 10M tokens is ~80k rows of 128, far more
    than the ~400 kB of held-out stdlib source holds (a byte-level token is at least one byte)."""
    err = run_cli(monkeypatch, capsys, tmp_path / "runs", "eval.val_tokens=10000000")
    found = re.fullmatch(
        r"error: eval\.val_tokens=10000000 needs 78125 rows of 128 tokens, but the validation split of "
        r"data=builtin fills only (\d+); lower eval\.val_tokens or add validation data\n",
        error_line(err),
    )
    assert found, err
    assert 0 < int(found.group(1)) < 78125


def test_a_shortfall_found_only_after_tokenizing_leaves_no_run_folder(tmp_path):
    """Local data: 18,000 bytes of held-out text pass the preflight's bound (>= 128 rows of 129 tokens if
    every byte were a token), but "ab " tokenizes to ~2 tokens per 3 bytes: the run refuses it once the
    tokenizer exists, before it makes its folder (Hydra's, made for the job, is removed). A real process:
    the refusal comes from inside Hydra's job, whose logging setup would outlive an in-process test."""
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    for i in range(8):  # a unit for each of data.streams=8
        (tmp_path / "train" / f"t{i}.txt").write_text("ab " * 2_500)
    (tmp_path / "val" / "v.txt").write_text("ab " * 6_000)
    runs = tmp_path / "runs"
    args = ["data=local", f"data.path={tmp_path / 'train'}", f"data.val_path={tmp_path / 'val'}", "data.vocab_size=300"]
    result = subprocess.run(
        [sys.executable, "-m", "harness.train", "experiment=smoke", *args, f"paths.runs_dir={runs}"],
        capture_output=True,
        text=True,
        env={**os.environ, "ABLATE_DATA_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 2, result.stderr
    found = re.fullmatch(
        r"error: eval\.val_tokens=16384 needs 128 rows of 128 tokens, but the validation split of "
        r"data=local fills only (\d+); lower eval\.val_tokens or add validation data\n",
        error_line(result.stderr),
    )
    assert found, result.stderr
    assert not runs.exists() or not any(runs.iterdir()), f"left behind: {sorted(runs.rglob('*'))}"


# issue 26 item 10 -----------------------------------------------------------------------------
def test_a_jsonl_corrupted_in_place_with_size_and_mtime_kept_is_named_again(data, tmp_path, monkeypatch, capsys):
    """The clean-listing cache keys on each file's inode change time too, which no rewrite can put back."""
    from harness.cli import compose
    from harness.data import local
    from harness.data.sources import open_source

    monkeypatch.setattr(local, "_READABLE", set())
    path = data / "r.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "naive"}\n')
    open_source(compose(["data=local", f"data.path={data}", *SMALL_LOCAL])).check()  # found clean, remembered
    before = path.stat()
    time.sleep(0.01)  # a coarse clock would otherwise give the rewrite the same change time
    path.write_bytes(b'{"text": "ok"}\n{"text": "na\xefve"}\n')
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    err = run_cli(monkeypatch, capsys, tmp_path / "runs", "data=local", f"data.path={data}", *SMALL_LOCAL)
    assert err == f"error: {path}:2 is not UTF-8 text (byte 13 of the line is b'\\xef')\n"


def test_a_single_jsonl_file_for_eight_streams_is_refused_in_the_preflight(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "cache"))
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps({"text": f"document {i}: {GOOD_TEXT}"}) + "\n" for i in range(200)))
    err = run_cli(monkeypatch, capsys, tmp_path / "runs", "data=local", f"data.path={path}", *SMALL_LOCAL)
    assert err == (
        f"error: data.path={path} has 1 unit for data.streams=8; every stream needs at least one (a .txt or "
        ".jsonl file counts as one unit, a parquet file one per row group): split the text into more files or "
        "lower data.streams\n"
    )
