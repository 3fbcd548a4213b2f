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
    table = pq.ParquetFile(path).read_row_group(row_group, columns=[column])
    return table.column(column).to_pylist()


def read_jsonl(path: Path, field: str) -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise ConfigError(f"{path}:{number} has no string field {field!r}; set data.text_field")
            texts.append(record[field])
    return texts


def read_txt(path: Path) -> list[str]:
    return [path.read_text(encoding="utf-8", errors="replace")]
