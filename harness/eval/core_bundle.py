"""The CORE eval bundle on disk: fetch it once, check its layout, read its task list.

The recipe's archive (eval_bundle.zip, ~162 MB) holds one top-level folder:

    eval_bundle/
      core.yaml               icl_tasks: a list of {label, icl_task_type, dataset_uri,
                              num_fewshot: [k, ...] (the first is used), continuation_delimiter
                              (optional, default " ")}
      eval_meta_data.csv      one row per task: "Eval Task" (the label), "Random baseline" (percent)
      eval_data/<dataset_uri> the examples, one JSON object per line

Fetching is atomic: download to a temporary file, unpack into a temporary folder beside the
target, validate, then rename into place, all under a file lock, so an interrupted, corrupt or
concurrent fetch never leaves a half bundle where the evaluation looks for one.
"""

from __future__ import annotations

import csv
import http.client
import io
import math
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock
from tqdm import tqdm

from harness.errors import ConfigError

ARCHIVE_ROOT = "eval_bundle"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
DEFAULT_CONTINUATION_DELIMITER = " "
DOWNLOAD_TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20
# The recipe's archive (~162 MB of zipped JSONL) unpacks to well under 1 GB: text compresses about
# 3-10x. An archive that would unpack past either limit (a zip bomb: 2 MB to 2 GB) is refused
# before a byte is written. zipfile stops each member at its declared size (and then fails its
# CRC), so the declared sizes bound what extraction writes.
MAX_UNPACKED_BYTES = 4 << 30
MAX_COMPRESSION_RATIO = 100
MAX_MEMBERS = 10_000


@dataclass(frozen=True)
class CoreTask:
    label: str
    task_type: str
    data_path: Path
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float  # percent, as eval_meta_data.csv gives it


@dataclass(frozen=True)
class Bundle:
    root: Path
    tasks: tuple[CoreTask, ...]


# reading and checking ----------------------------------------------------------------------
def load_bundle(root: str | os.PathLike) -> Bundle:
    """The bundle's tasks with their data files and baselines; ConfigError names what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"CORE bundle folder {root} does not exist")
    specs = _read_task_specs(root / "core.yaml")
    baselines = _read_baselines(root / "eval_meta_data.csv")
    tasks = tuple(_task(root, spec, baselines) for spec in specs)
    return Bundle(root, tasks)


def _read_task_specs(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"{path} is missing: a CORE bundle needs core.yaml")
    try:
        doc = yaml.safe_load(read_utf8(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    specs = doc.get("icl_tasks") if isinstance(doc, dict) else None
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"{path} has no 'icl_tasks' list")
    labels = set()
    for i, spec in enumerate(specs):
        where = f"{path}: icl_tasks[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} is not a mapping")
        for key in ("label", "icl_task_type", "dataset_uri", "num_fewshot"):
            if key not in spec:
                raise ConfigError(f"{where} has no '{key}'")
        label = spec["label"]
        if not isinstance(label, str) or not label:
            raise ConfigError(f"{where}: label={label!r} must be a non-empty string")
        if label in labels:
            raise ConfigError(f"{where}: label {label!r} appears twice")
        labels.add(label)
        if spec["icl_task_type"] not in TASK_TYPES:
            raise ConfigError(
                f"{where} ({label}): icl_task_type={spec['icl_task_type']!r} is not one of {', '.join(TASK_TYPES)}"
            )
        shots = spec["num_fewshot"]
        if not (isinstance(shots, list) and shots and isinstance(shots[0], int) and shots[0] >= 0):
            raise ConfigError(f"{where} ({label}): num_fewshot={shots!r} must be a list of counts, e.g. [10]")
        delimiter = spec.get("continuation_delimiter", DEFAULT_CONTINUATION_DELIMITER)
        if not isinstance(delimiter, str):
            raise ConfigError(f"{where} ({label}): continuation_delimiter={delimiter!r} must be a string")
    return specs


def _read_baselines(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ConfigError(f"{path} is missing: a CORE bundle needs eval_meta_data.csv")
    reader = csv.DictReader(io.StringIO(read_utf8(path, "utf-8-sig"), newline=""))
    columns = reader.fieldnames or []
    for column in ("Eval Task", "Random baseline"):
        if column not in columns:
            raise ConfigError(f"{path} has no '{column}' column")
    return {row["Eval Task"]: row["Random baseline"] for row in reader}


def read_utf8(path: Path, encoding: str = "utf-8") -> str:
    """A bundle file's text; bytes that are not UTF-8 are a ConfigError naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line} is not UTF-8 text (byte {data[e.start : e.start + 1]!r})") from None


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a task file, read line by line; a line that is not UTF-8 is a
    ConfigError naming the file and line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{path}:{number} is not UTF-8 text (byte {raw[e.start : e.start + 1]!r})") from None


