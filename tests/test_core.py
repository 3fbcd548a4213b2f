"""CORE scoring: prompt rendering, seeding, spans, scoring, batching and ranks against references
computed here by hand, on the miniature bundle in tests/fixtures/core_bundle."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.eval.core import (
    Bundle,
    CoreResult,
    build_requests,
    check_bundle,
    core_config,
    crop_left,
    evaluate_core,
    fewshot_indices,
    is_correct,
    load_bundle,
    load_examples,
    make_request,
    pack_batches,
    render_prompts,
    score_batch,
)
from models.gpt import GPT, GPTConfig

FIXTURE = Path(__file__).parent / "fixtures" / "core_bundle"
REPO = Path(__file__).resolve().parents[1]
BOS = 256
VOCAB = 257


@pytest.fixture(autouse=True)
def one_thread():
    """Toy-sized matmuls only lose to thread start-up and to other processes on a small machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ByteTokenizer:
    """UTF-8 bytes as token ids, BOS = 256: token spans are byte spans, easy to reason about."""

    bos_id = BOS

    def encode(self, text: str, prepend_bos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [BOS, *ids] if prepend_bos else ids


def text(tokens) -> str:
    return bytes(list(tokens)).decode("utf-8")


def tiny_gpt(seed: int = 0) -> GPT:
    """The real architecture at toy size, with weights large enough that options differ clearly."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=64))
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "wte" not in name and "value_embeds" not in name:
                p.normal_(0.0, 0.2)
    return model.eval()


class UniformModel:
    """Every token equally likely: every option of every example ties."""

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, VOCAB)


class OracleModel:
    """Puts logit ORACLE_LOGIT on the next token of any known text the input is following so far,
    and is uniform elsewhere; a known text is a solved prompt (BOS, then the text's bytes)."""

    ORACLE_LOGIT = 10.0

    def __init__(self, texts: list[str]):
        self.trie: dict = {}
        for text in texts:
            node = self.trie
            for token in [BOS, *text.encode("utf-8")]:
                node = node.setdefault(token, {})

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*idx.shape, VOCAB)
        for b, row in enumerate(idx.tolist()):
            node = self.trie
            for t, token in enumerate(row):
                node = node.get(token) if node is not None else None
                if node:
                    logits[b, t, next(iter(node))] = self.ORACLE_LOGIT
        return logits


# independent references ----------------------------------------------------------------------
def fixture_tasks() -> list[dict]:
    import yaml

    return yaml.safe_load((FIXTURE / "core.yaml").read_text())["icl_tasks"]


def shuffled_examples(spec: dict) -> list[dict]:
    lines = (FIXTURE / "eval_data" / spec["dataset_uri"]).read_text().splitlines()
    examples = [json.loads(line) for line in lines]
    random.Random(1337).shuffle(examples)
    return examples


def reference_prompts(spec: dict, examples: list[dict], idx: int) -> list[str]:
    """The recipe's prompts, built here from its description rather than from harness code."""
    k = spec["num_fewshot"][0]
    others = [i for i in range(len(examples)) if i != idx]
    shots = [examples[i] for i in random.Random(1234 + idx).sample(others, k)] if k else []
    d = spec.get("continuation_delimiter", " ")
    item, kind = examples[idx], spec["icl_task_type"]
    if kind == "multiple_choice":
        head = "".join(s["query"] + d + s["choices"][s["gold"]] + "\n\n" for s in shots)
        return [head + item["query"] + d + c for c in item["choices"]]
    if kind == "schema":
        head = "".join(s["context_options"][s["gold"]] + d + s["continuation"] + "\n\n" for s in shots)
        return [head + o + d + item["continuation"] for o in item["context_options"]]
    head = "".join(s["context"].strip() + d + s["continuation"] + "\n\n" for s in shots)
    with_continuation = head + item["context"].strip() + d + item["continuation"]
    return [(head + item["context"].strip() + d).strip(), with_continuation]


def solved_prompt(spec: dict, examples: list[dict], idx: int) -> str:
    prompts = reference_prompts(spec, examples, idx)
    return prompts[-1] if spec["icl_task_type"] == "language_modeling" else prompts[examples[idx]["gold"]]


def reference_accuracy(model, spec: dict, examples: list[dict]) -> float:
    """One row at a time, unpadded, spans found on the strings (bytes = tokens here)."""
    right = 0
    for idx, item in enumerate(examples):
        prompts = reference_prompts(spec, examples, idx)
        kind = spec["icl_task_type"]
        if kind == "language_modeling":
            without, full = prompts
            ids = torch.tensor([[BOS, *full.encode()]])
            predicted = model(ids)[0].argmax(-1)
            start = 1 + len(without.encode())
            right += bool((predicted[start - 1 : -1] == ids[0, start:]).all())
            continue
        if kind == "multiple_choice":
            shared = len(_common_prefix([p.encode() for p in prompts]))
            starts = [1 + shared] * len(prompts)
        else:
            shared = len(_common_prefix([p.encode()[::-1] for p in prompts]))
            starts = [1 + len(p.encode()) - shared for p in prompts]
        means = []
        for prompt, start in zip(prompts, starts, strict=True):
            ids = torch.tensor([[BOS, *prompt.encode()]])
            losses = F.cross_entropy(model(ids)[0, :-1].float(), ids[0, 1:], reduction="none")
            means.append(losses[start - 1 :].double().mean().item())
        right += means.index(min(means)) == item["gold"]
    return right / len(examples)


def _common_prefix(sequences: list[bytes]) -> bytes:
    first = sequences[0]
    n = 0
    while n < len(first) and all(len(s) > n and s[n] == first[n] for s in sequences):
        n += 1
    return first[:n]


def baselines() -> dict[str, float]:
    import csv

    with open(FIXTURE / "eval_meta_data.csv") as f:
        return {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}


# rendering, byte for byte --------------------------------------------------------------------
def test_multiple_choice_prompt_format():
    shots = [
        {"query": "Question: 2 + 2 = ?", "choices": ["3", "4"], "gold": 1},
        {"query": "Question: Snow is?", "choices": ["white", "green"], "gold": 0},
    ]
    item = {"query": "Question: The sky is?", "choices": ["blue", "red"], "gold": 0}
    assert render_prompts("multiple_choice", item, "\nAnswer: ", shots) == [
        "Question: 2 + 2 = ?\nAnswer: 4\n\nQuestion: Snow is?\nAnswer: white\n\nQuestion: The sky is?\nAnswer: blue",
        "Question: 2 + 2 = ?\nAnswer: 4\n\nQuestion: Snow is?\nAnswer: white\n\nQuestion: The sky is?\nAnswer: red",
    ]
    assert render_prompts("multiple_choice", item, " ", []) == [
        "Question: The sky is? blue",
        "Question: The sky is? red",
    ]


def test_schema_prompt_format():
    shot = {
        "context_options": ["Ann paid Bea because Ann", "Ann paid Bea because Bea"],
        "continuation": "owed money.",
        "gold": 1,
    }
    item = {
        "context_options": ["The dog bit the man because the dog", "The dog bit the man because the man"],
        "continuation": "was angry.",
        "gold": 0,
    }
    assert render_prompts("schema", item, " ", [shot]) == [
        "Ann paid Bea because Bea owed money.\n\nThe dog bit the man because the dog was angry.",
        "Ann paid Bea because Bea owed money.\n\nThe dog bit the man because the man was angry.",
    ]


def test_language_modeling_prompt_format_trims_contexts_and_strips_the_open_prompt():
    shot = {"context": "  HISTORY: First US president \n", "continuation": "George Washington"}
    item = {"context": "SCIENCE: H2O is commonly called ", "continuation": "water"}
    assert render_prompts("language_modeling", item, "\nAnswer: ", [shot]) == [
        "HISTORY: First US president\nAnswer: George Washington\n\nSCIENCE: H2O is commonly called\nAnswer:",
        "HISTORY: First US president\nAnswer: George Washington\n\nSCIENCE: H2O is commonly called\nAnswer: water",
    ]
    zero_shot = {"context": "The cat sat on the ", "continuation": "mat"}
    assert render_prompts("language_modeling", zero_shot, " ", []) == ["The cat sat on the", "The cat sat on the mat"]


def test_fixture_example_renders_with_its_seeded_fewshot_examples():
    bundle = load_bundle(FIXTURE)
    jeopardy = [t.label for t in bundle.tasks].index("jeopardy_mini")
    requests, _ = build_requests(bundle, ByteTokenizer())
    # Random(1337) orders the clues Nile, nitrogen, piano, Shakespeare; Random(1234).sample([1, 2, 3], 2)
    # is [2, 1]: the piano, then nitrogen, whose context's trailing space is trimmed.
    request = next(r for r in requests if r.task == jeopardy and r.example == 0)
    (row,) = request.rows
    assert row[0] == BOS
    assert text(row[1:]) == (
        "MUSIC: This instrument has 88 keys\nAnswer: the piano\n\n"
        "SCIENCE: This gas makes up most of the air we breathe\nAnswer: nitrogen\n\n"
        "GEOGRAPHY: The longest river in Africa\nAnswer: the Nile"
    )
    start, end = request.spans[0]
    assert text(row[start:end]) == " the Nile"


@pytest.mark.parametrize("spec", fixture_tasks(), ids=lambda s: s["label"])
def test_every_fixture_prompt_follows_the_shuffle_and_fewshot_seeds(spec):
    bundle = load_bundle(FIXTURE)
    t = [task.label for task in bundle.tasks].index(spec["label"])
    expected_examples = shuffled_examples(spec)
    assert load_examples(bundle.tasks[t]) == expected_examples
    requests = [r for r in build_requests(bundle, ByteTokenizer())[0] if r.task == t]
    assert [r.example for r in requests] == list(range(len(expected_examples)))
    for idx, request in enumerate(requests):
        prompts = reference_prompts(spec, expected_examples, idx)
        if spec["icl_task_type"] == "language_modeling":
            prompts = prompts[1:]  # only the row with the continuation is scored
        assert [text(row[1:]) for row in request.rows] == prompts


@pytest.mark.parametrize("n", [2, 3, 8, 30, 200, 5000])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_fewshot_indices_are_random_sample_over_the_other_indices(n, k):
    if k > n - 1:
        with pytest.raises(ConfigError, match=f"{k}-shot needs more than {n} examples"):
            fewshot_indices(0, n, k)
        return
    for idx in sorted({0, 1, n // 2, n - 1}):
        expected = random.Random(1234 + idx).sample([i for i in range(n) if i != idx], k)
        assert fewshot_indices(idx, n, k) == expected


def test_max_per_task_keeps_the_first_shuffled_examples():
    task = next(t for t in load_bundle(FIXTURE).tasks if t.label == "copa_mini")
    spec = next(s for s in fixture_tasks() if s["label"] == "copa_mini")
    assert load_examples(task, 3) == shuffled_examples(spec)[:3]
    assert load_examples(task, -1) == shuffled_examples(spec)
    result = evaluate_core(UniformModel(), ByteTokenizer(), load_bundle(FIXTURE), max_per_task=3)
    assert {label: t["num_examples"] for label, t in result.tasks.items()} == {
        "copa_mini": 3,
        "arc_mini": 3,
        "arc_mini_zeroshot": 3,
        "winograd_mini": 3,
        "jeopardy_mini": 3,
        "lambada_mini": 3,
    }


# spans and cropping --------------------------------------------------------------------------
def _request(task_type: str, item: dict, delimiter: str = " "):
    from harness.eval.core_bundle import CoreTask

    task = CoreTask("t", task_type, Path("unused"), 0, delimiter, 0.0)
    rows = [[BOS, *ByteTokenizer().encode(p)] for p in render_prompts(task_type, item, delimiter, [])]
    return make_request(0, task, 0, item.get("gold", -1), rows, None)


def test_multiple_choice_span_starts_after_the_common_token_prefix():
    request = _request("multiple_choice", {"query": "Pick:", "choices": ["cat", "car", "dog"], "gold": 0})
    # "Pick: cat", "Pick: car", "Pick: dog" share "Pick: " (6 bytes) after BOS.
    assert request.spans == ((7, 10), (7, 10), (7, 10))
    request = _request("multiple_choice", {"query": "Pick:", "choices": ["cat", "car"], "gold": 0})
    assert request.spans == ((9, 10), (9, 10))


def test_schema_span_is_the_common_token_suffix():
    request = _request("schema", {"context_options": ["A cat", "The dog"], "continuation": "ran.", "gold": 0})
    # "A cat ran." and "The dog ran." share " ran." (5 bytes).
    assert request.spans == ((6, 11), (8, 13))


def test_language_modeling_span_is_what_the_continuation_adds():
    request = _request("language_modeling", {"context": "One two ", "continuation": "three"})
    assert [text(r[1:]) for r in request.rows] == ["One two three"]
    assert request.spans == ((8, 14),)  # " three": the stripped prompt ends before the delimiter


def test_language_modeling_rejects_a_context_that_is_not_a_token_prefix():
    from harness.eval.core_bundle import CoreTask

    # A tokenizer that merges the context's last token with the continuation's first.
    task = CoreTask("lm", "language_modeling", Path("unused"), 0, " ", 0.0)
    with pytest.raises(ConfigError, match="CORE task 'lm' example 3: the context's tokens are not a strict prefix"):
        make_request(0, task, 3, -1, [[BOS, 7, 8], [BOS, 7, 9, 10]], None)


def test_long_rows_are_cropped_from_the_left_and_spans_shift():
    assert crop_left(list(range(10)), (7, 10), None) == (list(range(10)), (7, 10))
    assert crop_left(list(range(10)), (7, 10), 10) == (list(range(10)), (7, 10))
    assert crop_left(list(range(10)), (7, 10), 4) == ([6, 7, 8, 9], (1, 4))
    with pytest.raises(ValueError, match="does not fit in max_seq_len=3"):
        crop_left(list(range(10)), (7, 10), 3)


def test_requests_are_cropped_on_the_left_keeping_every_answer_token():
    tokenizer, bundle = ByteTokenizer(), load_bundle(FIXTURE)
    cropped_rows = 0
    full_requests, _ = build_requests(bundle, tokenizer)
    cropped_requests, _ = build_requests(bundle, tokenizer, max_seq_len=48)
    for full, cropped in zip(full_requests, cropped_requests, strict=True):
        for row, (s, e), short, (cs, ce) in zip(full.rows, full.spans, cropped.rows, cropped.spans, strict=True):
            assert short == row[-48:]
            assert short[cs:ce] == row[s:e]
            cropped_rows += len(row) > 48
    assert cropped_rows > 10

    class LengthRecorder:
        longest = 0

        def __call__(self, idx):
            self.longest = max(self.longest, idx.shape[1])
            return UniformModel()(idx)

    model = LengthRecorder()
    evaluate_core(model, tokenizer, bundle, max_seq_len=48)
    assert model.longest == 48


# scoring -------------------------------------------------------------------------------------
def test_oracle_scores_one_everywhere():
    texts = []
    for spec in fixture_tasks():
        examples = shuffled_examples(spec)
        texts += [solved_prompt(spec, examples, i) for i in range(len(examples))]
    result = evaluate_core(OracleModel(texts), ByteTokenizer(), load_bundle(FIXTURE), batch_size=5)
    for label, task in result.tasks.items():
        assert task["accuracy"] == 1.0, label
        assert task["centered"] == 1.0, label
    assert result.core == 1.0


def test_language_modeling_needs_every_continuation_token():
    """An oracle that knows each solved prompt but its last byte gets every LM answer wrong."""
    texts = []
    for spec in fixture_tasks():
        if spec["icl_task_type"] == "language_modeling":
            examples = shuffled_examples(spec)
            texts += [solved_prompt(spec, examples, i)[:-1] for i in range(len(examples))]
    result = evaluate_core(OracleModel(texts), ByteTokenizer(), load_bundle(FIXTURE))
    assert result.tasks["jeopardy_mini"]["accuracy"] == 0.0
    assert result.tasks["lambada_mini"]["accuracy"] == 0.0


def test_uniform_model_scores_the_random_baselines():
    """All options tie, ties go to the first option, and the fixture's share of first-option gold
    answers equals each task's baseline; greedy decoding of a uniform model never finds an answer."""
    result = evaluate_core(UniformModel(), ByteTokenizer(), load_bundle(FIXTURE))
    expected = baselines()
    for label, task in result.tasks.items():
        assert task["accuracy"] == expected[label] / 100, label
        assert task["centered"] == 0.0, label
    assert result.core == 0.0


def test_partial_oracle_accuracies_and_centered_formula_by_hand():
    """The oracle knows only some examples; the others tie (first option) or miss (LM)."""
    known = {
        "The glass fell off the table, so",
        "She put on her coat because",  # copa, gold 0 and 1
        "Question: Which organ pumps blood through the body?",  # arc, gold 3
        "Tom thanked Bill because Bill",  # winograd, gold 1
        "MUSIC: This instrument has 88 keys",  # jeopardy
    }

    def identity(item):
        if "query" in item:
            return item["query"]
        if "context_options" in item:
            return item["context_options"][item["gold"]]
        return item["context"].strip()

    texts = []
    for spec in fixture_tasks():
        examples = shuffled_examples(spec)
        texts += [solved_prompt(spec, examples, i) for i, item in enumerate(examples) if identity(item) in known]
    result = evaluate_core(OracleModel(texts), ByteTokenizer(), load_bundle(FIXTURE), batch_size=3)
    # copa: glass, coat known; baby (gold 0) ties to the right answer; road (gold 1) misses: 3/4.
    # arc: organ known; planet (gold 0) ties right; gas, water miss: 2/4. arc zero-shot: the same,
    # except that the organ's 2-shot prompt opens with the water question solved (Random(1234 + 2)
    # picks shuffled examples 3 and 1), which the zero-shot water prompt follows: 3/4.
    # winograd: Tom/Bill known; cat (gold 0) ties right; ball (gold 1) misses; jar (gold 0): 3/4.
    # jeopardy: the piano known, 1/4; lambada: none, 0/3.
    accuracies = {
        "copa_mini": 3 / 4,
        "arc_mini": 2 / 4,
        "arc_mini_zeroshot": 3 / 4,
        "winograd_mini": 3 / 4,
        "jeopardy_mini": 1 / 4,
        "lambada_mini": 0.0,
    }
    centered = {
        "copa_mini": (0.75 - 0.5) / 0.5,
        "arc_mini": (0.5 - 0.25) / 0.75,
        "arc_mini_zeroshot": (0.75 - 0.25) / 0.75,
        "winograd_mini": (0.75 - 0.5) / 0.5,
        "jeopardy_mini": 0.25,
        "lambada_mini": 0.0,
    }
    assert {label: t["accuracy"] for label, t in result.tasks.items()} == accuracies
    for label, value in centered.items():
        assert result.tasks[label]["centered"] == pytest.approx(value, abs=1e-12)
    assert result.core == pytest.approx(sum(centered.values()) / 6, abs=1e-12)
    record = result.to_record()
    assert record["core"] == result.core
    assert record["core/arc_mini"] == pytest.approx(1 / 3) and record["core_acc/arc_mini"] == 0.5
    assert sorted(record) == sorted(
        ["core"] + [f"core/{k}" for k in accuracies] + [f"core_acc/{k}" for k in accuracies]
    )


def test_ties_go_to_the_first_option_and_empty_spans_never_win_unless_first():
    from harness.eval.core import Request, is_correct

    request = Request(task=0, example=0, rows=((BOS,),) * 3, spans=((1, 3), (1, 2), (1, 3)), gold=1)
    # means: 2.0, 2.0, 1.0 -> option 2
    assert not is_correct("multiple_choice", request, [1.0, 3.0, 2.0, 0.5, 1.5], [])
    assert is_correct("multiple_choice", request, [1.0, 3.0, 1.0, 1.0, 3.0], [])  # 2.0, 1.0, 2.0
    tie = Request(task=0, example=0, rows=((BOS,),) * 2, spans=((1, 2), (1, 2)), gold=0)
    assert is_correct("multiple_choice", tie, [0.7, 0.7], [])
    empty_first = Request(task=0, example=0, rows=((BOS,),) * 2, spans=((2, 2), (1, 2)), gold=0)
    assert is_correct("multiple_choice", empty_first, [0.1], [])
    empty_second = Request(task=0, example=0, rows=((BOS,),) * 2, spans=((1, 2), (2, 2)), gold=0)
    assert is_correct("multiple_choice", empty_second, [9.0], [])


@pytest.mark.parametrize("seed", [0, 1])
def test_tiny_gpt_matches_a_one_row_at_a_time_reference(seed):
    model, bundle = tiny_gpt(seed), load_bundle(FIXTURE)
    result = evaluate_core(model, ByteTokenizer(), bundle, batch_size=16)
    with torch.no_grad():
        for spec in fixture_tasks():
            expected = reference_accuracy(model, spec, shuffled_examples(spec))
            assert result.tasks[spec["label"]]["accuracy"] == expected, spec["label"]


def test_batched_and_one_by_one_scoring_agree():
    model, tokenizer, bundle = tiny_gpt(), ByteTokenizer(), load_bundle(FIXTURE)
    requests, _ = build_requests(bundle, tokenizer)
    with torch.no_grad():
        batched = pack_batches(requests, 64)
        assert len(batched) < len(requests) // 4  # many examples share a forward pass
        losses = {}
        for batch in batched:
            batch_losses, _ = score_batch(model, batch, BOS, torch.device("cpu"), contextlib.nullcontext)
            offset = 0
            for request in batch:
                n = sum(e - s for s, e in request.spans)
                losses[id(request)] = batch_losses[offset : offset + n]
                offset += n
        for request in requests:
            alone, _ = score_batch(model, [request], BOS, torch.device("cpu"), contextlib.nullcontext)
            torch.testing.assert_close(losses[id(request)], alone, rtol=1e-5, atol=1e-5)
    one_by_one = evaluate_core(model, tokenizer, bundle, batch_size=1)
    assert evaluate_core(model, tokenizer, bundle, batch_size=1000).tasks == one_by_one.tasks


def test_span_logits_match_float64_logits_at_every_position():
    """A GPT is scored through GPT.logits_at (the unembedding at the answer spans only). Reference:
    float64 logits at every position of each row alone, unpadded, computed here from the model's
    float64 hidden states and unembedding weights. Per-token losses agree to float32 rounding, the
    argmax hits exactly, and every example gets the same decision."""
    model, tokenizer, bundle = tiny_gpt(), ByteTokenizer(), load_bundle(FIXTURE)
    model64 = copy.deepcopy(model).double()
    cap, unembedding = model.config.logit_softcap, model64.lm_head.weight[:VOCAB]
    requests, _ = build_requests(bundle, tokenizer)
    decided = 0
    with torch.no_grad():
        for batch in pack_batches(requests, 16):
            losses, hits = score_batch(model, batch, BOS, torch.device("cpu"), contextlib.nullcontext)
            expected_losses, expected_hits, offset = [], [], 0
            for request in batch:
                example_losses, example_hits = [], []
                for row, (start, end) in zip(request.rows, request.spans, strict=True):
                    ids = torch.tensor([list(row)])
                    logits = cap * torch.tanh(model64.hidden_states(ids)[0] @ unembedding.T / cap)
                    targets = ids[0, start:end]
                    example_losses.append(F.cross_entropy(logits[start - 1 : end - 1], targets, reduction="none"))
                    example_hits.append(logits[start - 1 : end - 1].argmax(-1) == targets)
                n = sum(end - start for start, end in request.spans)
                got = is_correct(
                    bundle.tasks[request.task].task_type,
                    request,
                    losses[offset : offset + n].tolist(),
                    hits[offset : offset + n].tolist(),
                )
                if bundle.tasks[request.task].task_type == "language_modeling":
                    expected = bool(torch.cat(example_hits).all())
                else:
                    means = [row_losses.mean().item() for row_losses in example_losses]
                    expected = means.index(min(means)) == request.gold
                assert got == expected, (bundle.tasks[request.task].label, request.example)
                decided += 1
                offset += n
                expected_losses += example_losses
                expected_hits += example_hits
            torch.testing.assert_close(losses.double(), torch.cat(expected_losses), rtol=0, atol=1e-4)
            assert torch.equal(hits, torch.cat(expected_hits))
    assert decided == len(requests)


def test_a_model_without_logits_at_is_scored_from_its_full_logits():
    """Any callable mapping ids to (B, T, V) logits still works: the GPT behind a plain function (no
    logits_at, so its full logits are indexed) matches the one-row-at-a-time reference."""
    model, bundle = tiny_gpt(), load_bundle(FIXTURE)
    result = evaluate_core(lambda idx: model(idx), ByteTokenizer(), bundle, batch_size=8)
    with torch.no_grad():
        for spec in fixture_tasks():
            expected = reference_accuracy(model, spec, shuffled_examples(spec))
            assert result.tasks[spec["label"]]["accuracy"] == expected, spec["label"]


def test_batch_encoding_and_rank_shares(monkeypatch):
    """A tokenizer's encode_batch gives the same requests; ranks split every task's examples."""

    class BatchTokenizer(ByteTokenizer):
        calls = 0

        def encode_batch(self, texts, prepend_bos=False):
            self.calls += 1
            return [self.encode(text) for text in texts]

    bundle, batching = load_bundle(FIXTURE), BatchTokenizer()
    one_by_one, sizes = build_requests(bundle, ByteTokenizer())
    assert build_requests(bundle, batching) == (one_by_one, sizes)
    assert batching.calls == len(bundle.tasks)  # one call per task of up to ENCODE_CHUNK examples
    monkeypatch.setattr("harness.eval.core.ENCODE_CHUNK", 3)
    assert build_requests(bundle, batching) == (one_by_one, sizes)
    assert batching.calls == len(bundle.tasks) + sum(math.ceil(n / 3) for n in sizes)
    shares = [build_requests(bundle, ByteTokenizer(), rank=r, world_size=3)[0] for r in range(3)]
    for rank, share in enumerate(shares):
        assert all(r.example % 3 == rank for r in share)
    assert sorted((r.task, r.example) for share in shares for r in share) == sorted(
        (r.task, r.example) for r in one_by_one
    )
    assert sizes == [4, 4, 4, 4, 4, 3]


def test_batches_hold_whole_examples_longest_first():
    tokenizer, bundle = ByteTokenizer(), load_bundle(FIXTURE)
    requests, _ = build_requests(bundle, tokenizer)
    batches = pack_batches(requests, 6)
    lengths = [r.length for batch in batches for r in batch]
    assert lengths == sorted(lengths, reverse=True)
    assert sorted(map(id, (r for batch in batches for r in batch))) == sorted(map(id, requests))
    for batch in batches:
        assert len(batch) == 1 or sum(len(r.rows) for r in batch) <= 6


# data-parallel ranks -------------------------------------------------------------------------
def _rank_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # this child only: stay on the loopback interface
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        result = evaluate_core(tiny_gpt(), ByteTokenizer(), load_bundle(FIXTURE), batch_size=4)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"core": result.core, "tasks": result.tasks}))
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_single_process_result(tmp_path):
    single = evaluate_core(tiny_gpt(), ByteTokenizer(), load_bundle(FIXTURE), batch_size=4)
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["tasks"] == single.tasks
        assert got["core"] == single.core


