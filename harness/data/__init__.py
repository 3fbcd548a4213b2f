"""Data: tokenizer, corpora (builtin stdlib, FineWeb-edu, local files), each rank's share of packed batches.

    check_data(cfg)                       # ConfigError early if shards or tokenizer are missing
    tok = build_tokenizer(cfg)            # load, or train and cache
    loader = build_train_loader(cfg, tok, batch_size, seq_len, rank, world_size, state=None)  # its rows of each step
    batches = val_batches(cfg, tok, batch_size, seq_len, num_tokens, rank, world_size)  # its block of one set

`python -m harness.prepare` downloads and builds what these need.
"""

from harness.data.loader import TrainLoader, build_train_loader, val_batches
from harness.data.sources import build_tokenizer, check_data
from harness.data.tokenizer import Tokenizer

__all__ = ["Tokenizer", "TrainLoader", "build_tokenizer", "build_train_loader", "check_data", "val_batches"]
