"""How often one training process converts the data section and loads the tokenizer (issue 25).

    python experiments/code_structure/calls.py            # from the root of the tree to measure

Runs `python -m harness.train experiment=smoke` for 2 steps (one run, a temporary runs folder) under
cProfile, in this process, with the code of the current directory, and prints the call counts of
the data section's conversion (harness.data.config.data_config) and of the tokenizer's loading
(the source's `tokenizer()`: load if cached or prepared, else train). Counting with cProfile needs
no patching, so the same script measures a tree from before and after a change.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile

COUNTED = {
    ("config.py", "data_config"): "data section converted (data_config)",
    ("builtin.py", "tokenizer"): "tokenizer loaded (BuiltinSource.tokenizer)",
    ("tokenizer.py", "load"): "tokenizer files read (Tokenizer.load)",
}


def main() -> None:
    sys.path.insert(0, ".")
    from harness.train import cli_main

    with tempfile.TemporaryDirectory() as runs:
        sys.argv = ["harness.train", "experiment=smoke", "train.num_iterations=2", f"paths.runs_dir={runs}"]
        profile = cProfile.Profile()
        try:
            profile.runcall(cli_main)
        except SystemExit as e:
            if e.code not in (0, None):
                raise
    stats = pstats.Stats(profile).stats
    for (filename, _, name), (_, calls, *_rest) in sorted(stats.items()):
        for (tail, wanted), label in COUNTED.items():
            if filename.endswith(tail) and name == wanted and "/harness/data/" in filename:
                print(f"{label}: {calls}")


if __name__ == "__main__":
    main()