# config and bundle checks --------------------------------------------------------------------
def _cfg(**core) -> OmegaConf:
    cfg = OmegaConf.create(
        {"paths": {"data_dir": "/nonexistent"}, "eval": OmegaConf.load(REPO / "configs/eval/bpb.yaml")}
    )
    for key, value in core.items():
        OmegaConf.update(cfg, f"eval.core.{key}", value)
    return cfg


def test_core_config_reads_the_eval_yaml():
    core = core_config(_cfg())
    assert core.bundle_dir == "/nonexistent/eval_bundle"
    assert core.bundle_url == "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
    assert core.max_per_task == 500 and core.batch_size > 0 and core.enabled is False


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_per_task", 0, "eval.core.max_per_task=0 must be positive, or -1 for every example"),
        ("batch_size", 0, "eval.core.batch_size=0 must be positive"),
        ("every", "often", "eval.core.every='often' must be an integer"),
    ],
)
def test_core_config_rejects_bad_values(key, value, message):
    with pytest.raises(ConfigError) as error:
        core_config(_cfg(**{key: value}))
    assert str(error.value) == message


def test_check_bundle_names_the_missing_folder_and_the_fix(tmp_path):
    with pytest.raises(ConfigError) as error:
        check_bundle(_cfg(bundle_dir=str(tmp_path / "absent")))
    assert str(error.value) == (
        f"eval.core.bundle_dir={tmp_path / 'absent'} does not exist; "
        "fetch the CORE bundle with `python -m harness.prepare eval=core`"
    )
    assert [t.label for t in check_bundle(_cfg(bundle_dir=str(FIXTURE))).tasks] == [
        "copa_mini",
        "arc_mini",
        "arc_mini_zeroshot",
        "winograd_mini",
        "jeopardy_mini",
        "lambada_mini",
    ]


