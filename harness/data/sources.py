"""Which source backs `data=...`, and the source's tokenizer checked against the model's vocabulary.

Takes the typed data section (harness.data.config.DataConfig), never the composed config; the
preflight's data check that also needs the model's and eval's numbers is harness.data.checks.
"""

from __future__ import annotations

from harness.data.builtin import BuiltinSource
from harness.data.config import BuiltinData, DataConfig, FinewebData
from harness.data.fineweb import FinewebSource
from harness.data.local import LocalSource
from harness.data.tokenizer import Tokenizer
from harness.errors import ConfigError

Source = BuiltinSource | FinewebSource | LocalSource


def open_source(data: DataConfig) -> Source:
    if isinstance(data, BuiltinData):
        return BuiltinSource(data)
    if isinstance(data, FinewebData):
        return FinewebSource(data)
    return LocalSource(data)


def build_tokenizer(data: DataConfig) -> Tokenizer:
    """The source's tokenizer: loaded if prepared or cached, else trained (builtin, local) and cached."""
    tok = open_source(data).tokenizer()
    if tok.vocab_size > data.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary, data.vocab_size={data.vocab_size}, "
            "is smaller: token ids past it have no embedding (set data.vocab_size to the tokenizer's size)"
        )
    return tok
