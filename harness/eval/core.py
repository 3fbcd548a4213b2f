"""CORE: the DCLM in-context-learning metric (arXiv 2406.11794), scored as nanochat's recipe does.

For each task of the bundle (core_bundle.py reads, checks and fetches it):
  1. load its examples, shuffle them with Random(1337), keep the first max_per_task (-1: all);
  2. for example idx, take num_fewshot other examples by Random(1234 + idx).sample;
  3. render one prompt per option (render_prompts), tokenize each with BOS in front and find the
     answer span: multiple choice scores what follows the options' common token prefix, schema the
     options' common token suffix, language modeling what the continuation adds to the context;
     rows longer than max_seq_len lose tokens on the left;
  4. multiple choice and schema predict the option with the lowest mean token loss over its span
     (the first one on ties) and are right when it is `gold`; language modeling is right when the
     argmax prediction matches every span token.
A task's accuracy is its fraction right, its centered accuracy (acc - b/100) / (1 - b/100) with
b its random baseline in percent, and CORE the mean centered accuracy over the tasks.

Speed. Whole examples are packed into batches of up to batch_size rows after sorting by length,
so one forward pass scores many examples with little padding. Rows are padded on the right with
BOS, which cannot change the logits of the positions before it in a causal model. Only the answer
spans' logits are read (under 1% of the positions on the real tasks), so a model that offers
`logits_at` (models.gpt.GPT) runs its blocks on every position but its unembedding and soft cap
on the span positions only, never building the (B, T, vocab) float32 logits; any other model's
full logits are indexed. Under
torch.distributed each rank scores every world_size-th example of each task, and one all-reduce
of the per-task counts gives every rank the same result.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from harness.config import to_dataclass
from harness.errors import ConfigError
from harness.eval.core_bundle import Bundle, CoreTask, download_bundle, load_bundle, utf8_lines

__all__ = [
    "Bundle",
    "CoreConfig",
    "CoreResult",
    "CoreTask",
    "check_bundle",
    "core_config",
    "evaluate_core",
    "load_bundle",
    "load_examples",
    "prepare_bundle",
    "render_prompts",
    "run_core_eval",
]

SHUFFLE_SEED = 1337  # the order examples are taken in, so that max_per_task keeps a random subset
FEWSHOT_SEED = 1234  # example idx draws its few-shot examples with Random(FEWSHOT_SEED + idx)
ENCODE_CHUNK = 1024  # examples rendered and tokenized together
REQUIRED_FIELDS = {
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language_modeling": ("context", "continuation"),
}


# config --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CoreConfig:
    enabled: bool
    every: int
    max_per_task: int
    batch_size: int
    bundle_dir: str
    bundle_url: str


def core_config(cfg: Mapping[str, Any]) -> CoreConfig:
    """The eval.core section of the config (resolved or composed), checked."""
    core = to_dataclass(CoreConfig, cfg["eval"].get("core"), "eval.core")
    for key in ("every", "batch_size"):
        if getattr(core, key) <= 0:
            raise ConfigError(f"eval.core.{key}={getattr(core, key)} must be positive")
    if core.max_per_task == 0 or core.max_per_task < -1:
        raise ConfigError(f"eval.core.max_per_task={core.max_per_task} must be positive, or -1 for every example")
    return core


def check_bundle(cfg: Mapping[str, Any]) -> Bundle:
    """Called before training when eval.core.enabled: the bundle must exist and be well formed."""
    core = core_config(cfg)
    if not Path(core.bundle_dir).exists():
        raise ConfigError(
            f"eval.core.bundle_dir={core.bundle_dir} does not exist; "
            "fetch the CORE bundle with `python -m harness.prepare eval=core`"
        )
    return load_bundle(core.bundle_dir)


def prepare_bundle(cfg: Mapping[str, Any], progress: bool = True) -> Path:
    """Download eval.core.bundle_url into eval.core.bundle_dir unless a valid bundle is there."""
    core = core_config(cfg)
    return download_bundle(core.bundle_url, core.bundle_dir, progress=progress)


# examples and prompts ------------------------------------------------------------------------
def load_examples(task: CoreTask, max_per_task: int = -1) -> list[dict]:
    """The task's examples in evaluation order: shuffled with Random(1337), then cropped."""
    return [item for _, item in load_numbered_examples(task, max_per_task)]