def _broken_bundle(tmp_path: Path, edit) -> Path:
    root = tmp_path / "eval_bundle"
    shutil.copytree(FIXTURE, root)
    edit(root)
    return root


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: (r / "core.yaml").unlink(), "{root}/core.yaml is missing: a CORE bundle needs core.yaml"),
        (
            lambda r: (r / "eval_data/world_knowledge/arc_mini.jsonl").unlink(),
            "{root}/eval_data/world_knowledge/arc_mini.jsonl is missing (dataset_uri of task 'arc_mini' in core.yaml)",
        ),
        (
            lambda r: _replace(r / "eval_meta_data.csv", "lambada_mini,", "lambada_maxi,"),
            "{root}/eval_meta_data.csv has no row for task 'lambada_mini' (its 'Eval Task' column)",
        ),
        (
            lambda r: _replace(r / "eval_meta_data.csv", "Random baseline", "Baseline"),
            "{root}/eval_meta_data.csv has no 'Random baseline' column",
        ),
        (
            lambda r: _replace(
                r / "eval_meta_data.csv",
                "copa_mini,commonsense reasoning,multiple choice,0,50",
                "copa_mini,commonsense reasoning,multiple choice,0,fifty",
            ),
            "{root}/eval_meta_data.csv: Random baseline 'fifty' of task 'copa_mini' is not a number",
        ),
        (
            lambda r: (r / "eval_meta_data.csv").unlink(),
            "{root}/eval_meta_data.csv is missing: a CORE bundle needs eval_meta_data.csv",
        ),
        (lambda r: _replace(r / "core.yaml", "icl_tasks:", "tasks:"), "{root}/core.yaml has no 'icl_tasks' list"),
        (
            lambda r: _replace(r / "core.yaml", "icl_task_type: schema", "icl_task_type: cloze"),
            "{root}/core.yaml: icl_tasks[3] (winograd_mini): icl_task_type='cloze' is not one of multiple_choice, "
            "schema, language_modeling",
        ),
        (
            lambda r: _replace(r / "core.yaml", "num_fewshot: [1]", "num_fewshot: 1"),
            "{root}/core.yaml: icl_tasks[3] (winograd_mini): num_fewshot=1 must be a list of counts, e.g. [10]",
        ),
        (
            lambda r: _replace(r / "core.yaml", "  dataset_uri: language_understanding/lambada_mini.jsonl\n", ""),
            "{root}/core.yaml: icl_tasks[5] has no 'dataset_uri'",
        ),
    ],
    ids=[
        "no-core-yaml",
        "no-data-file",
        "no-baseline-row",
        "no-baseline-column",
        "bad-baseline",
        "no-csv",
        "no-task-list",
        "bad-task-type",
        "bad-fewshot",
        "no-dataset-uri",
    ],
)
def test_malformed_bundles_give_one_line_errors(tmp_path, edit, message):
    root = _broken_bundle(tmp_path, edit)
    with pytest.raises(ConfigError) as error:
        check_bundle(_cfg(bundle_dir=str(root)))
    assert str(error.value) == message.format(root=root)
    assert "\n" not in str(error.value)


