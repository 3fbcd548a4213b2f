"""The console commands that `pip install` puts on PATH ([project.scripts] in pyproject.toml).

Each one is `python -m harness.<module>` under a name that shell completion can attach to:

    ablate-train     harness.train     Hydra overrides (a Hydra app: --help, --cfg, -m, -sc ...)
    ablate-inspect   harness.inspect   Hydra overrides, composed as ablate-train composes them
    ablate-plan      harness.plan      Hydra overrides, plus --flags for the estimate
    ablate-prepare   harness.prepare   Hydra overrides
    ablate-bench     harness.bench     a benchmark name, Hydra overrides, --flags
    ablate-evaluate  harness.evaluate  run_dir=PATH and KEY=VALUE overrides of that run's saved config
    ablate-report    harness.report    folders and --flags: it reads runs, it composes no config

The commands that compose a config complete its groups and keys in bash the way Hydra completes
ablate-train: `eval "$(ablate-inspect -sc install=bash)"` (Hydra's own completion script and
query, run on the harness's configs).
"""

from __future__ import annotations

import importlib
import sys


def train() -> None:
    # The completion ablate-train's Hydra app would give, without importing torch on every TAB.
    _with_completion("harness.train", "cli_main")


def inspect() -> None:
    _with_completion("harness.inspect", "main")


def plan() -> None:
    _with_completion("harness.plan", "main", exit_status=True)


def prepare() -> None:
    _with_completion("harness.prepare", "main")


def bench() -> None:
    _with_completion("harness.bench.cli", "main")  # its return value, the record (for scripts), is no status


def evaluate() -> None:
    from harness.evaluate import main

    main(sys.argv[1:])


def report() -> None:
    from harness.report import main

    sys.exit(main())


def _with_completion(module: str, function: str, exit_status: bool = False) -> None:
    """`-sc install=bash` / `-sc query=bash` as Hydra answers them for ablate-train; otherwise the
    command, imported only then (torch takes seconds to import; a TAB should not)."""
    argv = sys.argv[1:]
    if argv[:1] in (["-sc"], ["--shell-completion"]):
        complete(argv[1:])
        return
    status = getattr(importlib.import_module(module), function)()
    if exit_status:
        sys.exit(status)


def complete(arguments: list[str]) -> None:
    """Hydra's shell completion over configs/: install prints the script for this command's name,
    query reads COMP_LINE and prints the matching groups, options and keys."""
    import os

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from harness.cli import CONFIG_DIR, CONFIG_NAME

    if "COMP_LINE" in os.environ:
        # Only overrides complete: flags and their values, and a subcommand name, are not Hydra's.
        os.environ["COMP_LINE"] = _overrides_only(os.environ["COMP_LINE"])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        GlobalHydra.instance().hydra.shell_completion(config_name=CONFIG_NAME, overrides=arguments)


def _overrides_only(line: str) -> str:
    """COMP_LINE as Hydra's query parses it: the command's name, the finished words that are overrides
    (key=value), and the word being typed unless it is a flag. Flags, their values and a benchmark's
    name are not overrides, and Hydra's parser would stop at them."""
    words = line.split()
    typing = len(words) > 1 and not line.endswith(" ")
    finished, current = (words[1:-1], words[-1]) if typing else (words[1:], "")
    kept = [w for w in finished if "=" in w and not w.startswith("-")]
    if current and not current.startswith("-"):
        return " ".join([words[0], *kept, current])
    return " ".join([words[0], *kept]) + " "
