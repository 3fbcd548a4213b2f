"""Training-loader throughput of one rank: packed tokens per second, tokenizing on the fly.

    python -m harness.data.bench_loader                          # rank 0 of 1, 2 and 4
    python -m harness.data.bench_loader --world-sizes 1 8 --mb 16

Writes the stdlib corpus (the builtin source's documents) as parquet row groups into a temporary
`data=local` folder, so every unit is read and tokenized while the loader runs, as with FineWeb.
For each world size it builds rank 0's loader and times it from construction (the first units
are tokenized then) until it has served its first optimizer step of rows (the start-up), then
times --steps more steps (the steady rate), best of --repeats each. Only
rank 0 runs: the number is what one rank's loader delivers while the trainer waits, not a node's
total.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harness.cli import compose
from harness.config import train_config
from harness.data import DataConfig, build_tokenizer, build_train_loader, data_config
from harness.data.builtin import select_files, split_documents, stdlib_root

ROW_GROUP_DOCUMENTS = 200  # a unit of a few hundred documents, like a FineWeb row group's ~1000


def write_corpus(folder: Path, megabytes: float) -> int:
    texts = [doc for f in select_files(stdlib_root(), int(megabytes * 1e6)) for doc in split_documents(f.text)]
    pq.write_table(pa.table({"text": texts}), folder / "corpus.parquet", row_group_size=ROW_GROUP_DOCUMENTS)
    return len(texts)


def time_loader(
    data: DataConfig, tok, batch_size: int, seq_len: int, world_size: int, steps: int, accum: int, rows_per_step: int
) -> tuple:
    """Seconds for rank 0 of `world_size` to build its loader and serve its first step of rows, and
    seconds for the next `steps` steps."""
    start = time.perf_counter()
    loader = build_train_loader(data, tok, batch_size, seq_len, 0, world_size, rows_per_step=rows_per_step)
    for _ in range(accum):
        next(loader)
    first = time.perf_counter()
    for _ in range(steps * accum):
        next(loader)
    return first - start, time.perf_counter() - first


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m harness.data.bench_loader",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--mb", type=float, default=8.0, help="megabytes of text in the corpus (default 8)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch (default 8)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--rows-per-step", type=int, default=32, help="rows of one global batch (default 32)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.streams=8")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "corpus"
        folder.mkdir()
        documents = write_corpus(folder, args.mb)
        os.environ["ABLATE_DATA_DIR"] = str(Path(tmp) / "cache")
        cfg = compose(
            [
                "data=local",
                f"data.path={folder}",
                f"data.vocab_size={args.vocab_size}",
                f"train.total_batch_tokens={args.rows_per_step * args.seq_len}",
                *args.overrides,
            ]
        )
        data = data_config(cfg)
        rows_per_step = train_config(cfg).total_batch_tokens // args.seq_len  # the batch as resolved
        tok = build_tokenizer(data)
        print(f"corpus: {args.mb} MB, {documents} documents; {os.cpu_count()} CPU cores; {' '.join(args.overrides)}")
        for world_size in args.world_sizes:
            accum = args.rows_per_step // (args.batch_size * world_size)
            tokens = args.steps * accum * args.batch_size * args.seq_len
            timings = [
                time_loader(data, tok, args.batch_size, args.seq_len, world_size, args.steps, accum, rows_per_step)
                for _ in range(args.repeats)
            ]
            startup, seconds = min(t[0] for t in timings), min(t[1] for t in timings)
            print(
                f"rank 0 of {world_size}: {tokens / seconds / 1e3:,.0f} k tokens/s over {args.steps} steps of "
                f"{accum} x {args.batch_size} x {args.seq_len} ({seconds:.2f} s), first step after {startup:.2f} s"
            )


if __name__ == "__main__":
    main()
