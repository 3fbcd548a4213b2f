"""Your own text: a file or folder of .txt, .jsonl (field data.text_field) and .parquet files.

`data.path` is read recursively (sorted). Units are parquet row groups and whole .txt/.jsonl
files; a .txt file is one document, a .jsonl line is one. The validation split is every file
under `data.val_path` when that is set; otherwise each document whose (file, row group, index)
hashes into the first `data.val_fraction` is held out, wherever it sits. The tokenizer is trained
on the training split like the builtin one and cached under `data.cache_dir`, keyed by the files'
names, sizes and modification times (not their content, which may be large).
"""

from __future__ import annotations

from pathlib import Path

from harness.data.cache import build_once, fingerprint
from harness.data.config import LocalData
from harness.data.corpus import TextCorpus, held_out
from harness.data.files import TEXT_SUFFIXES, find_files, parquet_row_groups, read_jsonl, read_row_group, read_txt
from harness.data.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer
from harness.errors import ConfigError

Unit = tuple[Path, int]  # (file, parquet row group; 0 for .txt and .jsonl)


class LocalSource:
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
        self._folder("path")
        if self.data.val_path:
            self._folder("val_path")

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
        if path.suffix == ".parquet":
            texts = read_row_group(path, group, self.data.text_field)
        elif path.suffix == ".jsonl":
            texts = read_jsonl(path, self.data.text_field)
        else:
            texts = read_txt(path)
        if self.data.val_path:
            return texts
        root = Path(self.data.path).expanduser()
        name = path.name if root.is_file() else path.relative_to(root).as_posix()
        want_val = split == "val"
        return [t for i, t in enumerate(texts) if held_out(f"{name}:{group}:{i}", self.data.val_fraction) == want_val]

    def tokenizer(self) -> Tokenizer:
        d = self.data
        listing = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files("train") + self.files("val")]
        key = fingerprint(
            "local-tokenizer",
            listing,
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