def _task(root: Path, spec: dict, baselines: dict[str, str]) -> CoreTask:
    label = spec["label"]
    meta = root / "eval_meta_data.csv"
    if label not in baselines:
        raise ConfigError(f"{meta} has no row for task {label!r} (its 'Eval Task' column)")
    try:
        baseline = float(baselines[label])
    except (TypeError, ValueError):
        raise ConfigError(f"{meta}: Random baseline {baselines[label]!r} of task {label!r} is not a number") from None
    if not (math.isfinite(baseline) and 0 <= baseline < 100):
        raise ConfigError(f"{meta}: Random baseline {baseline} of task {label!r} must be in [0, 100)")
    data_dir = root / "eval_data"
    data_path = data_dir / str(spec["dataset_uri"])
    if not data_path.resolve().is_relative_to(data_dir.resolve()):
        raise ConfigError(f"{root / 'core.yaml'}: dataset_uri {spec['dataset_uri']!r} of {label!r} leaves eval_data/")
    if not data_path.is_file():
        raise ConfigError(f"{data_path} is missing (dataset_uri of task {label!r} in core.yaml)")
    return CoreTask(
        label=label,
        task_type=spec["icl_task_type"],
        data_path=data_path,
        num_fewshot=spec["num_fewshot"][0],
        continuation_delimiter=spec.get("continuation_delimiter", DEFAULT_CONTINUATION_DELIMITER),
        random_baseline=baseline,
    )


def find_bundle(
    saved: str | os.PathLike, saved_data_dir: str | os.PathLike | None, data_dir: str | os.PathLike
) -> Path:
    """Where a run's bundle is now: `saved` (its resolved eval.core.bundle_dir) if it still exists,
    else the same place under the current paths.data_dir (`data_dir`): a run directory copied to
    another machine, or a data folder that moved, still finds the bundle prepared there. The
    relative place is the saved path's part below the run's own paths.data_dir, else its name."""
    saved = Path(saved)
    try:
        relative = saved.relative_to(saved_data_dir) if saved_data_dir else Path(saved.name)
    except ValueError:
        relative = Path(saved.name)
    candidates = list(dict.fromkeys([saved, Path(data_dir) / relative]))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = f"{saved} (the run's config)"
    if len(candidates) > 1:
        tried += f" nor {candidates[1]} (under the current paths.data_dir)"
    raise ConfigError(
        f"eval.core.bundle_dir: no CORE bundle at {tried}; fetch it with `python -m harness.prepare eval=core` "
        "or pass eval.core.bundle_dir=PATH"
    )


# fetching ----------------------------------------------------------------------------------
def download_bundle(url: str, target: str | os.PathLike, progress: bool = True) -> Path:
    """Make `target` a valid bundle, downloading and unpacking `url` if it is not there yet."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if target.exists():
            try:
                load_bundle(target)
            except ConfigError as e:
                raise ConfigError(f"{e} (remove {target} to fetch the bundle again)") from None
            return target
        # The temporary folder sits beside the target, so the final rename stays on one file system.
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.partial.") as tmp:
            archive = Path(tmp) / "eval_bundle.zip"
            _download(url, archive, progress)
            unpacked = _unpack(archive, Path(tmp) / "unpacked", url)
            try:
                load_bundle(unpacked)
            except ConfigError as e:
                reason = str(e).replace(str(unpacked), ARCHIVE_ROOT)  # the temporary folder is about to go
                raise ConfigError(f"the archive at {url} is not a CORE bundle: {reason}") from None
            os.rename(unpacked, target)
    return target


def _download(url: str, destination: Path, progress: bool) -> None:
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(destination, "wb") as f:
            length = response.headers.get("Content-Length")
            expected = int(length) if length is not None else None
            with tqdm(total=expected, unit="B", unit_scale=True, desc="eval_bundle.zip", disable=not progress) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(f"could not download eval.core.bundle_url={url}: {reason}") from None
    if expected is not None and received != expected:
        raise ConfigError(f"download of eval.core.bundle_url={url} stopped after {received} of {expected} bytes")


def _unpack(archive: Path, destination: Path, url: str) -> Path:
    try:
        with zipfile.ZipFile(archive) as zf:
            _check_unpacked_size(zf.infolist(), archive.stat().st_size, url)
            zf.extractall(destination)  # CRC-checked; member names are confined to destination
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise ConfigError(f"eval.core.bundle_url={url} is not a valid zip archive: {e}") from None
    root = destination / ARCHIVE_ROOT
    if not root.is_dir():
        raise ConfigError(f"the archive at {url} has no top-level {ARCHIVE_ROOT}/ folder")
    return root


def _check_unpacked_size(members: list[zipfile.ZipInfo], archive_bytes: int, url: str) -> None:
    total = sum(m.file_size for m in members)
    limit = min(MAX_UNPACKED_BYTES, MAX_COMPRESSION_RATIO * max(archive_bytes, 1))
    if len(members) > MAX_MEMBERS or total > limit:
        raise ConfigError(
            f"the archive at {url} would unpack {len(members):,} files, {total:,} bytes from {archive_bytes:,} "
            f"({total / max(archive_bytes, 1):.0f}x); a CORE bundle is at most {MAX_MEMBERS:,} files, "
            f"{MAX_UNPACKED_BYTES >> 30} GiB and {MAX_COMPRESSION_RATIO}x its archive: refused unpacked"
        )