def load_numbered_examples(task: CoreTask, max_per_task: int = -1) -> list[tuple[int, dict]]:
    """(line number, example) in evaluation order, so that an error can point at the file's line.
    Random.shuffle's permutation depends only on the length, so the order is load_examples'."""
    examples = []
    for line_number, line in utf8_lines(task.data_path):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{task.data_path}:{line_number}: not JSON ({e.msg})") from None
        missing = [k for k in REQUIRED_FIELDS[task.task_type] if not isinstance(item, dict) or k not in item]
        if missing:
            raise ConfigError(f"{task.data_path}:{line_number}: a {task.task_type} example needs '{missing[0]}'")
        examples.append((line_number, item))
    random.Random(SHUFFLE_SEED).shuffle(examples)
    if max_per_task > 0:
        examples = examples[:max_per_task]
    if not examples:
        raise ConfigError(f"{task.data_path} has no examples (task {task.label!r})")
    for line_number, item in examples:  # the ones scored, or shown solved as another's few-shot example
        check_gold(task, item, line_number)
    return examples


# The field whose options `gold` indexes, per task type (language modeling has no gold).
GOLD_OPTIONS = {"multiple_choice": "choices", "schema": "context_options"}


def check_gold(task: CoreTask, item: dict, line_number: int) -> None:
    """`gold` must index the example's options: rendering it as a few-shot example takes that option."""
    options_key = GOLD_OPTIONS.get(task.task_type)
    if options_key is None:
        return
    options, gold = item[options_key], item["gold"]
    if not isinstance(options, list) or not options:
        raise ConfigError(
            f"CORE task {task.label!r}, {task.data_path}:{line_number}: {options_key} must be a non-empty list"
        )
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(options):
        raise ConfigError(
            f"CORE task {task.label!r}, {task.data_path}:{line_number}: gold={gold!r} is not an index into its "
            f"{len(options)} {options_key} (0..{len(options) - 1})"
        )


def fewshot_indices(idx: int, num_examples: int, num_fewshot: int) -> list[int]:
    """Random(1234 + idx).sample(the indices other than idx, num_fewshot).

    random.sample's draws depend only on the population's length, so sampling positions in
    range(n - 1) and skipping over idx gives the same indices without building an n-long list
    per example (quadratic for the 20k-example tasks)."""
    if num_fewshot == 0:
        return []
    if num_fewshot > num_examples - 1:
        raise ConfigError(f"{num_fewshot}-shot needs more than {num_examples} examples; raise eval.core.max_per_task")
    picks = random.Random(FEWSHOT_SEED + idx).sample(range(num_examples - 1), num_fewshot)
    return [i if i < idx else i + 1 for i in picks]


