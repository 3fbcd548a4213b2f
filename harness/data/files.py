"""Reading documents from the file formats the harness accepts: .parquet, .jsonl and .txt.

A parquet file is read one row group at a time (the unit of streaming and of rank sharding),
a .jsonl file whole (one document per line, in field `field`), a .txt file whole (one document).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import ConfigError

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def find_files(path: Path) -> list[Path]:
    """`path` itself if it is a supported file, else every supported file below it, sorted."""
    if path.is_file():
        return [path] if path.suffix in TEXT_SUFFIXES else []
    return sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())


def parquet_row_groups(path: Path, column: str) -> int:
    """Row groups in a parquet file, after checking it has the text column."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise ConfigError(f"{path} is not a readable parquet file: {error}") from None
    if column not in parquet.schema_arrow.names:
        raise ConfigError(f"{path} has no column {column!r}; its columns: {', '.join(parquet.schema_arrow.names)}")
    return parquet.metadata.num_row_groups


def read_row_group(path: Path, row_group: int, column: str) -> list[str]:
    """One row group's `column`; a file that does not read is a ConfigError naming it and the group."""
    try:
        table = pq.ParquetFile(path).read_row_group(row_group, columns=[column])
    except (pa.ArrowException, OSError) as error:
        reason = " ".join(str(error).split())  # Arrow's messages run over several lines
        raise ConfigError(f"{path}: row group {row_group} does not read ({reason}); the file is corrupt") from None
    return table.column(column).to_pylist()


def read_jsonl(path: Path, field: str) -> list[str]:
    return [_jsonl_text(path, number, line, field) for number, line in _utf8_lines(path) if line.strip()]


def read_txt(path: Path) -> list[str]:
    return [path.read_text(encoding="utf-8", errors="replace")]


def check_readable(path: Path, field: str) -> None:
    """Read `path` as the loader will and raise ConfigError naming the file (and line) at the first
    problem: text that is not UTF-8, a .jsonl line that is not a JSON object with a string `field`,
    a parquet file whose footer, column or row groups do not read."""
    if path.suffix == ".parquet":
        for group in range(parquet_row_groups(path, field)):
            values = read_row_group(path, group, field)
            if any(not isinstance(v, str) for v in values):
                raise ConfigError(f"{path}: row group {group} has non-string values in column {field!r}")
        return
    for number, line in _utf8_lines(path):
        if path.suffix == ".jsonl" and line.strip():
            _jsonl_text(path, number, line, field)


def _utf8_lines(path: Path):
    """(line number, text) of each line; a line that is not UTF-8 is a ConfigError naming file:line."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                bad = raw[error.start : error.start + 1]
                raise ConfigError(
                    f"{path}:{number} is not UTF-8 text (byte {error.start + 1} of the line is {bad!r})"
                ) from None


def _jsonl_text(path: Path, number: int, line: str, field: str) -> str:
    """Line `number` of a .jsonl file: its string `field`, or a ConfigError naming the line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{number} is not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise ConfigError(f"{path}:{number} has no string field {field!r}; set data.text_field")
    return record[field]
