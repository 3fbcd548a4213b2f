"""The recipe's byte-level BPE tokenizer: training, saving, loading, encoding.

Built on the `tokenizers` library (Rust), never a Python BPE loop. Text is first split with the
GPT-4-style pattern (numbers limited to 1-2 digits), each piece is mapped byte by byte to printable
characters (GPT-2's byte-level alphabet, so every byte sequence is representable) and BPE merges
run inside the pieces. Nine special tokens are reserved; `<|bos|>` starts every document.

Special-token strings inside ordinary text are encoded as ordinary text: a document can never
inject a control token, and the byte lengths of an encoding always sum to the text's UTF-8 length.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from tqdm import tqdm

from harness.errors import ConfigError

# nanochat-recipe.md section 6: GPT-4's split pattern with numbers cut at 1-2 digits (GPT-4 allows 3),
# which the reference chose so that small vocabularies spend fewer merges on numbers.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# nanochat-recipe.md section 6: the 9 special tokens, inside the 32,768-token vocabulary. Only <|bos|>
# occurs in pretraining (every document and every row starts with it); the others are chat markup
# reserved so that a pretrained checkpoint keeps the reference's token ids.
SPECIAL_TOKENS = (
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
)
BOS = "<|bos|>"
# Every byte is a token before any merge, so the smallest vocabulary is 256 + the special tokens.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
# The files of a saved tokenizer: the BPE itself, each token's length in UTF-8 bytes (bits per byte
# divides by them; special tokens count 0 bytes, nanochat-recipe.md section 7) and what trained it.
TOKENIZER_FILE = "tokenizer.json"
TOKEN_BYTES_FILE = "token_bytes.pt"
META_FILE = "meta.json"


class Tokenizer:
    """A trained byte-level BPE tokenizer with the recipe's special tokens."""

    def __init__(self, hf: HFTokenizer):
        hf.encode_special_tokens = True  # literal "<|bos|>" in text is text, not a control token
        self._hf = hf
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)
        self.bos_id: int = self.token_id(BOS)
        self._token_bytes: torch.Tensor | None = None

    # training and storage -------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, doc_cap: int, max_chars: int) -> Tokenizer:
        """Train on `texts`, each cropped to `doc_cap` characters, stopping after `max_chars` in all."""
        if vocab_size < MIN_VOCAB_SIZE:
            raise ConfigError(
                f"data.vocab_size={vocab_size} is too small; it must be at least {MIN_VOCAB_SIZE} "
                f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
            )
        hf = HFTokenizer(models.BPE(unk_token=None, fuse_unk=False))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=0,
            show_progress=True,  # the library's bars while it counts pairs and merges (on a terminal)
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=list(SPECIAL_TOKENS),
        )
        # Reading the text is most of a first run's wait (FineWeb: 2e9 characters from parquet).
        with tqdm(desc=f"tokenizer {vocab_size}: text read", unit="char", unit_scale=True, mininterval=1.0) as bar:
            hf.train_from_iterator(_capped(texts, doc_cap, max_chars, bar.update), trainer)
        return cls(hf)

    def save(self, directory: Path) -> None:
        """Write tokenizer.json and each token's UTF-8 byte length (token_bytes.pt) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        self._hf.save(str(directory / TOKENIZER_FILE))
        torch.save(self.token_bytes(), directory / TOKEN_BYTES_FILE)

    @classmethod
    def load(cls, directory: Path) -> Tokenizer:
        tok = cls(HFTokenizer.from_file(str(directory / TOKENIZER_FILE)))
        token_bytes = torch.load(directory / TOKEN_BYTES_FILE, weights_only=True)
        if token_bytes.shape != (tok.vocab_size,):
            raise ValueError(f"{directory / TOKEN_BYTES_FILE} does not match {TOKENIZER_FILE}; delete {directory}")
        tok._token_bytes = token_bytes
        return tok

    # encoding -------------------------------------------------------------------------------
    def encode(self, text: str, prepend_bos: bool = False) -> list[int]:
        ids = self._hf.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if prepend_bos else ids

    def encode_batch(self, texts: Sequence[str], prepend_bos: bool = False) -> list[list[int]]:
        """Encode many texts in parallel (the Rust side releases the GIL and uses every core)."""
        encodings = self._hf.encode_batch_fast(list(texts), add_special_tokens=False)
        if prepend_bos:
            return [[self.bos_id, *e.ids] for e in encodings]
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=False)

    def token_id(self, special_name: str) -> int:
        if special_name not in SPECIAL_TOKENS:
            raise KeyError(f"{special_name!r} is not a special token; allowed: {', '.join(SPECIAL_TOKENS)}")
        token = self._hf.token_to_id(special_name)
        if token is None:
            raise KeyError(f"{special_name!r} is missing from this tokenizer's vocabulary")
        return token

    def token_bytes(self) -> torch.Tensor:
        """Each token's UTF-8 byte length as int32 of shape (vocab_size,); special tokens count 0."""
        if self._token_bytes is None:
            # A byte-level token is spelled in the 256-character byte alphabet, one character per byte.
            lengths = torch.zeros(self.vocab_size, dtype=torch.int32)
            specials = set(SPECIAL_TOKENS)
            for token, index in self._hf.get_vocab(with_added_tokens=True).items():
                if token not in specials:
                    lengths[index] = len(token)
            self._token_bytes = lengths
        return self._token_bytes

    def fingerprint(self) -> str:
        """The serialized tokenizer, for cache keys of anything derived from its encodings."""
        return self._hf.to_str()

    def digest(self) -> str:
        """A short hash of the serialized tokenizer: checkpoints record it, resume and evaluation check it."""
        return hashlib.sha256(self.fingerprint().encode()).hexdigest()[:16]


def _capped(texts: Iterable[str], doc_cap: int, max_chars: int, counted=lambda n: None) -> Iterator[str]:
    total = 0
    for text in texts:
        text = text[:doc_cap]
        yield text
        total += len(text)
        counted(len(text))
        if total >= max_chars:
            return


def write_meta(directory: Path, **facts) -> None:
    """A small record of how a tokenizer was trained, for `prepare`'s summary."""
    (directory / META_FILE).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")


def read_meta(directory: Path) -> dict:
    path = directory / META_FILE
    return json.loads(path.read_text()) if path.exists() else {}
