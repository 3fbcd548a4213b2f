"""The builtin stdlib corpus and the loader on it: splits, caching, ranks, resume, validation."""

from __future__ import annotations

import dataclasses
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from harness.cli import compose
from harness.data import build_tokenizer, build_train_loader, check_data, val_batches
from harness.data import builtin as builtin_module
from harness.data.builtin import select_files, split_documents, stdlib_root
from harness.data.config import data_config
from harness.data.loader import (
    TrainLoader,
    check_stream_split,
    epoch_units,
    merge_states,
    training_documents,
    validation_documents,
)
from harness.data.packing import BestFitPacker
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
    return build_tokenizer(data_config(cfg))


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
    source = open_source(data_config(cfg))
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


def test_builtin_needs_no_preparation(data_dir, monkeypatch):
    """Nothing can be missing: the preflight builds the tokenizer and counts the validation rows."""
    monkeypatch.setenv("ABLATE_DATA_DIR", str(data_dir))
    check_data(compose([*SMALL, "model=tiny", "eval.val_tokens=1024"]))


def test_tokenizer_and_documents_are_cached(cfg, tok, monkeypatch):
    first = open_source(data_config(cfg)).corpus("train", tok)

    def rebuilt(*args, **kwargs):
        raise AssertionError("built again instead of read from the cache")

    monkeypatch.setattr(Tokenizer, "train", rebuilt)
    monkeypatch.setattr(builtin_module.TokenCorpus, "save", rebuilt)
    again = build_tokenizer(data_config(cfg))
    assert again.encode("def f(x): return x") == tok.encode("def f(x): return x")
    cached = open_source(data_config(cfg)).corpus("train", again)
    assert cached.num_units == first.num_units
    assert list(cached.read(5)[0]) == list(first.read(5)[0])


