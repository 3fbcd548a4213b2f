"""The builtin offline corpus: the Python standard library's own source files on this machine.

No text ships with the repository and nothing is downloaded, so the smoke sweep and the tests run
anywhere Python runs. Files are taken in the order of a hash of their relative path (a fixed,
topic-mixed order) until `data.corpus_bytes` is reached; a file belongs to the validation split
when a second, independent hash of its path falls in the first `data.val_fraction` of its range,
so the splits are disjoint by file and stable across machines. Each file is cut into documents at blank lines
before a top-level or method-level `def`, `class` or decorator: whole files are mostly longer
than a CPU-sized context and packing would crop away most of them.

The tokenizer and the tokenized documents are cached under `data.cache_dir`, keyed by a hash of
the corpus text and everything else they depend on, so only the first run pays for them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from harness.data.cache import build_once, fingerprint
from harness.data.config import BuiltinData
from harness.data.corpus import TokenCorpus, held_out, stable_hash
from harness.data.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer

# Third-party packages and test suites are not this Python's standard library, or are generated
# or duplicated code; the corpus is the library's own modules.
SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib-dynload"}
# Leaves out generated data such as pydoc_data/topics.py (one 750 kB string literal).
MAX_FILE_BYTES = 256_000
# A document ends at a blank line before a top-level or method definition (or its decorator): units of
# one function or class, short like the web pages the recipe packs, rather than whole files.
DOCUMENT_BREAK = re.compile(r"\n(?:[ \t]*\n)+(?=(?:    )?(?:async def |def |class |@))")


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the standard library folder, with forward slashes
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=4)
def select_files(root: Path, corpus_bytes: int) -> tuple[SourceFile, ...]:
    """The corpus: .py files under `root` in path-hash order until `corpus_bytes` of text."""
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("config-")]
        for name in files:
            full = Path(folder, name)
            if name.endswith(".py") and not name.startswith("_sysconfigdata") and full.stat().st_size <= MAX_FILE_BYTES:
                paths.append(full.relative_to(root).as_posix())
    selected, total = [], 0
    for path in sorted(paths, key=lambda p: (stable_hash(f"order:{p}"), p)):
        if total >= corpus_bytes:
            break
        text = (root / path).read_text(encoding="utf-8", errors="replace")
        selected.append(SourceFile(path, text))
        total += len(text.encode())
    return tuple(selected)


def split_documents(text: str) -> list[str]:
    return [doc for doc in DOCUMENT_BREAK.split(text) if doc.strip()]


def content_digest(files: tuple[SourceFile, ...]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.path.encode() + b"\0" + f.text.encode() + b"\0")
    return digest.hexdigest()


class BuiltinSource:
    def __init__(self, data: BuiltinData):
        self.data = data
        self.cache_dir = Path(data.cache_dir)

    def files(self, split: str) -> list[SourceFile]:
        want_val = split == "val"
        return [
            f
            for f in select_files(stdlib_root(), self.data.corpus_bytes)
            if held_out(f.path, self.data.val_fraction) == want_val
        ]

    def documents(self, split: str) -> list[str]:
        return [doc for f in self.files(split) for doc in split_documents(f.text)]

    def check(self) -> None:
        """Nothing can be missing: the corpus is this Python's own library."""

    def tokenizer(self) -> Tokenizer:
        d = self.data
        key = fingerprint(
            "builtin-tokenizer",
            content_digest(tuple(self.files("train"))),
            d.vocab_size,
            SPLIT_PATTERN,
            SPECIAL_TOKENS,
            d.tokenizer_doc_cap,
            d.tokenizer_max_chars,
        )

        def train(directory: Path) -> None:
            tok = Tokenizer.train(self.documents("train"), d.vocab_size, d.tokenizer_doc_cap, d.tokenizer_max_chars)
            tok.save(directory)

        return Tokenizer.load(build_once(self.cache_dir / f"tokenizer-{key}", train))

    def corpus(self, split: str, tok: Tokenizer) -> TokenCorpus:
        all_files = select_files(stdlib_root(), self.data.corpus_bytes)
        key = fingerprint("builtin-documents", content_digest(all_files), self.data.val_fraction, tok.fingerprint())

        def tokenize(directory: Path) -> None:
            for name in ("train", "val"):
                TokenCorpus.save(directory, name, tok.encode_batch(self.documents(name), prepend_bos=True))

        directory = build_once(self.cache_dir / f"documents-{key}", tokenize)
        return TokenCorpus.load(f"data=builtin {split} split", directory, split)
