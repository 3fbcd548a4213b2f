"""precision=bf16|fp8 (harness/precision.py): which layers run in float8, the float8 matmul against a
hand-written quantize-multiply-rescale, evaluation with float8 switched off, the run's identity, and a
CPU smoke run in emulated float8 that logs its layers, learns like bf16 and resumes bitwise."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from harness.cli import compose
from harness.config import model_config
from harness.inspect import describe
from harness.precision import (
    convert_for_training,
    float8_selection,
    full_precision_linears,
    is_float8,
    precision_config,
)
from harness.results.rundir import RunDir
from harness.run.build import materialize
from harness.run.decision import config_differences
from harness.run.spec import resolved_config
from models.gpt import GPT

E4M3_MAX = 448.0  # the largest float8_e4m3fn, what the forward casts scale into
CPU = torch.device("cpu")


def quantize(t: torch.Tensor, dim: int | None, power_of_2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic float8 scaling as the reference describes it: scale = 448 / amax (in float64),
    clamp, cast to e4m3; rowwise rounds the scale down to a power of two."""
    amax = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    scale = (E4M3_MAX / amax.double().clamp_min(1e-12)).float()
    if power_of_2:
        scale = torch.exp2(torch.floor(torch.log2(scale)))
    return (t * scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float(), scale


# The smoke model at dim 128: the smallest width whose every block matrix and lm_head pass the reference's
# float8 filter (dim 64 has no Linear with min(in, out) >= 128).
WIDE = "model.aspect_ratio=32"


def smoke_model(*overrides: str):
    cfg = compose(["experiment=smoke", WIDE, *overrides])
    model = materialize(model_config(cfg), CPU, seed=0)
    with torch.no_grad():
        for p in model.parameters():  # zero output projections would make every float8 matmul trivial
            p.normal_(0, 0.1)
    return cfg, model


def test_d12_converts_the_block_matrices_and_lm_head_as_the_reference():
    """The reference converted 73 of d12's 80 Linear layers: the 72 block matrices and lm_head; the
    6 value-embedding gates (32 -> 6) and its smear gate (absent here) stayed."""
    model = GPT.on_meta(model_config(compose(["model=d12"])))
    converted, kept = float8_selection(model)
    assert len(converted) == 73 and "lm_head" in converted
    assert sorted(kept) == sorted(f"transformer.h.{i}.attn.ve_gate" for i in (1, 3, 5, 7, 9, 11))


def reference_fp8_filter(module: torch.nn.Module) -> bool:
    """nanochat 92d63d4's fp8_module_filter (scripts/base_train.py), written out: a Linear whose in and
    out features both divide by 16 and whose smaller side is at least 128."""
    if not isinstance(module, torch.nn.Linear):
        return False
    if module.in_features % 16 != 0 or module.out_features % 16 != 0:
        return False
    return min(module.in_features, module.out_features) >= 128


@pytest.mark.parametrize("recipe", ["nanochat_2026_01", "nanochat_2026_07"])
@pytest.mark.parametrize("depth", [4, 8, 12, 16, 20, 24, 26, 28, 32, 40])
def test_float8_selection_is_the_references_filter_at_every_depth(recipe, depth):
    model = GPT.on_meta(model_config(compose([f"recipe={recipe}", f"model.depth={depth}"])))
    expected = [name for name, m in model.named_modules() if reference_fp8_filter(m)]
    converted, _ = float8_selection(model)
    assert converted == expected


def test_d32_keeps_its_value_embedding_gates_as_the_reference():
    """January recipe at d32: ve_gate is 32 -> 16, both multiples of 16, but smaller than 128: kept."""
    model = GPT.on_meta(model_config(compose(["model.depth=32"])))
    converted, kept = float8_selection(model)
    assert sorted(kept) == sorted(f"transformer.h.{i}.attn.ve_gate" for i in range(1, 32, 2))
    assert len(converted) == 32 * 6 + 1


def test_the_tiny_smoke_model_has_nothing_large_enough_for_float8():
    model = GPT.on_meta(model_config(compose(["experiment=smoke"])))
    assert float8_selection(model)[0] == []


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_a_float8_layer_computes_the_quantized_matmul(recipe):
    cfg, model = smoke_model("precision=fp8", f"precision.recipe={recipe}")
    weight = model.transformer.h[0].mlp.c_fc.weight.detach().clone()
    convert_for_training(model, precision_config(cfg), CPU)
    layer = model.transformer.h[0].mlp.c_fc
    assert is_float8(layer) and layer.weight is model.transformer.h[0].mlp.c_fc.weight
    x = torch.randn(16, weight.shape[1])
    if recipe == "tensorwise":
        (x8, sx), (w8, sw) = quantize(x, None, False), quantize(weight, None, False)
        expected = (x8 @ w8.T) / (sx * sw)
    else:  # one scale per row of the input and per output feature of the weight
        (x8, sx), (w8, sw) = quantize(x, -1, True), quantize(weight, -1, True)
        expected = (x8 @ w8.T) / (sx * sw.T)
    out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    exact = x @ weight.T
    assert (out - exact).norm() / exact.norm() > 1e-3  # float8 rounding is visible: the layer is not plain


@pytest.mark.parametrize("recipe", ["nanochat_2026_01", "nanochat_2026_07"])  # nn.Linear, CastLinear
def test_evaluation_switches_float8_off_and_back_on(recipe):
    cfg, model = smoke_model("precision=fp8", f"recipe={recipe}")
    linear_class = type(model.transformer.h[0].mlp.c_fc)
    plain = materialize(model_config(cfg), CPU, seed=0)
    plain.load_state_dict(model.state_dict())
    convert_for_training(model, precision_config(cfg), CPU)
    assert model.state_dict().keys() == plain.state_dict().keys()  # checkpoints are interchangeable
    idx = torch.randint(0, model.config.vocab_size, (2, 32))
    with torch.no_grad():
        float8_logits = model(idx)
        with full_precision_linears(model):
            assert not any(is_float8(m) for m in model.modules())
            assert torch.equal(model(idx), plain(idx))
            first = model.transformer.h[0].mlp.c_fc
            assert type(first) is linear_class  # what the bf16 variant evaluates with
        with full_precision_linears(model):  # the same plain modules each time: a compiled model compiles once
            assert model.transformer.h[0].mlp.c_fc is first
        assert sum(is_float8(m) for m in model.modules()) == len(float8_selection(plain)[0])
        assert torch.equal(model(idx), float8_logits)
    assert not torch.equal(float8_logits, plain(idx).detach())


def test_bf16_changes_no_module_and_old_configs_read_as_bf16():
    cfg, model = smoke_model()
    before = [type(m) for m in model.modules()]
    convert_for_training(model, precision_config(cfg), CPU)
    assert [type(m) for m in model.modules()] == before
    old = OmegaConf.create({k: v for k, v in resolved_config(cfg).items() if k != "precision"})
    assert precision_config(old).name == "bf16"


def test_precision_is_part_of_the_run_identity():
    bf16, fp8 = (
        resolved_config(compose(["experiment=smoke"])),
        resolved_config(compose(["experiment=smoke", "precision=fp8"])),
    )
    assert config_differences(bf16, fp8) == ["precision.emulate", "precision.name", "precision.recipe"]
    rowwise = resolved_config(compose(["experiment=smoke", "precision=fp8", "precision.recipe=rowwise"]))
    assert config_differences(fp8, rowwise) == ["precision.recipe"]
    excluded = compose([], with_hydra=True).hydra.job.config.override_dirname.exclude_keys
    assert not any(key.startswith("precision") for key in excluded)  # precision=fp8 names its own folder


def test_inspect_lists_the_float8_matrices_only_under_fp8():
    shown = describe(["model=d12", "precision=fp8"])
    assert "73 Linear layers converted, 6 kept" in shown
    assert "float8  transformer.h.*.mlp.c_fc  768 -> 3072  x12" in shown
    assert "kept    transformer.h.*.attn.ve_gate  32 -> 6  x6" in shown
    assert "the smaller at least 128" in shown
    assert "float8" not in describe(["model=d12"])


# a CPU run in emulated float8 ---------------------------------------------------------------
STEPS = 8


def run_args(tmp_path, *extra):
    return [
        "experiment=smoke",
        WIDE,
        f"paths.data_dir={tmp_path / 'data'}",
        "data.corpus_bytes=400000",  # a tenth of the smoke corpus: the tokenizer trains in about a second
        f"train.num_iterations={STEPS}",
        "train.checkpoint_every=4",
        "eval.val_every=4",
        "eval.val_tokens=2048",
        *extra,
    ]


@pytest.mark.slow
def test_fp8_smoke_logs_its_float8_layers_learns_like_bf16_and_resumes_bitwise(tmp_path, caplog):
    from harness.run.session import run_training
    from harness.run.spec import resolve_run

    caplog.set_level(logging.INFO, logger="ablate.precision")
    fp8_dir, bf16_dir, resumed_dir = tmp_path / "fp8", tmp_path / "bf16", tmp_path / "resumed"
    fp8 = run_training(resolve_run(compose(run_args(tmp_path, "precision=fp8"))), fp8_dir)
    assert "25 Linear layers converted to float8, 2 skipped (transformer.h.*.attn.ve_gate  x2)" in caplog.text
    bf16 = run_training(resolve_run(compose(run_args(tmp_path))), bf16_dir)
    assert fp8["status"] == bf16["status"] == "completed"
    assert fp8["final_val_bpb"] != bf16["final_val_bpb"]  # float8 rounding changed the run ...
    assert fp8["final_val_bpb"] == pytest.approx(bf16["final_val_bpb"], rel=0.02)  # ... and not its learning

    # Resume the fp8 run from its step-4 checkpoint: it must reach the same weights bit for bit.
    shutil.copytree(fp8_dir, resumed_dir)
    resumed = RunDir(resumed_dir)
    resumed.checkpoint_path(STEPS).unlink()
    resumed.write_summary({"status": "interrupted"})
    run_training(resolve_run(compose(run_args(tmp_path, "precision=fp8"))), resumed_dir)
    original = RunDir.load_checkpoint(RunDir(fp8_dir).checkpoint_path(STEPS))["model"]
    again = RunDir.load_checkpoint(resumed.checkpoint_path(STEPS))["model"]
    for name, tensor in original.items():
        assert torch.equal(tensor, again[name]), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_real_float8_matmuls_on_cuda_compute_the_quantized_matmul(recipe):
    """torch._scaled_mm (not the emulation) under bf16 autocast, as training runs it on a GPU."""
    cuda = torch.device("cuda")
    cfg = compose(["experiment=smoke", WIDE, "precision=fp8", f"precision.recipe={recipe}", "train.device=cuda"])
    model = materialize(model_config(cfg), cuda, seed=0)
    layer = model.transformer.h[0].mlp.c_fc
    with torch.no_grad():
        layer.weight.normal_(0, 0.1)
    weight = layer.weight.detach().clone()
    convert_for_training(model, precision_config(cfg), cuda)
    assert not model.transformer.h[0].mlp.c_fc.config.emulate
    x = torch.randn(64, weight.shape[1], device=cuda)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.transformer.h[0].mlp.c_fc(x)
    rowwise = recipe == "rowwise"  # the input is cast to bf16 by autocast before it is scaled
    (x8, sx), (w8, sw) = (
        quantize(x.bfloat16().float(), -1 if rowwise else None, rowwise),
        quantize(weight.bfloat16().float(), -1 if rowwise else None, rowwise),
    )
    expected = (x8 @ w8.T) / (sx * (sw.T if rowwise else sw))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
