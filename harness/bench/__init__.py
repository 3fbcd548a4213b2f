"""GPU speed benchmarks: `python -m harness.bench throughput|ab|rope|suite [OVERRIDES...] [options]`.

    python -m harness.bench throughput model=d12 model.window_pattern=L     # one training step's tok/s and MFU
    python -m harness.bench throughput model=d24 train.device_batch_size=16
    python -m harness.bench rope                                            # rotary + QK norm alone, d12..d24
    python -m harness.bench ab "rope=slice" "rope=chunk" model=d12          # B's step time vs A's, with a CI
    python -m harness.bench throughput model=d12 --profile trace.json       # + a torch.profiler trace
    python -m harness.bench suite                                           # all of issue 16's cases (suite.py)

`throughput` composes the config as `python -m harness.train` would and times the training step
through the same functions the trainer calls (harness.run.build: build_model, compile_for_training,
build_optimizer, optimizer_step) on random tokens already on the device, so data loading is not
timed. It reports the median step after warm-up (the first steps compile), tokens per second,
model FLOPs per token (`GPT.flops_per_token`), MFU against the datasheet peak and against the
bf16 matmul rate measured in the same process, and peak memory; the JSON it writes is what
`python -m harness.plan --throughput FILE` reads.

`ab` builds two configs (A's and B's own overrides, each one quoted string, on top of shared
overrides) in one process, warms both up, then times them in interleaved blocks (AB BA AB ...,
so drift of the machine cancels) and reports B's mean step time relative to A's in percent with
a 95% interval (Fieller's, paired by block) and the paired t-test's p-value: an A/A comparison
holds 0 in its interval 95% of the time.

`rope` times RMSNorm(rotary(x)) for q and k as one attention layer applies them, forward,
backward and both, for every `rope.split`, at the head counts of d12..d24 (B x T x H x 128),
beside the memory-traffic floor: the bytes that must move divided by the bandwidth.

Both run on CPU too (smaller shapes, float32, no compilation) so the code path can be checked
anywhere; CPU numbers say nothing about a GPU.

Modules: `common` (device, timing, records, the one step builder), `throughput`, `ab` (the one A/B
method: interleaved blocks and Fieller's interval, used by the suite too), `rope`, `suite`, `cli`.
"""

from harness.bench.cli import main

__all__ = ["main"]
