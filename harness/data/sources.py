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
    """Raise ConfigError now, before any run directory or model exists, for every data problem that can
    be found without training: missing or unreadable files (source.check), a tokenizer larger than the
    model's vocabulary, and a validation split that cannot fill eval.val_tokens. That last check is
    exact for data=builtin (its tokenizer and tokenized split are small and cached, so the preflight
    builds them) and an upper bound for data=local (checked before any tokenizer is trained, from the
    text's length; harness.data.local). Ranks share the validation rows: `world_size` does not change
    the need."""
    source = open_source(cfg)
    source.check()
    # harness.data.loader.val_batches: eval.val_tokens // sequence_len rows from the whole split, shared by ranks
    seq_len, val_tokens = cfg.model.sequence_len, cfg.eval.val_tokens
    if isinstance(source, LocalSource):
        source.check_validation(max(1, val_tokens // seq_len), seq_len + 1, 1, val_tokens)
    else:  # builtin: built and cached here if it is not yet; fineweb/climbmix: prepared, loaded
        tok = build_tokenizer(cfg)
        if isinstance(source, BuiltinSource):
            from harness.data.loader import check_val_rows

            check_val_rows(cfg, tok, seq_len, val_tokens)


def build_tokenizer(cfg: DictConfig) -> Tokenizer:
    """The source's tokenizer: loaded if prepared or cached, else trained (builtin, local) and cached."""
    data = data_config(cfg)
    tok = open_source(cfg).tokenizer()
    if tok.vocab_size > data.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary, data.vocab_size={data.vocab_size}, "
            "is smaller: token ids past it have no embedding (set data.vocab_size to the tokenizer's size)"
        )
    return tok
