"""Which source backs `data=...`, and the checks and tokenizers the training entry point asks for."""

from __future__ import annotations

from omegaconf import DictConfig

from harness.data.builtin import BuiltinSource
from harness.data.config import BuiltinData, FinewebData, data_config
from harness.data.fineweb import FinewebSource
from harness.data.local import LocalSource
from harness.data.tokenizer import Tokenizer
from harness.errors import ConfigError

Source = BuiltinSource | FinewebSource | LocalSource


def open_source(cfg: DictConfig) -> Source:
    data = data_config(cfg)
    if isinstance(data, BuiltinData):
        return BuiltinSource(data)
    if isinstance(data, FinewebData):
        return FinewebSource(data)
    return LocalSource(data)


def check_data(cfg: DictConfig, world_size: int = 1) -> None:
    """Raise ConfigError now, before any model is built, if the data or its tokenizer is missing, or
    (data=local) the validation split cannot fill eval.val_tokens (ranks share its rows: `world_size`
    does not change the need)."""
    source = open_source(cfg)
    source.check()
    if isinstance(source, LocalSource):
        # harness.data.loader.val_batches: eval.val_tokens // sequence_len rows from the whole split, shared by ranks
        seq_len, val_tokens = cfg.model.sequence_len, cfg.eval.val_tokens
        source.check_validation(max(1, val_tokens // seq_len), seq_len + 1, 1, val_tokens)


def build_tokenizer(cfg: DictConfig) -> Tokenizer:
    """The source's tokenizer: loaded if prepared or cached, else trained (builtin, local) and cached."""
    data = data_config(cfg)
    tok = open_source(cfg).tokenizer()
    if tok.vocab_size > data.vocab_size:
        raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens but data.vocab_size={data.vocab_size}")
    return tok