def test_malformed_examples_are_named_by_file_and_line(tmp_path):
    root = _broken_bundle(
        tmp_path,
        lambda r: _replace(
            r / "eval_data/language_understanding/lambada_mini.jsonl", '"continuation": "rain"', '"answer": "rain"'
        ),
    )
    with pytest.raises(ConfigError, match=r"lambada_mini.jsonl:3: a language_modeling example needs 'continuation'"):
        evaluate_core(UniformModel(), ByteTokenizer(), load_bundle(root))


def test_result_record_and_count():
    result = CoreResult(core=0.5, tasks={"a": {"accuracy": 0.75, "centered": 0.5, "num_examples": 4}})
    assert result.to_record() == {"core": 0.5, "core/a": 0.5, "core_acc/a": 0.75}
    assert result.num_examples == 4
    assert math.isclose((0.75 - 0.5) / (1 - 0.5), 0.5)


# task-file data errors: one line naming the task and the example -----------------------------
def test_a_gold_out_of_range_is_named_by_task_file_and_line(tmp_path):
    """arc_mini is 2-shot: a bad gold on any example would index past its choices when that example
    is shown solved as another's few-shot example (an IndexError before)."""
    arc = "eval_data/world_knowledge/arc_mini.jsonl"
    root = _broken_bundle(tmp_path, lambda r: _replace(r / arc, '"Neon"], "gold": 1}', '"Neon"], "gold": 4}'))
    with pytest.raises(ConfigError) as error:
        evaluate_core(UniformModel(), ByteTokenizer(), load_bundle(root))
    assert str(error.value) == (
        f"CORE task 'arc_mini', {root / arc}:2: gold=4 is not an index into its 4 choices (0..3)"
    )