def render_prompts(task_type: str, item: dict, delimiter: str, fewshot: list[dict]) -> list[str]:
    """The texts to score, one per option (language modeling: without, then with the continuation).

    Each few-shot example is rendered solved and followed by a blank line."""
    if task_type == "multiple_choice":
        shots = "".join(f"{ex['query']}{delimiter}{ex['choices'][ex['gold']]}\n\n" for ex in fewshot)
        return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if task_type == "schema":
        shots = "".join(f"{ex['context_options'][ex['gold']]}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
        return [f"{shots}{option}{delimiter}{item['continuation']}" for option in item["context_options"]]
    if task_type == "language_modeling":
        # Contexts are trimmed (some carry trailing whitespace), and the prompt without the
        # continuation is stripped so that its tokens end cleanly before the continuation's.
        shots = "".join(f"{str(ex['context']).strip()}{delimiter}{ex['continuation']}\n\n" for ex in fewshot)
        context = f"{shots}{str(item['context']).strip()}{delimiter}"
        return [context.strip(), f"{context}{item['continuation']}"]
    raise ValueError(f"unknown task type {task_type!r}")


# tokenized examples --------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """One example ready to score: token rows (BOS first) and each row's answer span [start, end)."""

    task: int  # index into Bundle.tasks
    example: int  # index into the task's shuffled examples
    rows: tuple[array, ...]  # int32 token ids: 4 bytes a token, not a Python int's 36
    spans: tuple[tuple[int, int], ...]
    gold: int  # the right option; unused for language modeling

    @property
    def length(self) -> int:
        return max(len(row) for row in self.rows)


def common_prefix_length(rows: list[list[int]]) -> int:
    n = 0
    for column in zip(*rows, strict=False):  # stops at the shortest row
        if any(token != column[0] for token in column):
            break
        n += 1
    return n


def common_suffix_length(rows: list[list[int]]) -> int:
    return common_prefix_length([row[::-1] for row in rows])


def answer_spans(task_type: str, rows: list[list[int]]) -> tuple[list, list]:
    """Rows to score and the [start, end) span of each, following the recipe per task type."""
    if task_type == "multiple_choice":
        start = common_prefix_length(rows)
        return rows, [(start, len(row)) for row in rows]
    if task_type == "schema":
        suffix = common_suffix_length(rows)
        # Identical options would share everything, BOS included; BOS itself is never scored.
        return rows, [(max(len(row) - suffix, 1), len(row)) for row in rows]
    without, with_continuation = rows
    if not (len(without) < len(with_continuation) and with_continuation[: len(without)] == without):
        raise ValueError("the context's tokens are not a strict prefix of the context-plus-continuation's tokens")
    return [with_continuation], [(len(without), len(with_continuation))]


def crop_left(row: list[int], span: tuple[int, int], max_seq_len: int | None) -> tuple[list[int], tuple[int, int]]:
    """Keep the last max_seq_len tokens (few-shot context goes first), shifting the span."""
    if max_seq_len is None or len(row) <= max_seq_len:
        return row, span
    cut = len(row) - max_seq_len
    start, end = span[0] - cut, span[1] - cut
    if start < 1:
        raise ValueError(f"its answer span of {end - start} tokens does not fit in max_seq_len={max_seq_len}")
    return row[cut:], (start, end)


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text; a tokenizer's encode_batch (parallel, in Rust) when it has one."""
    if hasattr(tokenizer, "encode_batch"):
        return tokenizer.encode_batch(texts)
    return [tokenizer.encode(text) for text in texts]


def make_request(
    task_index: int,
    task: CoreTask,
    idx: int,
    gold: int,
    rows: list[list[int]],
    max_seq_len: int | None,
    line_number: int | None = None,
) -> Request:
    """An example's request from its prompts' token rows (BOS first): spans found, long rows cropped.
    A task file the model cannot score is a ConfigError naming the task and the example."""
    where = f" ({task.data_path}:{line_number})" if line_number is not None else ""
    try:
        rows, spans = answer_spans(task.task_type, rows)
        cropped = [crop_left(row, span, max_seq_len) for row, span in zip(rows, spans, strict=True)]
    except ValueError as e:
        raise ConfigError(f"CORE task {task.label!r} example {idx}{where}: {e}") from None
    return Request(
        task=task_index,
        example=idx,
        rows=tuple(array("i", row) for row, _ in cropped),
        spans=tuple(span for _, span in cropped),
        gold=gold,
    )


def build_requests(
    bundle: Bundle,
    tokenizer,
    *,
    max_per_task: int = -1,
    max_seq_len: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[list[Request], list[int]]:
    """This rank's examples (every world_size-th of each task) ready to score, and each task's size.

    Prompts are tokenized ENCODE_CHUNK examples at a time, so that only that many are ever held
    as lists of Python ints."""
    requests, num_examples = [], []
    for t, task in enumerate(bundle.tasks):
        numbered = load_numbered_examples(task, max_per_task)
        examples = [item for _, item in numbered]
        num_examples.append(len(examples))
        mine = range(rank, len(examples), world_size)
        for chunk in (mine[i : i + ENCODE_CHUNK] for i in range(0, len(mine), ENCODE_CHUNK)):
            prompts = []
            for idx in chunk:
                fewshot = [examples[i] for i in fewshot_indices(idx, len(examples), task.num_fewshot)]
                prompts.append(render_prompts(task.task_type, examples[idx], task.continuation_delimiter, fewshot))
            encoded = iter(encode_texts(tokenizer, [text for texts in prompts for text in texts]))
            for idx, texts in zip(chunk, prompts, strict=True):
                rows = [[tokenizer.bos_id, *next(encoded)] for _ in texts]
                gold = int(examples[idx].get("gold", -1))
                requests.append(make_request(t, task, idx, gold, rows, max_seq_len, numbered[idx][0]))
    return requests, num_examples


# scoring -------------------------------------------------------------------------------------
def pack_batches(requests: list[Request], batch_size: int) -> list[list[Request]]:
    """Longest first (an out-of-memory shows at once), whole examples, at most batch_size rows
    per batch unless one example alone has more."""
    batches: list[list[Request]] = []
    rows = 0
    for request in sorted(requests, key=lambda r: r.length, reverse=True):
        if batches and rows + len(request.rows) <= batch_size:
            batches[-1].append(request)
            rows += len(request.rows)
        else:
            batches.append([request])
            rows = len(request.rows)
    return batches


def score_batch(
    model, batch: list[Request], pad_id: int, device: torch.device, autocast: Callable
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per span token, in row order: its loss and whether it is the argmax prediction.

    A model with `logits_at(inputs, rows, positions)` (models.gpt.GPT) computes logits at the span
    positions only; any other callable gives the full (B, T, V) logits, which are then indexed.
    Results stay on the device so the next batch can be queued without waiting for this one."""
    rows = [row for request in batch for row in request.rows]
    spans = [span for request in batch for span in request.spans]
    inputs = torch.full((len(rows), max(len(row) for row in rows)), pad_id, dtype=torch.long)
    for b, row in enumerate(rows):
        inputs[b, : len(row)] = torch.frombuffer(row, dtype=torch.int32)
    # The logits at position p predict the token at p + 1.
    batch_index = torch.tensor([b for b, (start, end) in enumerate(spans) for _ in range(start, end)])
    positions = torch.tensor([p for start, end in spans for p in range(start - 1, end - 1)])
    targets = inputs[batch_index, positions + 1]
    non_blocking = device.type == "cuda"
    if non_blocking:
        inputs, batch_index, positions, targets = (t.pin_memory() for t in (inputs, batch_index, positions, targets))
    inputs, batch_index, positions, targets = (
        t.to(device, non_blocking=non_blocking) for t in (inputs, batch_index, positions, targets)
    )
    with autocast():
        if hasattr(model, "logits_at"):  # a harness GPT: unembed the span positions only
            picked = model.logits_at(inputs, batch_index, positions)
        else:
            picked = model(inputs)[batch_index, positions]
    picked = picked.float()
    losses = F.cross_entropy(picked, targets, reduction="none")
    return losses, picked.argmax(dim=-1) == targets


def is_correct(task_type: str, request: Request, losses: list[float], hits: list[bool]) -> bool:
    """Judge one example from its span tokens' losses and argmax hits (concatenated by row)."""
    if task_type == "language_modeling":
        return all(hits)
    means, offset = [], 0
    for start, end in request.spans:
        n = end - start
        # An empty span (an option whose tokens are a prefix of another's) has no mean: NaN,
        # which then never wins unless it comes first, as with the recipe's min() over a list.
        means.append(math.fsum(losses[offset : offset + n]) / n if n else math.nan)
        offset += n
    prediction = min(range(len(means)), key=means.__getitem__)
    return prediction == request.gold


@dataclass(frozen=True)
class CoreResult:
    core: float
    tasks: dict[str, dict]  # label -> {"accuracy", "centered", "num_examples"}, in core.yaml order

    def to_record(self) -> dict[str, float]:
        """The metrics-record form: core, core/<label> (centered), core_acc/<label> (accuracy)."""
        record = {"core": self.core}
        record.update({f"core/{label}": task["centered"] for label, task in self.tasks.items()})
        record.update({f"core_acc/{label}": task["accuracy"] for label, task in self.tasks.items()})
        return record

    @property
    def num_examples(self) -> int:
        return sum(task["num_examples"] for task in self.tasks.values())


def centered_accuracy(accuracy: float, random_baseline: float) -> float:
    """0 at chance, 1 at perfect; the baseline is in percent."""
    return (accuracy - random_baseline / 100) / (1 - random_baseline / 100)


@torch.no_grad()
def evaluate_core(
    model,
    tokenizer,
    bundle: Bundle,
    *,
    max_per_task: int = -1,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    max_seq_len: int | None = None,
    autocast: Callable = contextlib.nullcontext,
    progress: bool = False,
) -> CoreResult:
    """CORE of `model`, any callable mapping token ids (B, T) to logits (B, T, V); one that also has
    logits_at(ids, rows, positions) -> (N, V) (models.gpt.GPT) is asked for the span positions only.

    `tokenizer` needs encode(text) -> list[int] (encode_batch(texts) is used if present) and
    bos_id. `batch_size` counts rows (prompts) per forward pass. `max_seq_len` crops longer rows
    from the left; None crops nothing, which is what the recipe does for its own models (it crops
    only models that declare a limit, such as GPT-2's 1024; nanochat's GPT declares none and its
    rotary cache is 10x the training length). Pass the plain model, not a DDP wrapper (ranks run
    different numbers of forwards) nor a torch.compile(dynamic=False) one (every new batch shape
    would recompile). Every rank of an initialized process group must call this; all get the
    same result.
    """
    device = torch.device(device)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    requests, num_examples = build_requests(
        bundle, tokenizer, max_per_task=max_per_task, max_seq_len=max_seq_len, rank=rank, world_size=world_size
    )
    batches = pack_batches(requests, batch_size)
    outputs = [
        score_batch(model, batch, tokenizer.bos_id, device, autocast)
        for batch in tqdm(batches, desc="CORE", unit="batch", disable=not progress)
    ]
    losses = torch.cat([batch_losses for batch_losses, _ in outputs]).tolist() if outputs else []
    hits = torch.cat([batch_hits for _, batch_hits in outputs]).tolist() if outputs else []
    correct = torch.zeros(len(bundle.tasks), dtype=torch.long)
    offset = 0
    for request in (request for batch in batches for request in batch):
        n = sum(end - start for start, end in request.spans)
        task_type = bundle.tasks[request.task].task_type
        correct[request.task] += is_correct(task_type, request, losses[offset : offset + n], hits[offset : offset + n])
        offset += n

    if world_size > 1:
        correct = correct.to(device)
        dist.all_reduce(correct)
        correct = correct.cpu()
    tasks = {}
    for task, right, n in zip(bundle.tasks, correct.tolist(), num_examples, strict=True):
        accuracy = right / n
        tasks[task.label] = {
            "accuracy": accuracy,
            "centered": centered_accuracy(accuracy, task.random_baseline),
            "num_examples": n,
        }
    core = sum(task["centered"] for task in tasks.values()) / len(tasks)
    return CoreResult(core=core, tasks=tasks)


def run_core_eval(model, tokenizer, core: CoreConfig, *, device, autocast: Callable, progress: bool) -> CoreResult:
    """CORE of a harness GPT with eval.core's settings: the one call training and harness.evaluate
    share, so a checkpoint scores the same in both. Rows are cropped on the left only to what the
    model can take (its rotary positions, 10x the training length by default), as the recipe does
    for its own models: a long few-shot prompt is scored, not a crash."""
    return evaluate_core(
        model,
        tokenizer,
        load_bundle(core.bundle_dir),
        max_per_task=core.max_per_task,
        batch_size=core.batch_size,
        device=device,
        max_seq_len=model.config.rotary_positions,
        autocast=autocast,
        progress=progress,
    )
