"""The typed `data` section: one dataclass per source, converted once from the composed config.

Every key lives in configs/data/<source>.yaml (the single place defaults are written); these
classes name the keys, their types and the checks that need nothing but the config. They are also
the data section's schema: a key none of them names is refused (harness.run.spec.check_keys).
Nothing here reads a file; harness.data.checks does, before a run starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.config import to_dataclass
from harness.data.tokenizer import MIN_VOCAB_SIZE
from harness.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """What every source has (nanochat-recipe.md section 6 for the recipe's values)."""

    source: str
    vocab_size: int  # 32,768 = 2^15 including the 9 special tokens (the smoke's builtin: 4,096)
    seed: int  # the epochs' shuffle of units; the run's seed unless data.seed is set
    # The best-fit packer's buffer: ~1000 documents, as the reference's loader keeps (about 35% of
    # tokens are cropped at T = 2048 with it).
    buffer_size: int
    # Virtual streams that ranks divide among themselves, so every world size that divides them sees
    # the same global batches (harness.data.loader's docstring).
    streams: int
    tokenizer_max_chars: int  # the BPE trains on the first 2e9 characters of the training split
    tokenizer_doc_cap: int  # and sees at most 10,000 characters of each document


@dataclass(frozen=True)
class BuiltinData(DataConfig):
    """data=builtin: this Python's standard library as a corpus, for CPU smoke runs without downloads."""

    corpus_bytes: int
    val_fraction: float
    cache_dir: str


@dataclass(frozen=True)
class FinewebData(DataConfig):
    """data=fineweb (and climbmix): parquet shards downloaded from base_url (nanochat-recipe.md
    section 6: Karpathy's reshuffled FineWeb-edu, shards 0..1822)."""

    num_shards: int  # training shards 0..num_shards-1; PR #492's author had 100 and ran ~3 epochs
    val_shard: int  # 1822: the last shard is the validation split, as in the reference
    base_url: str
    dir: str
    download_workers: int
    download_retries: int
    download_backoff_s: float
    download_timeout_s: float


@dataclass(frozen=True)
class LocalData(DataConfig):
    """data=local: a file or folder of text, jsonl or parquet of one's own."""

    path: str | None
    val_path: str | None
    val_fraction: float
    text_field: str
    cache_dir: str


# fineweb and climbmix share one layout (harness/data/fineweb.py), so one dataclass.
SOURCES = {"builtin": BuiltinData, "fineweb": FinewebData, "climbmix": FinewebData, "local": LocalData}


def data_config(cfg: Mapping[str, Any]) -> DataConfig:
    """The `data` section of the full config (resolved or composed) as its source's dataclass, checked."""
    section = cfg["data"]
    source = section.get("source")
    if source not in SOURCES:
        raise ConfigError(f"data.source={source!r} is not one of: {', '.join(SOURCES)}")
    data = to_dataclass(SOURCES[source], section, "data")
    if data.vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(f"data.vocab_size={data.vocab_size} must be at least {MIN_VOCAB_SIZE} (bytes + specials)")
    for key in ("buffer_size", "streams", "tokenizer_max_chars", "tokenizer_doc_cap"):
        if getattr(data, key) <= 0:
            raise ConfigError(f"data.{key}={getattr(data, key)} must be positive")
    if isinstance(data, (BuiltinData, LocalData)) and not 0 < data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={data.val_fraction} must be between 0 and 1 (exclusive)")
    if isinstance(data, FinewebData):
        if not 1 <= data.num_shards <= data.val_shard:
            raise ConfigError(
                f"data.num_shards={data.num_shards} must be between 1 and {data.val_shard} "
                f"(training shards are 0..num_shards-1; shard {data.val_shard} is validation)"
            )
        if data.download_workers <= 0 or data.download_retries < 0:
            raise ConfigError(
                f"data.download_workers={data.download_workers} must be positive and "
                f"data.download_retries={data.download_retries} not negative"
            )
    return data
