"""This project's CORE scorer against the reference's (nanochat 348fbb3), on one model, in one process.

    # a bundle of the CORE tasks whose files llm-foundry's repository holds (nothing of it is committed)
    python experiments/rope_mlp_lr/cpu_vs_reference/core_bench.py bundle <llm-foundry git dir> /tmp/core_bench_bundle
    OMP_NUM_THREADS=1 python experiments/rope_mlp_lr/cpu_vs_reference/core_bench.py run \
        /tmp/nanochat-348fbb3 /tmp/core_bench_bundle --out core_bench_after.json
    # no timing: span-only against full logits on the same hidden states (loss differences, decisions)
    OMP_NUM_THREADS=1 python experiments/rope_mlp_lr/cpu_vs_reference/core_bench.py run \
        /tmp/nanochat-348fbb3 /tmp/core_bench_bundle --rounding-only

Rows are cropped to their last --max-seq-len tokens (256) on both sides: full-length rows (6 M
positions, up to 5,745 tokens) take about 17 minutes a side on a 2-core machine and at 32 rows
would build dense sliding-window masks of over 10 GB.

One model scores the same examples both ways: this project's GPT (random init with matrices drawn
large enough that options differ), the builtin data's tokenizer (its vocabulary sets the model's).
  reference  nanochat.core_eval.evaluate_task per task, on the examples base_eval.py would give it
             (the file's lines shuffled with Random(1337), the first max_per_task), its tokenizer
             interface (`tok(texts, prepend=bos)`, `get_bos_token_id()`) backed by the same tokenizer;
  project    harness.eval.core.evaluate_core on the bundle, at each --batch-sizes.
A block is one task: each side scores the whole task, in an order that rotates from block to block
(ref, p8, p32 / p32, p8, ref / ...), so drift of the shared machine cancels. The result per batch
size is project / reference time with Fieller's 95% interval paired by block (its point estimate is
the ratio of total times over the bundle). Packing in a block is within the task (evaluate_core on
a one-task bundle), as in a whole-bundle call for everything but the batches at task boundaries.
Every example's decision (right or wrong) is recorded on every side and every round and compared:
the mismatch count must be 0.

Nothing of nanochat is copied here: it is imported from the checkout given on the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
PROGRAM = ("python", "experiments/rope_mlp_lr/cpu_vs_reference/core_bench.py")  # its command line, in the records
sys.path.insert(0, str(REPO))

import harness.eval.core as core  # noqa: E402
from harness.bench.common import provenance_fields  # noqa: E402
from harness.eval.core_bundle import Bundle, load_bundle  # noqa: E402
from harness.results.stats import ratio_compare  # noqa: E402
from models.gpt import GPT, GPTConfig  # noqa: E402

# The CORE tasks (DCLM's core set, nanochat's core.yaml) whose data llm-foundry's scripts/eval/local_data
# holds: label, file, type, shots, continuation delimiter, random baseline (percent). hellaswag (0- and
# 10-shot), squad and coqa are CORE tasks too, but their files are not in that repository.
FOUNDRY_DATA = "scripts/eval/local_data"
CORE_TASKS = [
    ("jeopardy", "world_knowledge/jeopardy_all.jsonl", "language_modeling", 10, "\nAnswer: ", 0),
    ("bigbench_qa_wikidata", "world_knowledge/bigbench_qa_wikidata.jsonl", "language_modeling", 10, " ", 0),
    ("arc_easy", "world_knowledge/arc_easy.jsonl", "multiple_choice", 10, "\nAnswer: ", 25),
    ("arc_challenge", "world_knowledge/arc_challenge.jsonl", "multiple_choice", 10, "\nAnswer: ", 25),
    ("copa", "commonsense_reasoning/copa.jsonl", "multiple_choice", 0, " ", 50),
    ("commonsense_qa", "commonsense_reasoning/commonsense_qa.jsonl", "multiple_choice", 10, " ", 20),
    ("piqa", "commonsense_reasoning/piqa.jsonl", "multiple_choice", 10, "\nAnswer: ", 50),
    ("openbook_qa", "commonsense_reasoning/openbook_qa.jsonl", "multiple_choice", 0, " ", 25),
    ("lambada_openai", "language_understanding/lambada_openai.jsonl", "language_modeling", 0, " ", 0),
    ("winograd", "language_understanding/winograd_wsc.jsonl", "schema", 0, " ", 50),
    ("winogrande", "language_understanding/winogrande.jsonl", "schema", 0, " ", 50),
    (
        "bigbench_dyck_languages",
        "symbolic_problem_solving/bigbench_dyck_languages.jsonl",
        "language_modeling",
        10,
        " ",
        0,
    ),
    ("agi_eval_lsat_ar", "symbolic_problem_solving/agi_eval_lsat_ar.jsonl", "multiple_choice", 3, " ", 25),
    (
        "bigbench_cs_algorithms",
        "symbolic_problem_solving/bigbench_cs_algorithms.jsonl",
        "language_modeling",
        10,
        " ",
        0,
    ),
    ("bigbench_operators", "symbolic_problem_solving/bigbench_operators.jsonl", "language_modeling", 10, " ", 0),
    (
        "bigbench_repeat_copy_logic",
        "symbolic_problem_solving/bigbench_repeat_copy_logic.jsonl",
        "language_modeling",
        10,
        " ",
        0,
    ),
    ("boolq", "reading_comprehension/boolq.jsonl", "multiple_choice", 10, "\nAnswer: ", 62),
    (
        "bigbench_language_identification",
        "language_understanding/bigbench_language_identification.jsonl",
        "multiple_choice",
        10,
        " ",
        25,
    ),
]


# the bundle ----------------------------------------------------------------------------------
def build_bundle(foundry_git_dir: Path, out: Path) -> Path:
    """core.yaml, eval_meta_data.csv and eval_data/ in the recipe's layout, from the repository's HEAD."""
    import yaml

    specs = []
    for label, path, task_type, shots, delimiter, _baseline in CORE_TASKS:
        blob = subprocess.run(
            ["git", f"--git-dir={foundry_git_dir}", "show", f"HEAD:{FOUNDRY_DATA}/{path}"],
            check=True,
            capture_output=True,
        ).stdout
        target = out / "eval_data" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
        specs.append(
            {
                "label": label,
                "dataset_uri": path,
                "num_fewshot": [shots],
                "icl_task_type": task_type,
                "continuation_delimiter": delimiter,
            }
        )
    (out / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": specs}, sort_keys=False))
    with open(out / "eval_meta_data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Eval Task", "Random baseline"])
        writer.writerows((label, baseline) for label, *_, baseline in CORE_TASKS)
    load_bundle(out)  # the harness's own checks
    return out


# the model and the tokenizer -----------------------------------------------------------------
def builtin_tokenizer():
    from omegaconf import OmegaConf

    from harness.cli import compose
    from harness.data import build_tokenizer, data_config

    return build_tokenizer(data_config(OmegaConf.to_container(compose(["data=builtin"]), resolve=True)))


def build_model(vocab: int, depth: int, dim: int, seed: int) -> GPT:
    """Our GPT, random weights; the block matrices drawn at std 0.05 so that options' losses differ
    (the recipe's zero output projections would make every block the identity)."""
    torch.manual_seed(seed)
    heads = dim // 64
    model = GPT(GPTConfig(vocab_size=vocab, n_layer=depth, n_embd=dim, n_head=heads, n_kv_head=heads))
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "wte" not in name and "value_embeds" not in name:
                p.normal_(0.0, 0.05)
    return model.eval()


class ReferenceTokenizer:
    """The interface nanochat.core_eval calls, backed by our tokenizer (same ids for both sides)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def get_bos_token_id(self) -> int:
        return self.tokenizer.bos_id

    def __call__(self, texts, prepend=None):
        ids = self.tokenizer.encode_batch(list(texts)) if isinstance(texts, list) else [self.tokenizer.encode(texts)]
        if prepend is not None:
            ids = [[prepend, *row] for row in ids]
        return ids if isinstance(texts, list) else ids[0]


# the two scorers -----------------------------------------------------------------------------
def reference_data(task, max_per_task: int) -> list[dict]:
    """What base_eval.py hands evaluate_task: every line, shuffled with Random(1337), cropped."""
    with open(task.data_path, encoding="utf-8") as f:
        data = [json.loads(line.strip()) for line in f]
    random.Random(1337).shuffle(data)
    return data[:max_per_task] if max_per_task > 0 else data


def recording(function, decisions: dict, key_of):
    """`function` unchanged, its result stored under key_of(its arguments)."""

    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        decisions[key_of(*args, **kwargs)] = bool(result)
        return result

    return wrapper


class SharedTrunk:
    """The model's hidden states computed once per batch, unembedded two ways: at the span positions
    only (`logits_at`, what score_batch asks of a GPT) and at every position (`__call__`, the full
    logits score_batch indexes for any other callable)."""

    def __init__(self, model: GPT):
        self.model, self.inputs, self.hidden = model, None, None

    def states(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.inputs is None or not torch.equal(self.inputs, inputs):
            self.inputs, self.hidden = inputs, self.model.hidden_states(inputs)
        return self.hidden

    def full(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.unembed(self.states(inputs))

    def logits_at(self, inputs: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.unembed(self.states(inputs)[rows, positions])


def rounding(model: GPT, tokenizer, bundle: Bundle, max_per_task: int, max_seq_len, batch_size: int) -> dict:
    """Span-only against full logits on the same hidden states, through score_batch and is_correct:
    the largest loss difference, argmax hits and decisions that differ."""
    requests, _ = core.build_requests(bundle, tokenizer, max_per_task=max_per_task, max_seq_len=max_seq_len)
    trunk, cpu = SharedTrunk(model), torch.device("cpu")
    max_diff, hits_differ, decisions_differ, span_tokens = 0.0, 0, 0, 0
    with torch.no_grad():
        for batch in core.pack_batches(requests, batch_size):
            fast_losses, fast_hits = core.score_batch(trunk, batch, tokenizer.bos_id, cpu, contextlib.nullcontext)
            full_losses, full_hits = core.score_batch(trunk.full, batch, tokenizer.bos_id, cpu, contextlib.nullcontext)
            max_diff = max(max_diff, (fast_losses - full_losses).abs().max().item())
            hits_differ += int((fast_hits != full_hits).sum())
            span_tokens += fast_losses.numel()
            offset = 0
            for request in batch:
                n = sum(end - start for start, end in request.spans)
                task_type, window = bundle.tasks[request.task].task_type, slice(offset, offset + n)
                fast = core.is_correct(task_type, request, fast_losses[window].tolist(), fast_hits[window].tolist())
                full = core.is_correct(task_type, request, full_losses[window].tolist(), full_hits[window].tolist())
                decisions_differ += fast != full
                offset += n
    return {
        "batch_size": batch_size,
        "examples": len(requests),
        "span_tokens": span_tokens,
        "max_abs_loss_difference": max_diff,
        "argmax_hits_differing": hits_differ,
        "decisions_differing": decisions_differ,
    }


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bundle_cmd = sub.add_parser("bundle", help="build the benchmark's bundle from llm-foundry's repository")
    bundle_cmd.add_argument("foundry", type=Path, help="git dir of mosaicml/llm-foundry (a bare mirror is fine)")
    bundle_cmd.add_argument("out", type=Path)
    run = sub.add_parser("run", help="time both scorers")
    run.add_argument("nanochat", type=Path, help="a checkout of karpathy/nanochat at 348fbb3")
    run.add_argument("bundle", type=Path)
    run.add_argument("--max-per-task", type=int, default=175)
    run.add_argument(
        "--max-seq-len", type=int, default=256, help="both sides keep a row's last this many tokens (0: no crop)"
    )
    run.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    run.add_argument("--rounds", type=int, default=1, help="passes over the tasks (each task is one block per pass)")
    run.add_argument("--depth", type=int, default=4)
    run.add_argument("--dim", type=int, default=256)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=Path, help="also write the record as JSON")
    run.add_argument(
        "--rounding-only",
        action="store_true",
        help="time nothing: compare span-only with full logits on the same hidden states, per batch size",
    )
    args = parser.parse_args(argv)
    if args.command == "bundle":
        print(build_bundle(args.foundry, args.out))
        return None
    if not (args.nanochat / "nanochat" / "core_eval.py").is_file():
        parser.error(f"{args.nanochat} is not a nanochat checkout (no nanochat/core_eval.py)")
    sys.path.insert(0, str(args.nanochat))
    import nanochat.core_eval as reference

    tokenizer = builtin_tokenizer()
    model = build_model(tokenizer.vocab_size, args.depth, args.dim, args.seed)
    max_seq_len = args.max_seq_len or None
    model.max_seq_len = max_seq_len  # the reference crops a model that declares it, as we do with max_seq_len
    provenance = provenance_fields(sys.argv[1:] if argv is None else argv, program=PROGRAM)
    bundle = load_bundle(args.bundle)
    if args.rounding_only:
        record = {
            "model": {"depth": args.depth, "dim": args.dim, "vocab": tokenizer.vocab_size, "seed": args.seed},
            "max_per_task": args.max_per_task,
            "max_seq_len": max_seq_len,
            "rounding": [
                rounding(model, tokenizer, bundle, args.max_per_task, max_seq_len, batch_size)
                for batch_size in args.batch_sizes
            ],
            **provenance,
        }
        print(json.dumps(record["rounding"], indent=2))
        if args.out:
            args.out.write_text(json.dumps(record, indent=2) + "\n")
        return record
    sides = ["reference", *(f"project_b{b}" for b in args.batch_sizes)]

    # Each side's decisions, per (task label, example index), from the scorers' own per-example functions.
    decisions: dict[str, dict] = {side: {} for side in sides}
    current = {"side": None, "label": None}
    evaluate_example = reference.evaluate_example
    is_correct = core.is_correct

    def reference_key(idx, *_args, **_kwargs):
        return current["label"], idx

    def project_key(_task_type, request, *_args, **_kwargs):
        return current["label"], request.example

    def score(side: str, task) -> float:
        current["side"], current["label"] = side, task.label
        if side == "reference":
            data = reference_data(task, args.max_per_task)
            meta = {
                "task_type": task.task_type,
                "num_fewshot": task.num_fewshot,
                "continuation_delimiter": task.continuation_delimiter,
            }
            reference.evaluate_example = recording(evaluate_example, decisions[side], reference_key)
            started = time.perf_counter()
            reference.evaluate_task(model, ReferenceTokenizer(tokenizer), data, "cpu", meta)
        else:
            batch_size = int(side.removeprefix("project_b"))
            core.is_correct = recording(is_correct, decisions[side], project_key)
            started = time.perf_counter()
            core.evaluate_core(
                model,
                tokenizer,
                Bundle(bundle.root, (task,)),
                max_per_task=args.max_per_task,
                batch_size=batch_size,
                max_seq_len=max_seq_len,
            )
        elapsed = time.perf_counter() - started
        reference.evaluate_example, core.is_correct = evaluate_example, is_correct
        return elapsed

    seconds: dict[str, list[float]] = {side: [] for side in sides}
    mismatches, compared = 0, 0
    started = time.perf_counter()
    for round_ in range(args.rounds):
        for t, task in enumerate(bundle.tasks):
            block = round_ * len(bundle.tasks) + t
            order = sides if block % 2 == 0 else sides[::-1]
            for side in order:
                seconds[side].append(score(side, task))
            print(
                f"block {block} {task.label}: "
                + ", ".join(f"{side} {seconds[side][-1]:.2f}s" for side in sides)
                + f" (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        for side in sides[1:]:
            for key, decision in decisions["reference"].items():
                compared += 1
                mismatches += decisions[side].get(key) != decision
    wall = time.perf_counter() - started

    record = {
        "model": {"depth": args.depth, "dim": args.dim, "vocab": tokenizer.vocab_size, "seed": args.seed},
        "max_per_task": args.max_per_task,
        "max_seq_len": max_seq_len,
        "tasks": [task.label for task in bundle.tasks],
        "examples": len(decisions["reference"]),
        "examples_right": sum(decisions["reference"].values()),
        "decisions_compared": compared,
        "decision_mismatches": mismatches,
        "rounds": args.rounds,
        "blocks_s": seconds,
        "total_s": {side: sum(s) for side, s in seconds.items()},
        "wall_s": wall,
        "load_average_after": os.getloadavg(),
        "cpu_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "ratios": {},
        **provenance,
    }
    record["command"] = "python " + " ".join(
        [str(Path(__file__).relative_to(REPO)), *(sys.argv[1:] if argv is None else argv)]
    )
    reference_blocks = list(enumerate(seconds["reference"]))
    for side in sides[1:]:
        result = ratio_compare(list(enumerate(seconds[side])), reference_blocks, alpha=0.05)
        record["ratios"][side] = {
            "project_over_reference": 1 + result.delta_pct / 100,
            "ci95": [1 + result.low_pct / 100, 1 + result.high_pct / 100],
            "p_value": result.p_value,
            "blocks": result.n_paired,
        }
        print(
            f"{side}: project / reference time {record['ratios'][side]['project_over_reference']:.3f} "
            f"(95% CI {record['ratios'][side]['ci95'][0]:.3f} to {record['ratios'][side]['ci95'][1]:.3f}); "
            f"{sum(seconds[side]):.1f} s vs {sum(seconds['reference']):.1f} s"
        )
    print(
        f"{record['examples']} examples, {record['examples_right']} right; decisions compared {compared}, "
        f"mismatches {mismatches}; {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}"
    )
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
