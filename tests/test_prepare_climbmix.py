"""`data=climbmix` (nanochat 92d63d4's data) is prepared, resumed and validated by the same code as
FineWeb, against the same local HTTP server: its own directory, its own tokenizer trained on its
shards, its own name in every message, and the reference's shard layout."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_prepare_fineweb import (  # noqa: E402  (the FineWeb test's server and shards, reused)
    NUM_SHARDS,
    SHARDS,
    VAL_SHARD,
    ShardServer,
    run_prepare,
    shard_texts,
)
from test_prepare_fineweb import overrides as fineweb_overrides  # noqa: E402

from harness.cli import compose  # noqa: E402
from harness.data import build_tokenizer, check_data, val_batches  # noqa: E402
from harness.data import fineweb as fineweb_module  # noqa: E402
from harness.data.config import data_config
from harness.data.fineweb import DownloadError  # noqa: E402
from harness.data.sources import open_source  # noqa: E402
from harness.errors import ConfigError  # noqa: E402


@pytest.fixture
def server():
    s = ShardServer(SHARDS)
    yield s
    s.close()


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path))
    return tmp_path


def overrides(url: str, **extra) -> list[str]:
    return fineweb_overrides(url, data="climbmix", **extra)


def test_the_reference_layout():
    data = compose(["data=climbmix"]).data
    assert data.val_shard == 6542 and data.vocab_size == 32768
    assert data.base_url == "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
    assert str(data.dir).endswith("/climbmix")


def test_prepare_downloads_into_its_own_dir_and_trains_its_own_tokenizer(server, data_dir):
    summary = run_prepare(overrides(server.url))
    for name, body in SHARDS.items():
        assert (data_dir / "climbmix" / name).read_bytes() == body
    assert not (data_dir / "fineweb").exists()
    assert (data_dir / "climbmix" / "tokenizer_300" / "tokenizer.json").exists()
    assert f"climbmix: {data_dir / 'climbmix'} holds 3 shards" in summary
    check_data(compose(overrides(server.url)))
    # The tokenizer learned these shards' text: their most common word pieces are single tokens.
    tok = build_tokenizer(data_config(compose(overrides(server.url))))
    words = Counter(w for i in range(NUM_SHARDS) for text in shard_texts(i) for w in text.split()[4:] if len(w) > 4)
    word = words.most_common(1)[0][0]
    assert len(tok.encode(word)) < len(word.encode())


def test_an_interrupted_download_resumes_from_its_partial_file(server, data_dir, monkeypatch):
    monkeypatch.setattr(fineweb_module, "CHUNK_BYTES", 1024)
    server.plan["shard_00001.parquet"] = ["cut"]
    cfg = compose(overrides(server.url, **{"data.download_retries": 0}))
    source = open_source(data_config(cfg))
    with pytest.raises(DownloadError, match="shard_00001.parquet: failed 1 times"):
        source.download(source.missing_shards())
    partial = data_dir / "climbmix" / "shard_00001.parquet.partial"
    kept = partial.stat().st_size
    with pytest.raises(ConfigError, match="data=climbmix with data.num_shards=2 is missing 1 of 3 shards"):
        check_data(cfg)
    source.download(source.missing_shards())
    assert server.requests_for("shard_00001.parquet") == [None, f"bytes={kept}-"]
    assert (data_dir / "climbmix" / "shard_00001.parquet").read_bytes() == SHARDS["shard_00001.parquet"]


def test_a_corrupt_shard_is_retried(server, data_dir):
    server.plan["shard_00000.parquet"] = ["truncate"]
    run_prepare(overrides(server.url))
    assert (data_dir / "climbmix" / "shard_00000.parquet").read_bytes() == SHARDS["shard_00000.parquet"]
    assert len(server.requests_for("shard_00000.parquet")) == 2


def test_missing_data_names_the_climbmix_prepare_command(data_dir):
    where = data_dir / "climbmix"
    with pytest.raises(ConfigError) as error:
        check_data(compose(overrides("http://unused")))
    assert str(error.value).endswith(
        f"run: python -m harness.prepare data=climbmix data.num_shards=2 data.vocab_size=300 data.dir={where}"
    )


def test_validation_reads_only_the_last_shard(server, data_dir):
    cfg = compose(overrides(server.url))
    open_source(data_config(cfg)).prepare()
    tok = build_tokenizer(data_config(cfg))
    ((inputs, _),) = val_batches(data_config(cfg), tok, batch_size=2, seq_len=32, num_tokens=64, rank=0, world_size=1)
    for row in inputs:
        assert f"shard {VAL_SHARD} doc" in tok.decode(row.tolist())