def test_a_schema_gold_must_index_the_context_options(tmp_path):
    winograd = "eval_data/language_understanding/winograd_mini.jsonl"
    root = _broken_bundle(
        tmp_path, lambda r: _replace(r / winograd, '"was hungry.", "gold": 0', '"was hungry.", "gold": "0"')
    )
    with pytest.raises(
        ConfigError, match=r"^CORE task 'winograd_mini', .*winograd_mini.jsonl:1: gold='0' is not an index"
    ):
        evaluate_core(UniformModel(), ByteTokenizer(), load_bundle(root))


def test_an_answer_longer_than_the_models_limit_names_the_task_example_and_line():
    """At max_seq_len=4 no answer of the first task (copa_mini) fits with the token before it; the
    error names the task, the example's index in evaluation order and its line in the file."""
    bundle = load_bundle(FIXTURE)
    with pytest.raises(ConfigError) as error:
        build_requests(bundle, ByteTokenizer(), max_seq_len=4)
    message = str(error.value)
    assert message.startswith("CORE task 'copa_mini' example ")
    assert f"({FIXTURE / 'eval_data/commonsense_reasoning/copa_mini.jsonl'}:" in message
    assert message.endswith("does not fit in max_seq_len=4")
    assert "\n" not in message


def test_a_context_that_does_not_tokenize_as_a_prefix_names_the_example_line(tmp_path):
    """A tokenizer that merges the last context byte with the continuation's first (as BPE can)."""

    class MergingTokenizer(ByteTokenizer):
        def encode(self, text: str, prepend_bos: bool = False) -> list[int]:
            ids = super().encode(text, prepend_bos)
            return [*ids[:-6], 1000, *ids[-4:]] if text.endswith("to rain") else ids  # "o " as one token

    lambada = load_bundle(FIXTURE).tasks[-1]
    bundle = Bundle(FIXTURE, (lambada,))
    with pytest.raises(ConfigError) as error:
        build_requests(bundle, MergingTokenizer())
    lines = lambada.data_path.read_text().splitlines()
    (line,) = [n for n, text in enumerate(lines, 1) if '"rain"' in text]
    (idx,) = [i for i, item in enumerate(load_examples(lambada)) if item["continuation"] == "rain"]
    assert str(error.value) == (
        f"CORE task 'lambada_mini' example {idx} ({lambada.data_path}:{line}): the context's tokens are not a "
        "strict prefix of the context-plus-continuation's tokens"
    )
