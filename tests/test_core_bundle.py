"""Fetching the CORE bundle: download, unpack, validate and rename into place, served from a
local HTTP server on 127.0.0.1 (never the real network)."""

from __future__ import annotations

import io
import shutil
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.eval.core import check_bundle, prepare_bundle

FIXTURE = Path(__file__).parent / "fixtures" / "core_bundle"


def bundle_zip(root: str = "eval_bundle", skip: str | None = None, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """The fixture bundle zipped the way the recipe's archive is: one top-level folder."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for path in sorted(FIXTURE.rglob("*")):
            relative = path.relative_to(FIXTURE).as_posix()
            if path.is_file() and relative != skip:
                zf.write(path, f"{root}/{relative}" if root else relative)
    return buffer.getvalue()


def flip_byte_inside_a_member(data: bytes) -> bytes:
    """Same length, valid directory, one compressed byte changed: the CRC check must catch it."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("eval_bundle/eval_data/world_knowledge/arc_mini.jsonl")
    # The member's data follows its 30-byte local header, file name and extra field.
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 5
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


class BundleServer:
    """Serves named byte strings; a route may cut its body short after promising all of it."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, bool]] = {}
        self.hits: dict[str, int] = {}
        self.delay_s = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                body, cut_short = server.routes[self.path]
                time.sleep(server.delay_s)
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut_short else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = BundleServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def cfg_for(url: str, bundle_dir: Path):
    cfg = OmegaConf.create(
        {"paths": {"data_dir": "unused"}, "eval": OmegaConf.load(Path(__file__).parents[1] / "configs/eval/bpb.yaml")}
    )
    OmegaConf.update(cfg, "eval.core.bundle_url", url)
    OmegaConf.update(cfg, "eval.core.bundle_dir", str(bundle_dir))
    return cfg


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(data_dir: Path) -> list[str]:
    """Anything prepare left beside the target other than its lock file."""
    return sorted(p.name for p in data_dir.iterdir() if not p.name.endswith(".lock"))


def test_prepare_downloads_unpacks_and_validates_once(server, tmp_path):
    server.routes["/eval_bundle.zip"] = (bundle_zip(), False)
    target = tmp_path / "data" / "eval_bundle"
    cfg = cfg_for(server.url("/eval_bundle.zip"), target)
    assert prepare_bundle(cfg, progress=False) == target
    assert files_under(target) == files_under(FIXTURE)
    assert [t.label for t in check_bundle(cfg).tasks][:2] == ["copa_mini", "arc_mini"]
    assert prepare_bundle(cfg, progress=False) == target  # already there: no second download
    assert server.hits == {"/eval_bundle.zip": 1}
    assert leftovers(tmp_path / "data") == ["eval_bundle"]


def test_concurrent_prepares_download_once(server, tmp_path):
    server.routes["/eval_bundle.zip"] = (bundle_zip(), False)
    server.delay_s = 0.3  # both callers arrive while the first download is under way
    target = tmp_path / "data" / "eval_bundle"
    cfg = cfg_for(server.url("/eval_bundle.zip"), target)
    errors = []

    def prepare():
        try:
            prepare_bundle(cfg, progress=False)
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert server.hits == {"/eval_bundle.zip": 1}
    assert files_under(target) == files_under(FIXTURE)


@pytest.mark.parametrize(
    ("route", "make_body", "cut_short", "message"),
    [
        ("/cut.zip", bundle_zip, True, "download of eval.core.bundle_url={url} stopped after {half} of {full} bytes"),
        (
            "/flipped.zip",
            lambda: flip_byte_inside_a_member(bundle_zip()),
            False,
            "eval.core.bundle_url={url} is not a valid zip archive: Error -3 while decompressing data",
        ),
        (
            "/flipped-stored.zip",
            lambda: flip_byte_inside_a_member(bundle_zip(compression=zipfile.ZIP_STORED)),
            False,
            "eval.core.bundle_url={url} is not a valid zip archive: Bad CRC-32 for file "
            "'eval_bundle/eval_data/world_knowledge/arc_mini.jsonl'",
        ),
        (
            "/truncated.zip",
            lambda: bundle_zip()[:-100],
            False,
            "eval.core.bundle_url={url} is not a valid zip archive: File is not a zip file",
        ),
        ("/flat.zip", lambda: bundle_zip(root=""), False, "the archive at {url} has no top-level eval_bundle/ folder"),
        (
            "/no-csv.zip",
            lambda: bundle_zip(skip="eval_meta_data.csv"),
            False,
            "the archive at {url} is not a CORE bundle: eval_bundle/eval_meta_data.csv is missing: a CORE bundle needs "
            "eval_meta_data.csv",
        ),
    ],
    ids=["interrupted", "corrupt-member", "bad-crc", "truncated-file", "no-top-folder", "incomplete-bundle"],
)
def test_bad_archives_leave_no_bundle_behind(server, tmp_path, route, make_body, cut_short, message):
    body = make_body()
    server.routes[route] = (body, cut_short)
    url = server.url(route)
    target = tmp_path / "data" / "eval_bundle"
    with pytest.raises(ConfigError) as error:
        prepare_bundle(cfg_for(url, target), progress=False)
    assert str(error.value).startswith(message.format(url=url, half=len(body) // 2, full=len(body)))
    assert "\n" not in str(error.value)
    assert not target.exists()
    assert leftovers(tmp_path / "data") == []
    # A good archive afterwards installs normally.
    server.routes[route] = (bundle_zip(), False)
    prepare_bundle(cfg_for(url, target), progress=False)
    assert files_under(target) == files_under(FIXTURE)


def test_missing_archive_is_a_one_line_error(server, tmp_path):
    url = server.url("/absent.zip")
    target = tmp_path / "data" / "eval_bundle"
    with pytest.raises(ConfigError) as error:
        prepare_bundle(cfg_for(url, target), progress=False)
    assert str(error.value) == f"could not download eval.core.bundle_url={url}: Not Found"
    assert not target.exists()


def test_a_malformed_bundle_in_place_is_reported_not_replaced(server, tmp_path):
    server.routes["/eval_bundle.zip"] = (bundle_zip(), False)
    target = tmp_path / "data" / "eval_bundle"
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("not a bundle")
    with pytest.raises(ConfigError) as error:
        prepare_bundle(cfg_for(server.url("/eval_bundle.zip"), target), progress=False)
    assert str(error.value) == (
        f"{target}/core.yaml is missing: a CORE bundle needs core.yaml (remove {target} to fetch the bundle again)"
    )
    assert server.hits == {}
    assert files_under(target) == {"notes.txt": b"not a bundle"}


def bomb_zip() -> bytes:
    """The fixture bundle plus one member of zeros that deflates ~1000:1 (2 MB to 2 GB, scaled down)."""
    buffer = io.BytesIO(bundle_zip())
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("eval_bundle/eval_data/padding.jsonl", bytes(40 << 20))
    return buffer.getvalue()


def test_an_archive_that_would_unpack_past_its_limits_is_refused_unpacked(server, tmp_path):
    body = bomb_zip()
    server.routes["/bomb.zip"] = (body, False)
    url = server.url("/bomb.zip")
    target = tmp_path / "data" / "eval_bundle"
    with pytest.raises(ConfigError) as error:
        prepare_bundle(cfg_for(url, target), progress=False)
    message = str(error.value)
    assert message.startswith(f"the archive at {url} would unpack ") and "\n" not in message
    assert "100x its archive: refused unpacked" in message
    assert not target.exists() and leftovers(tmp_path / "data") == []


@pytest.mark.parametrize("name", ["core.yaml", "eval_meta_data.csv", "eval_data/world_knowledge/arc_mini.jsonl"])
def test_a_bundle_file_that_is_not_utf8_is_one_line_naming_it(tmp_path, name):
    from harness.eval.core import load_examples

    bundle = tmp_path / "eval_bundle"
    shutil.copytree(FIXTURE, bundle)
    path = bundle / name
    path.write_bytes(path.read_bytes() + b"\xff\xfe not text\n")
    cfg = cfg_for("unused", bundle)
    with pytest.raises(ConfigError) as error:
        for task in check_bundle(cfg).tasks:  # the preflight reads the bundle; CORE then reads each task
            load_examples(task)
    assert str(error.value).startswith(f"{path}:") and "is not UTF-8 text" in str(error.value)
    assert "\n" not in str(error.value)
