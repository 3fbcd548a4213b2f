"""The builtin stdlib corpus and the loader on it: splits, caching, ranks, resume, validation."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from harness.cli import compose
from harness.data import build_tokenizer, build_train_loader, check_data, val_batches
from harness.data import builtin as builtin_module
from harness.data.builtin import select_files, split_documents, stdlib_root
from harness.data.loader import epoch_units, validation_documents
from harness.data.sources import open_source
from harness.data.tokenizer import Tokenizer
from harness.errors import ConfigError

# A small slice of the corpus and vocabulary keep these tests fast.
SMALL = ["data=builtin", "data.corpus_bytes=300000", "data.vocab_size=320", "data.val_fraction=0.25"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ablate-data")


@pytest.fixture
def cfg(data_dir, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(data_dir))
    return compose(SMALL)


@pytest.fixture
def tok(cfg):
    return build_tokenizer(cfg)


def test_corpus_is_this_pythons_standard_library():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = select_files(root, 300_000)
    assert files and all((root / f.path).read_text(encoding="utf-8", errors="replace") == f.text for f in files)
    assert all(f.path.endswith(".py") and "site-packages" not in f.path for f in files)
    assert not any(part in ("test", "tests") for f in files for part in f.path.split("/"))
    # Capped: the file that crosses 300 kB is the last one taken.
    sizes = [len(f.text.encode()) for f in files]
    assert sum(sizes[:-1]) < 300_000 <= sum(sizes)


def test_train_and_validation_splits_are_disjoint_files(cfg):
    source = open_source(cfg)
    train, val = source.files("train"), source.files("val")
    assert train and val
    assert not {f.path for f in train} & {f.path for f in val}
    assert {f.path for f in train} | {f.path for f in val} == {f.path for f in select_files(stdlib_root(), 300_000)}
    train_docs = set(source.documents("train"))
    assert not [d for d in source.documents("val") if d in train_docs and len(d) > 200]


def test_documents_split_at_definitions():
    text = "import os\n\n\ndef f():\n    pass\n\n\nclass A:\n    x = 1\n\n    def m(self):\n        pass\n"
    assert split_documents(text) == [
        "import os",
        "def f():\n    pass",
        "class A:\n    x = 1",
        "    def m(self):\n        pass\n",
    ]


def test_builtin_needs_no_preparation(cfg):
    check_data(cfg)  # nothing can be missing


def test_tokenizer_and_documents_are_cached(cfg, tok, monkeypatch):
    first = open_source(cfg).corpus("train", tok)

    def rebuilt(*args, **kwargs):
        raise AssertionError("built again instead of read from the cache")

    monkeypatch.setattr(Tokenizer, "train", rebuilt)
    monkeypatch.setattr(builtin_module.TokenCorpus, "save", rebuilt)
    again = build_tokenizer(cfg)
    assert again.encode("def f(x): return x") == tok.encode("def f(x): return x")
    cached = open_source(cfg).corpus("train", again)
    assert cached.num_units == first.num_units
    assert list(cached.read(5)[0]) == list(first.read(5)[0])


def test_cache_key_follows_vocab_size(cfg, data_dir, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(data_dir))
    other = build_tokenizer(compose([*SMALL, "data.vocab_size=300"]))
    assert other.vocab_size == 300
    assert len(list((data_dir / "builtin").glob("tokenizer-*/tokenizer.json"))) >= 2


def test_rows_are_packed_and_shifted(cfg, tok):
    loader = build_train_loader(cfg, tok, batch_size=4, seq_len=32, rank=0, world_size=1)
    inputs, targets = next(loader)
    assert inputs.shape == targets.shape == (4, 32)
    assert str(inputs.dtype) == "torch.int64"
    assert (inputs[:, 0] == tok.bos_id).all()
    assert inputs[:, 1:].equal(targets[:, :-1])
    assert int(inputs.max()) < tok.vocab_size


def test_ranks_see_disjoint_documents_that_cover_the_split(cfg, tok):
    corpus = open_source(cfg).corpus("train", tok)
    per_rank = [set(epoch_units(corpus.num_units, 0, 3, rank, 3)) for rank in range(3)]
    assert per_rank[0].isdisjoint(per_rank[1]) and per_rank[1].isdisjoint(per_rank[2])
    assert per_rank[0].isdisjoint(per_rank[2])
    assert per_rank[0] | per_rank[1] | per_rank[2] == set(range(corpus.num_units))


def test_same_seed_same_batches_other_seed_other_batches(cfg, tok):
    # A buffer much smaller than the corpus, so that the order documents arrive in shows.
    seeded = [compose([*SMALL, "data.buffer_size=4", f"data.seed={seed}"]) for seed in (0, 0, 1)]
    firsts = [next(build_train_loader(c, tok, 2, 32, 0, 1))[0] for c in seeded]
    assert firsts[0].equal(firsts[1])
    assert not firsts[0].equal(firsts[2])


def test_restored_loader_continues_exactly(cfg, tok):
    loader = build_train_loader(cfg, tok, batch_size=4, seq_len=64, rank=1, world_size=2)
    for _ in range(7):
        next(loader)
    state = json.loads(json.dumps(loader.state_dict()))  # as a checkpoint stores it
    expected = [next(loader) for _ in range(6)]
    resumed = build_train_loader(cfg, tok, batch_size=4, seq_len=64, rank=1, world_size=2, state=state)
    for (x, y), (rx, ry) in zip(expected, (next(resumed) for _ in range(6)), strict=True):
        assert x.equal(rx) and y.equal(ry)


def test_state_from_another_world_size_is_refused(cfg, tok):
    state = build_train_loader(cfg, tok, 2, 32, 0, 2).state_dict()
    with pytest.raises(ConfigError, match="resume with the same data.seed and GPU count"):
        build_train_loader(cfg, tok, 2, 32, 0, 4, state=state)


def test_validation_batches_are_fixed_and_split_across_ranks(cfg, tok):
    one = val_batches(cfg, tok, batch_size=2, seq_len=32, num_tokens=400, rank=0, world_size=2)
    # 400 tokens over 2 ranks x (2 x 32)-token batches rounds down to 3 batches per rank.
    assert len(one) == 3
    again = val_batches(cfg, tok, batch_size=2, seq_len=32, num_tokens=400, rank=0, world_size=2)
    assert all(a[0].equal(b[0]) and a[1].equal(b[1]) for a, b in zip(one, again, strict=True))
    # At least one batch per rank even when the total asks for less.
    assert len(val_batches(cfg, tok, batch_size=2, seq_len=32, num_tokens=1, rank=0, world_size=2)) == 1
    corpus = open_source(cfg).corpus("val", tok)
    docs = [[tuple(d) for _, d in validation_documents(corpus, rank, 2)] for rank in range(2)]
    assert not set(docs[0]) & set(docs[1])
    assert len(docs[0]) + len(docs[1]) == corpus.num_units


def test_validation_split_too_small_is_a_config_error(cfg, tok):
    with pytest.raises(ConfigError, match=r"^eval.val_tokens=100000000 needs 48828 batches of 8x256 tokens"):
        val_batches(cfg, tok, batch_size=8, seq_len=256, num_tokens=100_000_000, rank=0, world_size=1)
