"""Data: tokenizer, corpora (builtin stdlib, FineWeb-edu, local files), each rank's share of packed batches.

    data = data_config(cfg)               # the data section, typed and checked: what every function here takes
    check_inputs(data, seq_len, val_tokens)  # ConfigError early if shards or tokenizer are missing
    tok = build_tokenizer(data)           # load, or train and cache
    loader = build_train_loader(data, tok, batch_size, seq_len, rank, world_size, rows_per_step=R)  # its rows
    batches = val_batches(data, tok, batch_size, seq_len, num_tokens, rank, world_size)  # its block of one set

`python -m harness.prepare` downloads and builds what these need.
"""

from harness.data.checks import check_data, check_inputs
from harness.data.config import DataConfig, data_config
from harness.data.loader import TrainLoader, build_train_loader, val_batches
from harness.data.sources import build_tokenizer
from harness.data.tokenizer import Tokenizer

__all__ = [
    "DataConfig",
    "Tokenizer",
    "TrainLoader",
    "build_tokenizer",
    "build_train_loader",
    "check_data",
    "check_inputs",
    "data_config",
    "val_batches",
]
