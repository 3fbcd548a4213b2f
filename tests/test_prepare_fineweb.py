"""`python -m harness.prepare` for FineWeb against a local HTTP server: download, resume, retries,
concurrency, errors, the tokenizer, and the fineweb loader on the prepared shards."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import types
from collections import defaultdict
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from harness.cli import compose
from harness.data import build_tokenizer, build_train_loader, check_data, val_batches
from harness.data import fineweb as fineweb_module
from harness.data.fineweb import DownloadError, FinewebSource
from harness.data.loader import training_documents
from harness.data.sources import open_source
from harness.errors import ConfigError
from harness.prepare import main as prepare_main
from harness.prepare import named_components

REPO = Path(__file__).resolve().parent.parent
NUM_SHARDS, VAL_SHARD, DOCS_PER_GROUP, GROUPS = 2, 2, 4, 3


def shard_texts(index: int) -> list[str]:
    rng = random.Random(index)
    words = ["".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(2, 9))) for _ in range(400)]
    return [
        f"shard {index} doc {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(20, 120)))
        for i in range(DOCS_PER_GROUP * GROUPS)
    ]


def shard_bytes(index: int) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": shard_texts(index)}), sink, row_group_size=DOCS_PER_GROUP)
    return sink.getvalue()


SHARDS = {f"shard_{i:05d}.parquet": shard_bytes(i) for i in (*range(NUM_SHARDS), VAL_SHARD)}


class ShardServer:
    """Serves SHARDS over HTTP with Range support; `plan[name]` scripts misbehaviour per request:
    "500" an error status, "truncate" a complete response holding half the file, "cut" the
    connection dropped halfway through the declared length."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.plan: dict[str, list[str]] = defaultdict(list)
        self.log: list[tuple[str, str | None]] = []
        self.delay_s = 0.0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets/fineweb"

    def requests_for(self, name: str) -> list[str | None]:
        return [rng for n, rng in self.log if n == name]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                folder, _, name = self.path.rpartition("/")
                server.log.append((name, self.headers.get("Range")))
                time.sleep(server.delay_s)
                if folder != "/datasets/fineweb" or name not in server.files:
                    self.send_error(404)
                    return
                action = server.plan[name].pop(0) if server.plan[name] else "ok"
                body = server.files[name]
                if action == "500":
                    self.send_error(500)
                    return
                if action == "truncate":
                    body = body[: len(body) // 2]
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                # The file's version, as object stores name it; a resume is checked against it.
                self.send_header("ETag", f'"{hashlib.sha256(server.files[name]).hexdigest()[:16]}"')
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if action == "cut":
                    self.wfile.write(body[start : start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        return Handler

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ShardServer(SHARDS)
    yield s
    s.close()


def overrides(url: str, data: str = "fineweb", **extra) -> list[str]:
    values = {
        "data.base_url": url,
        "data.num_shards": NUM_SHARDS,
        "data.val_shard": VAL_SHARD,
        "data.vocab_size": 300,
        "data.download_retries": 2,
        "data.download_backoff_s": 0,
        "data.download_timeout_s": 10,
        "data.download_workers": 2,
        **extra,
    }
    return [f"data={data}", *(f"{k}={v}" for k, v in values.items())]


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path))
    return tmp_path


def run_prepare(args: list[str]) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        prepare_main(args)
    return out.getvalue()


def fineweb_dir(data_dir: Path) -> Path:
    return data_dir / "fineweb"


# downloading ------------------------------------------------------------------------------
def test_prepare_downloads_every_shard_and_trains_the_tokenizer(server, data_dir):
    summary = run_prepare(overrides(server.url))
    for name, body in SHARDS.items():
        assert (fineweb_dir(data_dir) / name).read_bytes() == body
    assert not list(fineweb_dir(data_dir).glob("*.partial"))
    assert (fineweb_dir(data_dir) / "tokenizer_300" / "tokenizer.json").exists()
    assert "training: 2 of 2 shards (0..1); validation: shard 2 present" in summary
    assert "tokenizer: " in summary and "(vocab 300," in summary
    # A second prepare finds everything and asks the server for nothing.
    requests_before = len(server.log)
    run_prepare(overrides(server.url))
    assert len(server.log) == requests_before
    check_data(compose(overrides(server.url)))


def test_interrupted_download_resumes_and_never_counts_a_partial_file(server, data_dir, monkeypatch):
    monkeypatch.setattr(fineweb_module, "CHUNK_BYTES", 1024)
    server.plan["shard_00001.parquet"] = ["cut"]
    cfg = compose(overrides(server.url, **{"data.download_retries": 0}))
    source = open_source(cfg)
    with pytest.raises(DownloadError, match="shard_00001.parquet: failed 1 times"):
        source.download(source.missing_shards())
    assert not (fineweb_dir(data_dir) / "shard_00001.parquet").exists()
    partial = fineweb_dir(data_dir) / "shard_00001.parquet.partial"
    kept = partial.stat().st_size
    assert 0 < kept < len(SHARDS["shard_00001.parquet"])
    assert source.missing_shards() == [1]
    with pytest.raises(ConfigError, match="missing 1 of 3 shards"):
        check_data(cfg)
    # The next attempt asks only for the rest of the interrupted shard.
    source.download(source.missing_shards())
    assert server.requests_for("shard_00001.parquet") == [None, f"bytes={kept}-"]
    assert len(server.requests_for("shard_00000.parquet")) == 1
    assert (fineweb_dir(data_dir) / "shard_00001.parquet").read_bytes() == SHARDS["shard_00001.parquet"]
    assert not partial.exists()


def test_server_errors_are_retried(server, data_dir):
    server.plan["shard_00000.parquet"] = ["500", "500"]
    source = open_source(compose(overrides(server.url)))
    source.download([0])
    assert len(server.requests_for("shard_00000.parquet")) == 3
    assert (fineweb_dir(data_dir) / "shard_00000.parquet").read_bytes() == SHARDS["shard_00000.parquet"]


def test_persistent_server_error_gives_a_clear_error_after_retries(server, data_dir):
    server.plan["shard_00000.parquet"] = ["500"] * 10
    source = open_source(compose(overrides(server.url)))
    with pytest.raises(DownloadError, match=r"shard_00000.parquet: failed 3 times, last: HTTP 500; re-run"):
        source.download([0])
    assert len(server.requests_for("shard_00000.parquet")) == 3
    assert not (fineweb_dir(data_dir) / "shard_00000.parquet").exists()


def test_truncated_file_is_retried_then_a_clear_error(server, data_dir):
    server.plan["shard_00000.parquet"] = ["truncate"] * 10
    source = open_source(compose(overrides(server.url)))
    with pytest.raises(DownloadError, match="failed 3 times, last: not a readable parquet file"):
        source.download([0])
    assert len(server.requests_for("shard_00000.parquet")) == 3
    assert not list(fineweb_dir(data_dir).glob("shard_00000*"))  # neither final nor partial


def test_truncated_file_then_good_file_succeeds(server, data_dir):
    server.plan["shard_00000.parquet"] = ["truncate"]
    source = open_source(compose(overrides(server.url)))
    source.download([0])
    # The corrupt partial was thrown away, so the retry starts from byte 0 (no Range).
    assert server.requests_for("shard_00000.parquet") == [None, None]
    assert (fineweb_dir(data_dir) / "shard_00000.parquet").read_bytes() == SHARDS["shard_00000.parquet"]


def test_wrong_base_url_is_a_config_error(server, data_dir):
    source = open_source(compose(overrides(server.url + "/nope")))
    with pytest.raises(
        ConfigError, match=r"^data.base_url=http://127.0.0.1:\d+/datasets/fineweb/nope answered HTTP 404"
    ):
        source.download([0])
    assert len(server.log) == 1  # a 404 is not retried


def test_two_concurrent_prepares_share_the_work(server, data_dir):
    server.delay_s = 0.3
    command = [sys.executable, "-m", "harness.prepare", *overrides(server.url)]
    env = {**os.environ, "ABLATE_DATA_DIR": str(data_dir)}
    procs = [
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for name, body in SHARDS.items():
        assert len(server.requests_for(name)) == 1  # each shard fetched by one process only
        assert (fineweb_dir(data_dir) / name).read_bytes() == body
    assert not list(fineweb_dir(data_dir).glob("*.partial"))
    assert len(list(fineweb_dir(data_dir).glob("tokenizer_300*/tokenizer.json"))) == 1


# what training sees -----------------------------------------------------------------------
def test_missing_fineweb_data_names_the_prepare_command(data_dir):
    cfg = compose(overrides("http://unused"))
    where = fineweb_dir(data_dir)
    expected = (
        f"data=fineweb with data.num_shards=2 is missing 3 of 3 shards (first shard_00000.parquet) and the "
        f"tokenizer tokenizer_300 in {where}; run: python -m harness.prepare data=fineweb data.num_shards=2 "
        f"data.vocab_size=300 data.dir={where}"
    )
    with pytest.raises(ConfigError) as error:
        check_data(cfg)
    assert str(error.value) == expected


def test_missing_tokenizer_alone(server, data_dir):
    source = open_source(compose(overrides(server.url)))
    source.download(source.missing_shards())
    with pytest.raises(
        ConfigError, match=r"is missing the tokenizer tokenizer_300 in .*; run: python -m harness.prepare"
    ):
        check_data(compose(overrides(server.url)))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared fineweb directory, shared by the loader tests below."""
    root = tmp_path_factory.mktemp("fineweb")
    s = ShardServer(SHARDS)
    saved = os.environ.get("ABLATE_DATA_DIR")
    os.environ["ABLATE_DATA_DIR"] = str(root)
    try:
        cfg = compose(overrides(s.url))
        open_source(cfg).prepare()
        yield cfg, build_tokenizer(cfg)
    finally:
        s.close()
        if saved is None:
            os.environ.pop("ABLATE_DATA_DIR")
        else:
            os.environ["ABLATE_DATA_DIR"] = saved


def test_ranks_read_disjoint_row_groups_that_cover_the_training_shards(prepared):
    cfg, tok = prepared
    corpus = open_source(cfg).corpus("train", tok)
    assert corpus.num_units == NUM_SHARDS * GROUPS
    seen = []
    for rank in range(2):
        stream = training_documents(corpus, 0, rank, 2, (0, 0, 0))
        seen.append([tok.decode(d[1:]) for _, d in _first_epoch(stream)])
    expected = [t for i in range(NUM_SHARDS) for t in shard_texts(i)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(expected)


def _first_epoch(stream):
    for doc_id, doc in stream:
        if doc_id[0] > 0:
            return
        yield doc_id, doc


def test_fineweb_loader_resumes_exactly_across_epochs(prepared):
    cfg, tok = prepared
    cfg = OmegaConf.merge(cfg, {"data": {"streams": 2}})  # 6 row groups: 3 per stream
    # 4 rows per step, 2 per stream: rank 1 of 2 makes stream 1's, one micro-batch of 2 rows
    loader = build_train_loader(cfg, tok, batch_size=2, seq_len=64, rank=1, world_size=2, rows_per_step=4)
    for _ in range(5):
        next(loader)
    state = loader.state_dict()
    expected = [next(loader) for _ in range(30)]
    # the 30 batches ran through more than one epoch
    assert loader.state_dict()["stream_states"][0]["next"][0] >= 2
    resumed = build_train_loader(cfg, tok, batch_size=2, seq_len=64, rank=1, world_size=2, state=state, rows_per_step=4)
    for (x, y), (rx, ry) in zip(expected, (next(resumed) for _ in range(30)), strict=True):
        assert x.equal(rx) and y.equal(ry)


def test_fineweb_validation_uses_only_the_last_shard(prepared):
    cfg, tok = prepared
    ((inputs, targets),) = val_batches(cfg, tok, batch_size=2, seq_len=32, num_tokens=64, rank=0, world_size=1)
    val_text = " ".join(shard_texts(VAL_SHARD))
    for row in inputs:
        assert row[0] == tok.bos_id
        assert tok.decode(row[1:].tolist()).split("<|bos|>")[0] in val_text
        assert f"shard {VAL_SHARD} doc" in tok.decode(row.tolist())


# the command line -------------------------------------------------------------------------
def test_named_components():
    assert named_components([]) == set()
    assert named_components(["data=fineweb", "data.num_shards=4"]) == {"data"}
    assert named_components(["eval=core"]) == {"eval"}
    assert named_components(["eval.core.bundle_dir=/x", "model=d24"]) == {"eval"}
    assert named_components(["experiment=smoke", "seed=1"]) == set()


def test_prepare_eval_core_prepares_only_the_bundle(data_dir, monkeypatch):
    calls = []
    fake = types.ModuleType("harness.eval.core")
    fake.prepare_bundle = lambda cfg: calls.append(cfg.eval.core.bundle_dir)
    monkeypatch.setitem(sys.modules, "harness.eval.core", fake)
    output = run_prepare(["eval=core"])
    assert calls == [f"{data_dir}/eval_bundle"]
    assert "CORE bundle" in output
    assert not fineweb_dir(data_dir).exists()  # data was not named, so not prepared


def test_help_documents_every_data_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("builtin", "fineweb", "local"):
        assert f"data={name}" in text
    for key in ("num_shards", "val_shard", "base_url", "download_retries", "path", "val_path", "corpus_bytes"):
        assert f"    {key}: " in text
    assert "eval=core" in text and "ABLATE_DATA_DIR" in text


def test_prepare_config_error_exits_2(capsys, data_dir):
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(["data=local"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: data.path is not set")


def test_download_error_exits_1(server, data_dir, capsys):
    server.plan["shard_00000.parquet"] = ["500"] * 10
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(overrides(server.url, **{"data.download_retries": 0}))
    assert exit_info.value.code == 1
    assert "failed 1 times, last: HTTP 500" in capsys.readouterr().err


def test_fineweb_source_rejects_too_many_shards(data_dir):
    with pytest.raises(ConfigError, match=r"data.num_shards=1823 must be between 1 and 1822"):
        open_source(compose(["data=fineweb", "data.num_shards=1823"]))
    assert isinstance(open_source(compose(["data=fineweb"])), FinewebSource)


# issue 26 item 12 and issue 27 item 7: downloads that cannot be poisoned, and no network is one line
def corrupt_a_row_group(data: bytes) -> bytes:
    """The first row group's page header overwritten: the footer still reads."""
    raw = bytearray(data)
    raw[4:64] = b"\xab" * 60
    return bytes(raw)


def test_a_stale_partial_of_another_file_is_started_over_not_completed(server, data_dir):
    """A .partial holding another shard's bytes (left by an older version, or copied in) has no record
    of what it began as: the shard is fetched whole, never joined onto it with a Range request."""
    folder = fineweb_dir(data_dir)
    folder.mkdir(parents=True)
    (folder / "shard_00001.parquet.partial").write_bytes(SHARDS["shard_00000.parquet"][:1000])
    open_source(compose(overrides(server.url))).download([1])
    assert server.requests_for("shard_00001.parquet") == [None]
    assert (folder / "shard_00001.parquet").read_bytes() == SHARDS["shard_00001.parquet"]
    assert not list(folder.glob("shard_00001.parquet.partial*"))


def test_a_partial_is_resumed_only_while_the_server_names_the_same_file(server, data_dir, monkeypatch):
    monkeypatch.setattr(fineweb_module, "CHUNK_BYTES", 1024)
    name = "shard_00001.parquet"
    server.plan[name] = ["cut"]
    source = open_source(compose(overrides(server.url, **{"data.download_retries": 0})))
    with pytest.raises(DownloadError):
        source.download([1])
    partial = fineweb_dir(data_dir) / f"{name}.partial"
    kept = partial.stat().st_size
    assert json.loads((fineweb_dir(data_dir) / f"{name}.partial.source.json").read_text())["length"] == len(
        SHARDS[name]
    )
    replaced = shard_bytes(7)  # the server's copy changes (a re-upload): its ETag changes with it
    monkeypatch.setitem(server.files, name, replaced)
    source.download([1])
    assert server.requests_for(name) == [None, f"bytes={kept}-", None]  # the answer named another file
    assert (fineweb_dir(data_dir) / name).read_bytes() == replaced


def test_a_shard_whose_footer_reads_but_a_row_group_does_not_never_counts(server, data_dir):
    server.files = {**server.files, "shard_00000.parquet": corrupt_a_row_group(SHARDS["shard_00000.parquet"])}
    source = open_source(compose(overrides(server.url)))
    with pytest.raises(DownloadError, match="failed 3 times, last: not a readable parquet file"):
        source.download([0])
    assert not list(fineweb_dir(data_dir).glob("shard_00000*"))


def test_a_corrupt_shard_on_disk_is_named_when_the_tokenizer_reads_it(server, data_dir, capsys):
    folder = fineweb_dir(data_dir)
    folder.mkdir(parents=True)
    for name, body in SHARDS.items():
        (folder / name).write_bytes(corrupt_a_row_group(body) if name == "shard_00001.parquet" else body)
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(overrides(server.url))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"error: {folder / 'shard_00001.parquet'}: row group 0 does not read (")
    assert err.endswith("); the file is corrupt")


def test_a_host_that_cannot_be_reached_stops_prepare_at_once_in_one_line(data_dir):
    """A closed local port (no network at all looks the same): one line, exit 1, no retries, and no
    shard counted as done."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/datasets/fineweb"
    result = subprocess.run(
        [sys.executable, "-m", "harness.prepare", *overrides(url, **{"data.download_retries": 5})],
        capture_output=True,
        text=True,
        env={**os.environ, "ABLATE_DATA_DIR": str(data_dir)},
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach data.base_url={url} (") and "refused" in last
    assert "3/3" not in result.stderr  # the progress bar counts only shards on disk
    assert not list(fineweb_dir(data_dir).glob("shard_*"))


def test_a_name_that_does_not_resolve_is_unreachable_too(data_dir, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    source = open_source(compose(overrides("http://shards.example/datasets/fineweb", **{"data.download_retries": 5})))
    with pytest.raises(DownloadError, match=r"^cannot reach data.base_url=http://shards.example/datasets/fineweb \("):
        source.download([0, 1, 2])
