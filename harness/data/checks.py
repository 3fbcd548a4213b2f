"""The preflight's data checks: everything about a run's data that can fail before it trains.

Owns the order of the checks (files present and readable, tokenizer no larger than the model's
vocabulary, a validation split that fills eval.val_tokens) and nothing else: sources, tokenizers and
loaders are their own modules', and this module only calls them. It sits above both
harness.data.sources and harness.data.loader so that neither imports the other's checks.
"""

from __future__ import annotations

from omegaconf import DictConfig

from harness.data.builtin import BuiltinSource
from harness.data.config import DataConfig, data_config
from harness.data.loader import check_val_rows
from harness.data.local import LocalSource
from harness.data.sources import build_tokenizer, open_source
from harness.data.tokenizer import Tokenizer


def check_inputs(data: DataConfig, seq_len: int, val_tokens: int) -> Tokenizer | None:
    """Raise ConfigError now, before any run directory or model exists, for every data problem that can
    be found without training: missing or unreadable files (source.check), a tokenizer larger than the
    model's vocabulary, and a validation split that cannot fill eval.val_tokens. That last check is
    exact for data=builtin (its tokenizer and tokenized split are small and cached, so the preflight
    builds them) and an upper bound for data=local (checked before any tokenizer is trained, from the
    text's length; harness.data.local). Ranks share the validation rows, so the world size does not
    change the need. Returns the tokenizer it loaded (none for data=local), for the run to reuse."""
    source = open_source(data)
    source.check()
    # harness.data.loader.val_batches: val_tokens // seq_len rows from the whole split, shared by ranks
    if isinstance(source, LocalSource):
        source.check_validation(max(1, val_tokens // seq_len), seq_len + 1, 1, val_tokens)
        return None
    tok = build_tokenizer(data)  # builtin: built and cached here if it is not yet; fineweb/climbmix: prepared
    if isinstance(source, BuiltinSource):
        check_val_rows(data, tok, seq_len, val_tokens)
    return tok


def check_data(cfg: DictConfig) -> None:
    """check_inputs for a composed config: its data section, model.sequence_len and eval.val_tokens
    (the form `python -m harness.prepare` and the data tests use)."""
    check_inputs(data_config(cfg), int(cfg.model.sequence_len), int(cfg.eval.val_tokens))
