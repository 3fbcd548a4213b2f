"""Tokenizer speed: training time and encoding throughput in MB of UTF-8 text per second.

    python -m harness.data.bench_tokenizer                         # builtin stdlib corpus, vocab 32768
    python -m harness.data.bench_tokenizer --vocab-size 4096
    python -m harness.data.bench_tokenizer --parquet ~/.cache/ablate/fineweb/shard_00000.parquet

Trains a fresh tokenizer on the texts (nothing is cached), then encodes all of them the way the
loader does (`encode_batch` with BOS, every core) and one text per call, best of --repeats.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pyarrow.parquet as pq

from harness.data.builtin import select_files, split_documents, stdlib_root
from harness.data.tokenizer import Tokenizer

DOC_CAP = 10_000


def corpus_texts(parquet: Path | None, megabytes: float) -> list[str]:
    if parquet is None:
        files = select_files(stdlib_root(), int(megabytes * 1e6))
        return [doc for f in files for doc in split_documents(f.text)]
    texts, total = [], 0
    for batch in pq.ParquetFile(parquet).iter_batches(columns=["text"]):
        for text in batch.column(0).to_pylist():
            texts.append(text)
            total += len(text.encode())
            if total >= megabytes * 1e6:
                return texts
    return texts


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m harness.data.bench_tokenizer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--mb", type=float, default=4.0, help="megabytes of text to use (default 4)")
    parser.add_argument("--parquet", type=Path, default=None, help="a parquet file with a text column")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    texts = corpus_texts(args.parquet, args.mb)
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    source = args.parquet or f"stdlib at {stdlib_root()}"
    print(f"text: {megabytes:.2f} MB in {len(texts)} documents from {source}; {os.cpu_count()} CPU cores")

    start = time.perf_counter()
    tok = Tokenizer.train(texts, args.vocab_size, DOC_CAP, 2_000_000_000)
    print(f"train: vocab {tok.vocab_size} in {time.perf_counter() - start:.2f} s")

    tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    batch_s = best_seconds(lambda: tok.encode_batch(texts, prepend_bos=True), args.repeats)
    single_s = best_seconds(lambda: [tok.encode(t) for t in texts], args.repeats)
    print(
        f"encode_batch: {megabytes / batch_s:.2f} MB/s ({tokens / batch_s / 1e6:.2f} M tokens/s, "
        f"{megabytes * 1e6 / tokens:.2f} bytes/token)"
    )
    print(f"encode one at a time: {megabytes / single_s:.2f} MB/s")


if __name__ == "__main__":
    main()
