"""This project's CPU training step against the reference's (nanochat 348fbb3), in one process.

    git --git-dir=<nanochat mirror> worktree add /tmp/nanochat-348fbb3 348fbb3   # or: git archive | tar -x
    OMP_NUM_THREADS=1 python experiments/rope_mlp_lr/cpu_vs_reference/bench.py /tmp/nanochat-348fbb3
    python experiments/rope_mlp_lr/cpu_vs_reference/bench.py /tmp/nanochat-348fbb3 --depth 6 --dim 384

Both sides are built as each normally runs on CPU: the reference as scripts/base_train.py builds it
(GPT on meta, to_empty, init_weights, torch.compile(model, dynamic=False), model.setup_optimizer(),
whose AdamW and Muon steps are its @torch.compile'd fused kernels, float32 outside Muon's bf16
orthogonalization), this project through `harness.bench.build_training_step` (the trainer's own
harness.run.build: build_model, compile_for_training, build_optimizer, optimizer_step). Same depth, width,
heads (head_dim 32), window pattern SSSL, vocabulary and random tokens. One step = forward and
backward of one batch, the optimizer step, zero_grad, the loss read back (`.item()`), as each
trainer does. After warm-up (compilation), blocks of steps alternate AB BA AB ... and the result
is mean(project) / mean(reference) per block with Fieller's 95% interval, paired by block.

Nothing of nanochat is copied here: it is imported from the checkout given on the command line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
PROGRAM = ("python", "experiments/rope_mlp_lr/cpu_vs_reference/bench.py")  # its command line, in the records
sys.path.insert(0, str(REPO))

from harness.bench.ab import interleaved_order  # noqa: E402
from harness.bench.common import build_training_step, provenance_fields  # noqa: E402
from harness.results.stats import ratio_compare  # noqa: E402

HEAD_DIM = 32  # the tiny model's head size; the reference gets the same head count


def project_step(args) -> callable:
    overrides = [
        "model=tiny",
        f"model.depth={args.depth}",
        f"model.aspect_ratio={args.dim // args.depth}",
        f"model.sequence_len={args.seq_len}",
        f"data.vocab_size={args.vocab}",
        f"train.device_batch_size={args.batch}",
        f"train.total_batch_tokens={args.batch * args.seq_len}",
        "train.device=cpu",
    ]
    built = build_training_step(overrides, torch.device("cpu"))
    assert built.spec.model.n_embd == args.dim, built.spec.model.n_embd
    return built.step


def reference_step(args, nanochat: Path) -> callable:
    sys.path.insert(0, str(nanochat))
    from nanochat.gpt import GPT, GPTConfig

    heads = args.dim // HEAD_DIM
    config = GPTConfig(
        sequence_len=args.seq_len,
        vocab_size=args.vocab,
        n_layer=args.depth,
        n_head=heads,
        n_kv_head=heads,
        n_embd=args.dim,
        window_pattern="SSSL",
    )
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    compiled = torch.compile(model, dynamic=False)
    optimizer = model.setup_optimizer()
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=generator)
    y = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=generator)

    def step() -> float:
        loss = compiled(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        return loss.item()

    return step


def timed(step, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        step()
    return (time.perf_counter() - started) / count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nanochat", type=Path, help="a checkout of karpathy/nanochat at 348fbb3")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side (compilation)")
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--steps-per-block", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the record as JSON")
    args = parser.parse_args(argv)
    if not (args.nanochat / "nanochat" / "gpt.py").is_file():
        parser.error(f"{args.nanochat} is not a nanochat checkout (no nanochat/gpt.py)")
    torch.manual_seed(0)
    sides = {"project": project_step(args), "reference": reference_step(args, args.nanochat)}
    for step in sides.values():
        for _ in range(args.warmup):
            step()
    blocks: dict[str, list[float]] = {"project": [], "reference": []}
    for block in range(args.blocks):
        for side in interleaved_order(block):
            name = "project" if side == "a" else "reference"
            blocks[name].append(timed(sides[name], args.steps_per_block))
    result = ratio_compare(list(enumerate(blocks["project"])), list(enumerate(blocks["reference"])), alpha=0.05)
    record = {
        "shape": {k: getattr(args, k) for k in ("depth", "dim", "batch", "seq_len", "vocab")},
        "project_over_reference": 1 + result.delta_pct / 100,
        "ci95": [1 + result.low_pct / 100, 1 + result.high_pct / 100],
        "p_value": result.p_value,
        "project_step_s": statistics.fmean(blocks["project"]),
        "reference_step_s": statistics.fmean(blocks["reference"]),
        "blocks_s": blocks,
        "cpu_threads": torch.get_num_threads(),
        **provenance_fields(sys.argv[1:] if argv is None else argv, program=PROGRAM),
    }
    print(
        f"depth {args.depth}, dim {args.dim}, {args.batch} x {args.seq_len} tokens: project / reference step time "
        f"{record['project_over_reference']:.3f} (95% CI {record['ci95'][0]:.3f} to {record['ci95'][1]:.3f}); "
        f"{1000 * record['project_step_s']:.1f} ms vs {1000 * record['reference_step_s']:.1f} ms, "
        f"{torch.get_num_threads()} threads"
    )
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
