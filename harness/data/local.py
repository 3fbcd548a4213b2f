"""Your own text: a file or folder of .txt, .jsonl (field data.text_field) and .parquet files.

`data.path` is read recursively (sorted). Units are parquet row groups and whole .txt/.jsonl
files; a .txt file is one document, a .jsonl line is one. The validation split is every file
under `data.val_path` when that is set; otherwise each document whose (file, row group, index)
hashes into the first `data.val_fraction` is held out, wherever it sits. The tokenizer is trained
on the training split like the builtin one and cached under `data.cache_dir`, keyed by the files'
names, sizes and modification times (not their content, which may be large).

Ordinary text files are long next to a row (a 15 kB file is thousands of tokens), and best-fit
packing would keep one row's crop of each: validation would see a row per held-out file, training a
few percent of the text per epoch. So the loader reads this source in row-sized pieces, each led by
BOS (harness.data.corpus.RowPieceCorpus): training and validation use all of every file.

Whether the validation split can fill eval.val_tokens is checked before the tokenizer is trained
(`check_validation`), from the held-out text's UTF-8 length: a byte-level BPE token is at least one
byte, so that length bounds the tokens from above and a split too small by that bound is refused in
the preflight; one that passes the bound but not the real count is refused once the tokenizer exists.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from harness.data.cache import build_once, fingerprint
from harness.data.config import LocalData
from harness.data.corpus import TextCorpus, held_out
from harness.data.files import (
    TEXT_SUFFIXES,
    check_readable,
    find_files,
    parquet_row_groups,
    read_jsonl,
    read_row_group,
    read_txt,
)
from harness.data.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer
from harness.errors import ConfigError

Unit = tuple[Path, int]  # (file, parquet row group; 0 for .txt and .jsonl)
_VALIDATION_CHECKED: set[tuple] = set()  # (data config, rows, row_len, world size) found big enough
_READABLE: set[str] = set()  # listings (names, sizes, mtimes) whose every file was read without a problem


class LocalSource:
    splits_long_documents = True  # read in row-sized pieces (harness.data.loader.open_corpus): see above

    def __init__(self, data: LocalData):
        self.data = data
        self.cache_dir = Path(data.cache_dir)

    def _folder(self, key: str) -> Path:
        value = getattr(self.data, key)
        allowed = "point it at a file or folder of " + "/".join(TEXT_SUFFIXES) + " files"
        if not value:
            raise ConfigError(f"data.{key} is not set; {allowed} (data=local data.{key}=/path/to/text)")
        path = Path(value).expanduser()
        if not path.exists():
            raise ConfigError(f"data.{key}={value} does not exist; {allowed}")
        if not find_files(path):
            raise ConfigError(f"data.{key}={value} has no {', '.join(TEXT_SUFFIXES)} files; {allowed}")
        return path

    def check(self) -> None:
        """The folders exist and every file reads as the loader will read it (harness.data.files.
        check_readable), so a bad byte or line stops the preflight, not a run hours in. A listing found
        clean is remembered under data.cache_dir, keyed like the tokenizer, and not read again."""
        self._folder("path")
        if self.data.val_path:
            self._folder("val_path")
        files = sorted(set(self.files("train") + self.files("val")))
        # The inode's change time too: a file rewritten in place with its size and mtime put back still
        # moves its ctime (no system call sets it), so a cached "clean" never vouches for new bytes.
        key = fingerprint("local-readable", _listing(files), _changes(files), self.data.text_field)
        if key not in _READABLE and not (self.cache_dir / f"readable-{key}").is_dir():
            for path in files:
                check_readable(path, self.data.text_field)
            with contextlib.suppress(OSError):  # a read-only cache only means checking again next time
                build_once(self.cache_dir / f"readable-{key}", lambda directory: None)
            _READABLE.add(key)
        self._check_units()

    def _check_units(self) -> None:
        """Every training stream needs a unit of its own (harness.data.loader.TrainLoader): a folder
        with fewer .txt/.jsonl files and parquet row groups than data.streams cannot train."""
        units = len(self.units("train"))
        if units < self.data.streams:
            raise ConfigError(
                f"data.path={self.data.path} has {units} unit{'s' if units != 1 else ''} for data.streams="
                f"{self.data.streams}; every stream needs at least one (a .txt or .jsonl file counts as one unit, "
                "a parquet file one per row group): split the text into more files or lower data.streams"
            )

    def files(self, split: str) -> list[Path]:
        root = self._folder("path")
        if not self.data.val_path:
            return find_files(root)
        held_out = find_files(self._folder("val_path"))
        return held_out if split == "val" else [f for f in find_files(root) if f not in set(held_out)]

    def units(self, split: str) -> list[Unit]:
        units = []
        for path in self.files(split):
            groups = parquet_row_groups(path, self.data.text_field) if path.suffix == ".parquet" else 1
            units.extend((path, group) for group in range(groups))
        return units

    def texts(self, unit: Unit, split: str) -> list[str]:
        path, group = unit
        if path.suffix == ".txt" and not self.data.val_path and self._held_out(path, group, 0) != (split == "val"):
            return []  # a .txt file is one document: its split is known without reading it
        if path.suffix == ".parquet":
            texts = read_row_group(path, group, self.data.text_field)
        elif path.suffix == ".jsonl":
            texts = read_jsonl(path, self.data.text_field)
        else:
            texts = read_txt(path)
        if self.data.val_path:
            return texts
        want_val = split == "val"
        return [t for i, t in enumerate(texts) if self._held_out(path, group, i) == want_val]

    def _held_out(self, path: Path, group: int, index: int) -> bool:
        root = Path(self.data.path).expanduser()
        name = path.name if root.is_file() else path.relative_to(root).as_posix()
        return held_out(f"{name}:{group}:{index}", self.data.val_fraction)

    def check_validation(self, rows: int, row_len: int, world_size: int, val_tokens: int) -> None:
        """Refuse, before any tokenizer exists, a validation split that cannot fill `rows` packed rows
        of `row_len` tokens on every rank (harness.data.loader.val_batches' need), by an upper bound
        on its tokens. Units are read in order and reading stops once every rank's bound suffices."""
        key = (self.data, rows, row_len, world_size)
        if key in _VALIDATION_CHECKED:  # a sweep's preflight checks each job: read the split once
            return
        units = self.units("val")
        capacity, documents, text_bytes = [0] * world_size, [0] * world_size, [0] * world_size
        for index, unit in enumerate(units):
            rank = index % world_size  # validation_documents: rank r reads units r, r + W, ...
            for text in self.texts(unit, "val"):
                n = len(text.encode("utf-8"))
                # <= n tokens + BOS; a piece per row_len - 1 of them, each led by a BOS of its own
                capacity[rank] += n + max(1, math.ceil(n / (row_len - 1)))
                documents[rank] += 1
                text_bytes[rank] += n
            if all(c >= rows * row_len for c in capacity):
                _VALIDATION_CHECKED.add(key)
                return
        rank = min(range(world_size), key=lambda r: capacity[r])
        whose = (
            "the validation split"
            if world_size == 1
            else f"rank {rank} of {world_size}'s share of the validation split"
        )
        source = f"data.val_path={self.data.val_path}" if self.data.val_path else f"data.path={self.data.path}"
        more = (
            "add files to data.val_path" if self.data.val_path else f"raise data.val_fraction={self.data.val_fraction}"
        )
        raise ConfigError(
            f"{source}: {whose} holds {documents[rank]} documents, {text_bytes[rank]:,} bytes of text, at most "
            f"{capacity[rank] // row_len} rows of {row_len} tokens, but eval.val_tokens={val_tokens} needs {rows}"
            f"{' per rank' if world_size > 1 else ''}; {more}, or lower eval.val_tokens"
        )

    def tokenizer(self) -> Tokenizer:
        d = self.data
        key = fingerprint(
            "local-tokenizer",
            _listing(self.files("train") + self.files("val")),
            d.val_path,
            d.val_fraction,
            d.text_field,
            d.vocab_size,
            SPLIT_PATTERN,
            SPECIAL_TOKENS,
            d.tokenizer_doc_cap,
            d.tokenizer_max_chars,
        )

        def train(directory: Path) -> None:
            texts = (text for unit in self.units("train") for text in self.texts(unit, "train"))
            Tokenizer.train(texts, d.vocab_size, d.tokenizer_doc_cap, d.tokenizer_max_chars).save(directory)

        return Tokenizer.load(build_once(self.cache_dir / f"tokenizer-{key}", train))

    def corpus(self, split: str, tok: Tokenizer) -> TextCorpus:
        name = f"data=local {'training' if split == 'train' else 'validation'} split of {self.data.path}"
        return TextCorpus(name, self.units(split), lambda unit: self.texts(unit, split), tok)


def _changes(files: list[Path]) -> list[tuple[int, int]]:
    """Each file's inode and inode change time: they move when its bytes are rewritten in place."""
    return [(p.stat().st_ino, p.stat().st_ctime_ns) for p in files]


def _listing(files: list[Path]) -> list[tuple[str, int, int]]:
    """What names a set of files in a cache key: each file's path, size and modification time."""
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
