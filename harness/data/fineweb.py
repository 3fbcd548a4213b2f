"""Sharded parquet datasets in Karpathy's layout: download, tokenizer, training and validation.

Two datasets share this layout and this code, named by `data.source`:
- `fineweb`: FineWeb-edu (the reshuffled 100B-token copy), 1823 shards `shard_00000.parquet` ..
  `shard_01822.parquet` (column `text`, ~250M characters and ~90 MB each): nanochat 348fbb3's data.
- `climbmix`: NVIDIA ClimbMix (the reshuffled 400B copy), 6543 shards `shard_00000` .. `shard_06542`:
  nanochat 92d63d4's data, with its tokenizer retrained on it.
As in nanochat, training uses shards 0 .. data.num_shards-1 under `data.base_url`, and the last
shard (data.val_shard) is always the validation split, whatever num_shards is. Files live in
`data.dir` (default ${paths.data_dir}/<source>).

Downloads are parallel and resumable: each shard is written to `<name>.partial` under a per-shard
file lock (so two processes never write the same file), with the server's validator for it (ETag,
else Last-Modified, and the length) recorded beside it in `<name>.partial.source.json`. A partial is
continued with an HTTP Range request only when the server still names the same file by that
validator; a partial without one (or from another file) is started over, so bytes of two files are
never joined. A shard is then read whole (every row group of its `text` column) and only then
renamed to its final name. A final name therefore always means a complete shard; partial files
never count. Server errors, timeouts and truncated or corrupt files are retried with exponential
backoff; a host that cannot be reached at all (no network, a wrong name, a closed port) stops the
command at once, in one line.
The 32768-token BPE is trained once on the first `data.tokenizer_max_chars` characters of the
training shards (documents cropped to `data.tokenizer_doc_cap`) and stored in
`data.dir/tokenizer_<vocab_size>`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import requests
import urllib3
from filelock import FileLock
from tqdm import tqdm

from harness.data.cache import build_once
from harness.data.config import FinewebData
from harness.data.corpus import TextCorpus
from harness.data.files import parquet_row_groups, read_row_group
from harness.data.tokenizer import Tokenizer, read_meta, write_meta
from harness.errors import ConfigError

SHARD_NAME = "shard_{index:05d}.parquet"
TEXT_COLUMN = "text"
CHUNK_BYTES = 1 << 20
MAX_BACKOFF_S = 60.0
# Statuses worth retrying: the server or a proxy is briefly unhappy. Other 4xx are our mistake.
RETRY_STATUSES = {408, 425, 429}


# (path, size, mtime) of shards whose footer read: a sweep's preflight checks each once.
_SHARDS_VERIFIED: set[tuple] = set()


class DownloadError(Exception):
    """A shard could not be fetched after every retry (network or server trouble, not a config mistake)."""


class _Retryable(Exception):
    pass


class _Corrupt(Exception):
    pass


# Beside a partial download: the URL and the server's validator and length when it started.
SOURCE_SUFFIX = ".source.json"


class FinewebSource:
    def __init__(self, data: FinewebData):
        self.data = data
        self.dir = Path(data.dir)
        self.tokenizer_dir = self.dir / f"tokenizer_{data.vocab_size}"

    # layout -----------------------------------------------------------------------------
    def shard_path(self, index: int) -> Path:
        return self.dir / SHARD_NAME.format(index=index)

    def train_indices(self) -> list[int]:
        return list(range(self.data.num_shards))

    def needed_indices(self) -> list[int]:
        return [*self.train_indices(), self.data.val_shard]

    def missing_shards(self) -> list[int]:
        return [i for i in self.needed_indices() if not self.shard_path(i).exists()]

    def prepare_command(self) -> str:
        return (
            f"python -m harness.prepare data={self.data.source} data.num_shards={self.data.num_shards} "
            f"data.vocab_size={self.data.vocab_size} data.dir={self.dir}"
        )

    # the loader's view ------------------------------------------------------------------
    def check(self) -> None:
        missing = self.missing_shards()
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} of {len(self.needed_indices())} shards (first {SHARD_NAME.format(index=missing[0])})"
            )
        if not (self.tokenizer_dir / "tokenizer.json").exists():
            parts.append(f"the tokenizer {self.tokenizer_dir.name}")
        if parts:
            raise ConfigError(
                f"data={self.data.source} with data.num_shards={self.data.num_shards} is missing {' and '.join(parts)} "
                f"in {self.dir}; run: {self.prepare_command()}"
            )
        for index in self.needed_indices():
            path = self.shard_path(index)
            stat = path.stat()
            if (path, stat.st_size, stat.st_mtime_ns) in _SHARDS_VERIFIED:
                continue
            try:
                _verify(path)
            except _Corrupt as error:
                raise ConfigError(
                    f"{path}: {error}; delete it and run: {self.prepare_command()} (downloads it again)"
                ) from None
            _SHARDS_VERIFIED.add((path, stat.st_size, stat.st_mtime_ns))

    def tokenizer(self) -> Tokenizer:
        self.check()
        return Tokenizer.load(self.tokenizer_dir)

    def corpus(self, split: str, tok: Tokenizer) -> TextCorpus:
        indices = self.train_indices() if split == "train" else [self.data.val_shard]
        units = [
            (self.shard_path(i), group)
            for i in indices
            for group in range(parquet_row_groups(self.shard_path(i), TEXT_COLUMN))
        ]
        name = f"data={self.data.source} {'training shards' if split == 'train' else 'validation shard'}"
        return TextCorpus(name, units, lambda unit: read_row_group(*unit, TEXT_COLUMN), tok)

    # preparing --------------------------------------------------------------------------
    def prepare(self) -> list[str]:
        """Download what is missing, train the tokenizer unless it exists; return a summary."""
        self.download(self.missing_shards())
        self.train_tokenizer()
        return self.summary()

    def download(self, indices: list[int]) -> None:
        if not indices:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        errors = []
        workers = min(self.data.download_workers, len(indices))
        with ThreadPoolExecutor(workers) as pool, tqdm(total=len(indices), unit="shard", desc=self.data.source) as bar:
            futures = {pool.submit(self.download_shard, i): i for i in indices}
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    future.result()
                except (DownloadError, ConfigError) as error:
                    errors.append(error)
                    if isinstance(error, Unreachable):  # every other shard would wait out the same
                        for other in futures:
                            other.cancel()
                    continue
                bar.update()  # only shards that are on disk count as progress
        if errors:
            raise errors[0]

    def download_shard(self, index: int) -> bool:
        """Fetch one shard unless present; True if this call downloaded it."""
        name = SHARD_NAME.format(index=index)
        final = self.dir / name
        partial = self.dir / f"{name}.partial"
        url = f"{self.data.base_url.rstrip('/')}/{name}"
        (self.dir / ".locks").mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.dir / ".locks" / f"{name}.lock")):
            if final.exists():
                return False
            last_error: Exception | None = None
            for attempt in range(self.data.download_retries + 1):
                if attempt:
                    time.sleep(min(self.data.download_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
                try:
                    self._fetch(url, partial)
                    _verify(partial, every_row_group=True)
                except _Corrupt as error:
                    _discard(partial)
                    last_error = error
                except (_Retryable, requests.RequestException) as error:
                    if (reason := _unreachable(error)) is not None:
                        raise Unreachable(
                            f"cannot reach data.base_url={self.data.base_url} ({reason}); check the network "
                            "or data.base_url, then re-run the same prepare command"
                        ) from None
                    last_error = error
                else:
                    os.replace(partial, final)
                    _source_record(partial).unlink(missing_ok=True)
                    return True
            raise DownloadError(
                f"{url}: failed {self.data.download_retries + 1} times, last: {last_error}; "
                f"re-run the same prepare command to resume"
            )

    def _fetch(self, url: str, partial: Path) -> None:
        """Download `url` into `partial`: the rest of it when the server still serves the file the
        partial began as (same validator and length), else the whole file from byte 0."""
        started = _read_source_record(partial)
        have = partial.stat().st_size if partial.exists() else 0
        resume = have > 0 and started is not None and started["url"] == url
        # If-Range: a server whose file changed sends all of it (200) instead of the rest.
        headers = {"Range": f"bytes={have}-", "If-Range": started["validator"]} if resume else {}
        with requests.get(url, stream=True, timeout=self.data.download_timeout_s, headers=headers) as response:
            status = response.status_code
            if status == 416 and resume and have == started["length"]:
                return  # nothing after `have` bytes of the same file: the partial is whole
            if status >= 500 or status in RETRY_STATUSES:
                raise _Retryable(f"HTTP {status}")
            if status == 416 or (status == 206 and not _same_file(response, started)):
                _discard(partial)  # the server's file is not the one the partial began as: start over
                return self._fetch(url, partial)
            if status >= 400:
                raise ConfigError(
                    f"data.base_url={self.data.base_url} answered HTTP {status} for {url}; "
                    f"it must serve {SHARD_NAME.format(index=0)} .. {SHARD_NAME.format(index=self.data.val_shard)}"
                )
            if status != 206:
                _write_source_record(partial, url, response)
            # A short body raises in `iter_content` (urllib3 checks Content-Length), leaving the
            # bytes received so far in the partial file for the next attempt to continue.
            with partial.open("ab" if status == 206 else "wb") as out:
                for chunk in response.iter_content(CHUNK_BYTES):
                    out.write(chunk)

    def train_tokenizer(self) -> None:
        d = self.data

        def train(directory: Path) -> None:
            start, used = time.perf_counter(), {"chars": 0, "documents": 0}

            def texts() -> Iterator[str]:
                for index in self.train_indices():
                    path = self.shard_path(index)
                    for group in range(parquet_row_groups(path, TEXT_COLUMN)):
                        for text in read_row_group(path, group, TEXT_COLUMN):
                            used["chars"] += min(len(text), d.tokenizer_doc_cap)
                            used["documents"] += 1
                            yield text

            tok = Tokenizer.train(texts(), d.vocab_size, d.tokenizer_doc_cap, d.tokenizer_max_chars)
            tok.save(directory)
            write_meta(
                directory,
                vocab_size=tok.vocab_size,
                seconds=round(time.perf_counter() - start, 1),
                training_chars=used["chars"],
                training_documents=used["documents"],
                num_shards_available=d.num_shards,
            )

        build_once(self.tokenizer_dir, train)

    def summary(self) -> list[str]:
        """What is on disk, in a few lines."""
        present = [i for i in self.train_indices() if self.shard_path(i).exists()]
        on_disk = sorted(self.dir.glob("shard_*.parquet")) if self.dir.exists() else []
        unused = len(on_disk) - len(present) - self.shard_path(self.data.val_shard).exists()
        size_gb = sum(p.stat().st_size for p in on_disk) / 1e9
        val = "present" if self.shard_path(self.data.val_shard).exists() else "MISSING"
        lines = [
            f"{self.data.source}: {self.dir} holds {len(on_disk)} shards ({size_gb:.2f} GB)",
            f"  training: {len(present)} of {self.data.num_shards} shards (0..{self.data.num_shards - 1}); "
            f"validation: shard {self.data.val_shard} {val}"
            + (
                f"; {unused} more shards on disk go unused with data.num_shards={self.data.num_shards}"
                if unused
                else ""
            ),
        ]
        if (self.tokenizer_dir / "tokenizer.json").exists():
            meta = read_meta(self.tokenizer_dir)
            lines.append(
                f"  tokenizer: {self.tokenizer_dir} (vocab {meta.get('vocab_size', '?')}, trained on "
                f"{meta.get('training_chars', 0):,} characters in {meta.get('seconds', '?')} s)"
            )
        else:
            lines.append(f"  tokenizer: MISSING ({self.tokenizer_dir})")
        return lines


class Unreachable(DownloadError):
    """The host does not answer at all: retrying every shard would only wait longer."""


def _unreachable(error: Exception) -> str | None:
    """Why no connection could be made (name resolution, refused, no route), or None for errors
    worth retrying (timeouts, resets, a server's bad moment)."""
    if not isinstance(error, requests.ConnectionError) or isinstance(error, requests.ConnectTimeout):
        return None
    cause = error.args[0] if error.args else None
    reason = getattr(cause, "reason", cause)
    if not isinstance(reason, urllib3.exceptions.NewConnectionError):  # NameResolutionError is one too
        return None
    return str(reason).split(">: ", 1)[-1]  # urllib3 starts with the connection object's repr


def _source_record(partial: Path) -> Path:
    return partial.with_name(partial.name + SOURCE_SUFFIX)


def _validator(response: requests.Response) -> str | None:
    """The server's name for this version of the file: a strong ETag, else Last-Modified."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _write_source_record(partial: Path, url: str, response: requests.Response) -> None:
    """Record what a fresh download is of; without a validator there is nothing to resume against,
    so no record is written and an interrupted download starts over."""
    record = _source_record(partial)
    validator, length = _validator(response), response.headers.get("Content-Length")
    if validator is None or length is None or not length.isdigit():
        record.unlink(missing_ok=True)
        return
    record.write_text(json.dumps({"url": url, "validator": validator, "length": int(length)}))


def _read_source_record(partial: Path) -> dict | None:
    try:
        record = json.loads(_source_record(partial).read_text())
        if isinstance(record.get("validator"), str) and isinstance(record.get("length"), int):
            return record
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _same_file(response: requests.Response, started: dict | None) -> bool:
    """A 206 answer continues the partial only if the server names the same file, of the same length."""
    if started is None or _validator(response) != started["validator"]:
        return False
    total = response.headers.get("Content-Range", "").rpartition("/")[2]
    return total.isdigit() and int(total) == started["length"]


def _discard(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    _source_record(partial).unlink(missing_ok=True)


def _verify(path: Path, every_row_group: bool = False) -> None:
    """A shard counts only if its parquet footer reads and it has the text column; a download also
    reads every row group of that column (a footer can be whole over bytes from another file),
    checking each page's CRC where the writer stored one."""
    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=every_row_group)
        names = parquet.schema_arrow.names
        if TEXT_COLUMN in names and every_row_group:
            for group in range(parquet.metadata.num_row_groups):
                parquet.read_row_group(group, columns=[TEXT_COLUMN])
    except (pa.ArrowException, OSError) as error:
        raise _Corrupt(f"not a readable parquet file ({' '.join(str(error).split())})") from None
    if TEXT_COLUMN not in names:
        raise _Corrupt(f"parquet file without a {TEXT_COLUMN!r} column (columns: {', '.join(names)})")