def test_cache_key_follows_vocab_size(cfg, data_dir, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA_DIR", str(data_dir))
    other = build_tokenizer(data_config(compose([*SMALL, "data.vocab_size=300"])))
    assert other.vocab_size == 300
    assert len(list((data_dir / "builtin").glob("tokenizer-*/tokenizer.json"))) >= 2


def test_rows_are_packed_and_shifted(cfg, tok):
    loader = build_train_loader(data_config(cfg), tok, batch_size=4, seq_len=32, rank=0, world_size=1, rows_per_step=8)
    inputs, targets = next(loader)
    assert inputs.shape == targets.shape == (4, 32)
    assert str(inputs.dtype) == "torch.int64"
    assert (inputs[:, 0] == tok.bos_id).all()
    assert inputs[:, 1:].equal(targets[:, :-1])
    assert int(inputs.max()) < tok.vocab_size


def test_streams_see_disjoint_documents_that_cover_the_split(cfg, tok):
    corpus = open_source(data_config(cfg)).corpus("train", tok)
    per_stream = [set(epoch_units(corpus.num_units, 0, 3, stream, 3)) for stream in range(3)]
    assert per_stream[0].isdisjoint(per_stream[1]) and per_stream[1].isdisjoint(per_stream[2])
    assert per_stream[0].isdisjoint(per_stream[2])
    assert per_stream[0] | per_stream[1] | per_stream[2] == set(range(corpus.num_units))


def test_same_seed_same_batches_other_seed_other_batches(cfg, tok):
    # A buffer much smaller than the corpus, so that the order documents arrive in shows.
    seeded = [compose([*SMALL, "data.buffer_size=4", f"data.seed={seed}"]) for seed in (0, 0, 1)]
    firsts = [next(build_train_loader(data_config(c), tok, 2, 32, 0, 1, rows_per_step=8))[0] for c in seeded]
    assert firsts[0].equal(firsts[1])
    assert not firsts[0].equal(firsts[2])


def test_the_run_seed_sets_the_data_order_unless_data_seed_is_set(cfg, tok):
    """`seed` alone varies the data order (configs/data/ has data.seed: ${seed}); data.seed=N holds it."""
    composed = {seed: compose([*SMALL, "data.buffer_size=4", f"seed={seed}"]) for seed in (0, 3)}
    assert [composed[s].data.seed for s in (0, 3)] == [0, 3]
    firsts = {
        s: next(build_train_loader(data_config(c), tok, 2, 32, 0, 1, rows_per_step=8))[0] for s, c in composed.items()
    }
    assert not firsts[0].equal(firsts[3])
    held = compose([*SMALL, "data.buffer_size=4", "seed=3", "data.seed=0"])
    assert (held.seed, held.data.seed) == (3, 0)
    assert next(build_train_loader(data_config(held), tok, 2, 32, 0, 1, rows_per_step=8))[0].equal(firsts[0])


# one data order whatever the world size ----------------------------------------------------
STREAMS, ROWS, SEQ = 8, 16, 32  # 16 rows per global batch: 2 consecutive rows of each of 8 streams


def stream_rows(corpus, stream: int, count: int, buffer_size: int) -> list:
    """The reference: `count` rows of one stream, packed here from its documents directly."""
    packer = BestFitPacker(training_documents(corpus, 0, stream, STREAMS, (0, 0, 0)), SEQ + 1, buffer_size)
    return [packer.next_row() for _ in range(count)]


def global_batches(loaders, accum: int, steps: int) -> list[np.ndarray]:
    """Each step's rows, rank after rank, micro-batch after micro-batch (inputs plus the last target)."""
    batches = []
    for _ in range(steps):
        rows = []
        for loader in loaders:
            for _ in range(accum):
                inputs, targets = next(loader)
                rows.append(np.concatenate([inputs.numpy(), targets.numpy()[:, -1:]], axis=1))
        batches.append(np.concatenate(rows))
    return batches


def loaders_at(cfg, tok, world_size: int, batch_size: int, state=None) -> list:
    return [
        build_train_loader(data_config(cfg), tok, batch_size, SEQ, rank, world_size, state=state, rows_per_step=ROWS)
        for rank in range(world_size)
    ]


@pytest.mark.parametrize("world_size,batch_size", [(1, 16), (1, 2), (2, 8), (2, 1), (4, 4), (8, 2)])
def test_global_batch_is_the_same_rows_whatever_the_world_size_and_split(cfg, tok, world_size, batch_size):
    corpus = open_source(data_config(cfg)).corpus("train", tok)
    steps = 3
    per_stream = [stream_rows(corpus, s, steps * ROWS // STREAMS, 1000) for s in range(STREAMS)]
    k = ROWS // STREAMS
    # Step t is rows [t k, (t+1) k) of stream 0, then of stream 1, ...
    expected = [np.stack([row for s in range(STREAMS) for row in per_stream[s][t * k : (t + 1) * k]]) for t in range(3)]
    accum = ROWS // (world_size * batch_size)
    got = global_batches(loaders_at(cfg, tok, world_size, batch_size), accum, steps)
    for t in range(steps):
        np.testing.assert_array_equal(got[t], expected[t])


def test_a_rank_reads_only_its_own_streams_units(cfg, tok):
    corpus = open_source(data_config(cfg)).corpus("train", tok)
    read = []
    original = corpus.read

    def recording_read(unit, indices=None):
        read.append(unit)
        return original(unit, indices)

    corpus.read = recording_read
    loader = TrainLoader(corpus, 2, SEQ, 0, 1, 4, 4, STREAMS, ROWS)  # rank 1 of 4: streams 2, 3; buffers of 4
    for _ in range(8):  # two steps
        next(loader)
    assert all(stream["next"][0] == 0 for stream in loader.state_dict()["stream_states"])  # still epoch 0
    mine = set(epoch_units(corpus.num_units, 0, 0, 2, STREAMS)) | set(epoch_units(corpus.num_units, 0, 0, 3, STREAMS))
    assert read and set(read) <= mine


@pytest.mark.parametrize("saved_world_size", [1, 2, 4])
def test_loader_resumes_exactly_on_every_world_size(cfg, tok, saved_world_size):
    small_buffer = compose([*SMALL, "data.buffer_size=50"])  # many documents wait in buffers across the save
    reference = global_batches(loaders_at(small_buffer, tok, 1, ROWS), 1, 9)
    before = loaders_at(small_buffer, tok, saved_world_size, 2)
    accum = ROWS // (saved_world_size * 2)
    assert [b.tolist() for b in global_batches(before, accum, 5)] == [b.tolist() for b in reference[:5]]
    # as a checkpoint stores it: one state per rank, through JSON
    state = merge_states([json.loads(json.dumps(loader.state_dict())) for loader in before])
    for world_size in (1, 2, 4):
        after = loaders_at(small_buffer, tok, world_size, 4, state=state)
        resumed = global_batches(after, ROWS // (world_size * 4), 4)
        for t, batch in enumerate(resumed):
            np.testing.assert_array_equal(batch, reference[5 + t], err_msg=f"{saved_world_size} -> {world_size}")


def test_state_is_taken_between_steps_and_refused_with_another_seed(cfg, tok):
    loader = build_train_loader(data_config(cfg), tok, 2, SEQ, 0, 2, rows_per_step=ROWS)  # 4 micro-batches per step
    next(loader)
    with pytest.raises(RuntimeError, match="between optimizer steps; 6 rows of this step are still unread"):
        loader.state_dict()
    for _ in range(3):
        next(loader)
    state = loader.state_dict()
    other_seed = compose([*SMALL, "data.seed=1"])
    with pytest.raises(ConfigError, match=r"resume with the same data.seed and data.streams"):
        build_train_loader(data_config(other_seed), tok, 2, SEQ, 0, 2, state=state, rows_per_step=ROWS)
    with pytest.raises(ConfigError, match=r"no position for streams \[4, 5, 6, 7\]; pass every rank's state"):
        build_train_loader(data_config(cfg), tok, 2, SEQ, 1, 2, state=state, rows_per_step=ROWS)


@pytest.mark.parametrize(
    "streams,world_size,message",
    [
        (3, 1, "data.streams=3 must divide the 16 rows of a global batch"),
        (8, 3, "data.streams=8 must be a positive multiple of the world size 3"),
        (2, 4, "data.streams=2 must be a positive multiple of the world size 4"),
    ],
)
def test_streams_that_do_not_split_are_refused(streams, world_size, message):
    with pytest.raises(ConfigError, match=message):
        check_stream_split(streams, ROWS, world_size)


# one validation set whatever the world size --------------------------------------------------
def test_validation_set_is_the_same_rows_whatever_the_world_size_and_batch(cfg, tok):
    corpus = open_source(data_config(cfg)).corpus("val", tok)
    packer = BestFitPacker(validation_documents(corpus), 33, cfg.data.buffer_size)
    expected = np.stack([packer.next_row() for _ in range(400 // 32)])  # the first 12 rows, in order
    for world_size, batch_size in [(1, 4), (1, 5), (2, 2), (3, 4), (5, 1)]:
        rows = []
        for rank in range(world_size):
            for inputs, targets in val_batches(data_config(cfg), tok, batch_size, 32, 400, rank, world_size):
                assert inputs.shape == targets.shape == (batch_size, 32)  # a short batch is filled up
                real = targets[:, 0] >= 0
                assert (targets[~real] == -1).all()
                rows.append(np.concatenate([inputs[real].numpy(), targets[real].numpy()[:, -1:]], axis=1))
        np.testing.assert_array_equal(np.concatenate(rows), expected, err_msg=f"{world_size} ranks x {batch_size}")
    # At least one row even when the total asks for less.
    ((inputs, targets),) = val_batches(
        data_config(cfg), tok, batch_size=2, seq_len=32, num_tokens=1, rank=0, world_size=1
    )
    assert (targets[0] >= 0).all() and (targets[1] == -1).all()


def test_validation_split_too_small_is_a_config_error(cfg, tok):
    with pytest.raises(ConfigError, match=r"^eval.val_tokens=100000000 needs 390625 rows of 256 tokens, but the"):
        val_batches(data_config(cfg), tok, batch_size=8, seq_len=256, num_tokens=100_000_000, rank=0, world_size=1)


def test_a_horizon_past_the_training_split_is_counted_and_warned(cfg, tok):
    """Issue 24's CPU ladder: its d5 rung read data=builtin's training split 1.85 times and its
    validation bpb rose at the end, with nothing in train.log to say so. The split's size here is
    counted independently: its documents tokenized in this test, one BOS each."""
    from harness.run.spec import resolve_run
    from harness.run.trainer import data_passes, repeats_data_warning

    documents = open_source(data_config(cfg)).documents("train")
    split_tokens = sum(len(ids) for ids in tok.encode_batch(documents, prepend_bos=True))
    batch = 1024
    shape = ["model.sequence_len=256", f"train.total_batch_tokens={batch}", "train.device_batch_size=4"]
    last_single_pass = split_tokens // batch  # steps x batch <= split_tokens: at most one pass
    for steps in (last_single_pass, last_single_pass + 1, 3 * last_single_pass):
        composed = compose([*SMALL, *shape, f"train.num_iterations={steps}"])
        spec = dataclasses.replace(resolve_run(composed, check_inputs=False, world_size=1), data=data_config(composed))
        passes = data_passes(spec, tok)
        assert passes == (pytest.approx(steps * batch / split_tokens), split_tokens)
        warning = repeats_data_warning(spec, passes)
        if steps == last_single_pass:
            assert warning is None
        else:
            assert warning == (
                f"the horizon reads the training split {steps * batch / split_tokens:.2f} times ({split_tokens:,} "
                f"tokens): documents repeat from about step {last_single_pass:,}, after which validation bpb can "
                "stop falling or rise (data.corpus_bytes sets data=builtin's size)"
            )
    composed = compose(["data=fineweb", *shape, "train.num_iterations=10"])
    fineweb = dataclasses.replace(resolve_run(composed, check_inputs=False, world_size=1), data=data_config(composed))
    assert data_passes(fineweb, tok) is None  # its size is not known without reading every shard
