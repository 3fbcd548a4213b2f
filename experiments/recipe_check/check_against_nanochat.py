"""Cross-check recipe=nanochat_2026_07 against nanochat 92d63d4's own code, on CPU in float32.

    git clone https://github.com/karpathy/nanochat /tmp/nanochat && git -C /tmp/nanochat checkout 92d63d4
    PYTHONPATH=.:/tmp/nanochat python experiments/recipe_check/check_against_nanochat.py [--muon-wd 0]

Builds the same small model in both (4 layers, dim 128, T 256), initialises both from seed 42 and
compares every initial tensor, then trains both for five steps on the same tokens with each side's
optimizer and this harness's schedules (checked against base_train's formulas, written out below),
printing both losses and the largest parameter difference. Imports the reference; copies none of it.
"""

from __future__ import annotations

import argparse
import math

import torch
from nanochat.gpt import GPT as ReferenceGPT
from nanochat.gpt import GPTConfig as ReferenceConfig

from harness.cli import compose
from harness.config import lr_placement, model_config, optim_config
from harness.optim import build_optimizer
from harness.schedules import lr_multiplier, muon_momentum, weight_decay_multiplier
from models.gpt import GPT

STEPS, HORIZON = 5, 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--muon-wd", type=float, default=None, help="override optim.muon.weight_decay")
    args = parser.parse_args()
    overrides = ["recipe=nanochat_2026_07", "model=tiny", "model.head_dim=32", "model.aspect_ratio=32"]
    overrides += ["data.vocab_size=256", "model.sequence_len=256", "train.total_batch_tokens=524288"]
    if args.muon_wd is not None:
        overrides.append(f"optim.muon.weight_decay={args.muon_wd}")
    cfg = compose(overrides)
    config = model_config(cfg)
    reference = ReferenceGPT(
        ReferenceConfig(
            sequence_len=256, vocab_size=256, n_layer=4, n_head=config.n_head, n_kv_head=config.n_head, n_embd=128
        )
    )
    torch.manual_seed(42)
    reference.init_weights()
    ours = GPT(config)
    torch.manual_seed(42)
    ours.init_weights()
    ref_state = reference.state_dict()
    differing = [k for k, v in ours.state_dict().items() if not torch.equal(v, ref_state[k])]
    print(f"init: {len(ours.state_dict())} tensors, {len(differing)} differ {differing}")

    opt, rows = build_optimizer(ours, optim_config(cfg), lr_placement(cfg), 524288, "cpu")
    wd = next(r.weight_decay for r in rows if r.optimizer == "muon")
    ref_opt = reference.setup_optimizer(
        unembedding_lr=0.008, embedding_lr=0.3, scalar_lr=0.5, matrix_lr=0.02, weight_decay=wd
    )
    tokens = torch.Generator().manual_seed(0)
    for step in range(STEPS):
        idx = torch.randint(0, 256, (2, 256), generator=tokens)
        lrm = lr_multiplier(step, HORIZON, 0.0, 0.65, 0.05, 40)
        momentum = muon_momentum(step, 0.85, 0.97, 400, 0.90, HORIZON, 0.65)
        wdm = weight_decay_multiplier(step, HORIZON, "cosine")
        # base_train's formulas for these early steps: warmup (it+1)/40, momentum 0.85 -> 0.97 over 400, cosine wd.
        assert lrm == (step + 1) / 40 and abs(momentum - ((1 - step / 400) * 0.85 + step / 400 * 0.97)) < 1e-15
        assert abs(wdm - 0.5 * (1 + math.cos(math.pi * step / HORIZON))) < 1e-15
        for optimizer in (ref_opt, opt):
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lrm
                if group["kind"] == "muon":
                    group["momentum"], group["weight_decay"] = momentum, wd * wdm
        losses = []
        for model, optimizer in ((reference, ref_opt), (ours, opt)):
            loss = model(idx, idx)
            loss.backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)
            losses.append(loss.item())
        print(f"step {step}: loss reference {losses[0]:.9f}  ours {losses[1]:.9f}")
    ref_state = reference.state_dict()
    worst = max(((v - ref_state[k]).abs().max().item(), k) for k, v in ours.state_dict().items())
    print(f"largest parameter difference after {STEPS} steps: {worst[0]:.3g} ({worst[1]}), Muon wd {wd:.4g}")


if __name__ == "__main__":
    main()
