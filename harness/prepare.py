"""`python -m harness.prepare [OVERRIDE ...]`: fetch and build, ahead of training, what it reads.

The overrides are the training command's (same config groups, same composition), so a prepare
command and a training command with the same overrides agree on every path and size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import DictConfig

from harness.cli import CONFIG_DIR, compose, exit_on_config_error
from harness.data.builtin import BuiltinSource, select_files, stdlib_root
from harness.data.config import DataConfig, data_config
from harness.data.fineweb import DownloadError, FinewebSource
from harness.data.sources import open_source

COMPONENTS = ("data", "eval")

DESCRIPTION = """\
Download and build what training reads, under paths.data_dir (default $ABLATE_DATA_DIR, else
~/.cache/ablate). Every step skips what is already there, so re-running resumes; two prepares at
once are safe (file locks). Finishes with a summary of what is on disk.

Components, prepared when named on the command line:
  data=fineweb  download training shards 0..data.num_shards-1 and the validation shard
                data.val_shard (1822, the last) into data.dir, data.download_workers at a
                time; then train the data.vocab_size BPE on the first data.tokenizer_max_chars
                characters of the training shards unless data.dir/tokenizer_<vocab_size>
                exists. Training with data.num_shards=N reads exactly shards 0..N-1, so
                prepare the same N (shards beyond it stay on disk unused).
  data=climbmix the same for ClimbMix (nanochat 92d63d4's data; validation shard 6542) into
                its own data.dir, with its own tokenizer trained on its shards.
  data=builtin  train the tokenizer on this Python's standard library and cache the tokenized
                documents in data.cache_dir (seconds; training would do it on first use anyway)
  data=local    train and cache the tokenizer for data.path
  eval=core     download and unpack the CORE bundle (eval.core.bundle_url) into eval.core.bundle_dir

A component is named by any override in its group: data=..., data.KEY=..., eval=..., eval.KEY=....
With none named, prepare everything the composed config needs: its data source, and the CORE
bundle when eval.core.enabled is true (it is with the default eval=core). experiment=... and the
other groups only change what the composed config needs.
"""

EXAMPLES = """\
examples:
  python -m harness.prepare                                   # default config: fineweb (40 shards) + CORE bundle
  python -m harness.prepare data=fineweb data.num_shards=100  # data only; ~10 GB
  python -m harness.prepare eval=core                         # the CORE bundle only
  python -m harness.prepare experiment=smoke                  # the builtin tokenizer and cache
  ABLATE_DATA_DIR=/scratch/ablate python -m harness.prepare data=fineweb

exit status: 0 done, 1 a download failed after its retries (re-run to resume), 2 a config mistake.
"""


def options_text() -> str:
    """Each data source's keys with their defaults and meaning, straight from configs/data/*.yaml."""
    blocks = ["data options (data.KEY=VALUE), as in configs/data/<source>.yaml:"]
    for path in sorted((CONFIG_DIR / "data").glob("*.yaml")):
        lines = path.read_text().rstrip().splitlines()
        blocks.append(f"  data={path.stem}:")
        blocks.extend(f"    {line}" for line in lines)
    return "\n".join(blocks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.prepare",
        description=DESCRIPTION,
        epilog=f"{options_text()}\n\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="OVERRIDE",
        help="Hydra overrides as for python -m harness.train, e.g. data=fineweb data.num_shards=8",
    )
    return parser


def named_components(overrides: list[str]) -> set[str]:
    named = set()
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        group = key.split(".", 1)[0].split("/", 1)[0]
        if group in COMPONENTS:
            named.add(group)
    return named


def prepare(cfg: DictConfig, components: set[str]) -> list[str]:
    """Prepare `components` (a subset of COMPONENTS) for `cfg`; return the summary lines."""
    lines = []
    if "data" in components:
        lines += prepare_data(data_config(cfg))
    if "eval" in components:
        lines += prepare_eval(cfg)
    return lines


def prepare_data(data: DataConfig) -> list[str]:
    source = open_source(data)
    if isinstance(source, FinewebSource):
        return source.prepare()
    source.check()
    tok = source.tokenizer()
    lines = [f"{data.source}: tokenizer with {tok.vocab_size} tokens in {source.cache_dir}"]
    if isinstance(source, BuiltinSource):
        lines.append(builtin_summary(source, tok))
    return lines


def builtin_summary(source: BuiltinSource, tok) -> str:
    files = select_files(stdlib_root(), source.data.corpus_bytes)
    size_mb = sum(len(f.text.encode()) for f in files) / 1e6
    parts = []
    for split in ("train", "val"):
        corpus = source.corpus(split, tok)
        tokens = sum(len(corpus.read(i)[0]) for i in range(corpus.num_units))
        parts.append(f"{split} {len(source.files(split))} files / {corpus.num_units} documents / {tokens:,} tokens")
    return f"builtin: {len(files)} stdlib files, {size_mb:.1f} MB from {stdlib_root()}; " + "; ".join(parts)


def prepare_eval(cfg: DictConfig) -> list[str]:
    if not cfg.eval.core.enabled:
        return ["eval: CORE is disabled (eval.core.enabled=false); nothing to prepare"]
    from harness.eval.core import prepare_bundle  # the CORE owner's code; imported only when needed

    prepare_bundle(cfg)
    return [f"eval: CORE bundle in {Path(cfg.eval.core.bundle_dir)}"]


@exit_on_config_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cfg = compose(args.overrides)
    components = named_components(args.overrides) or set(COMPONENTS)
    try:
        lines = prepare(cfg, components)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
