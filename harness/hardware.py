"""Device facts the harness needs: which device to train on, its datasheet peak for MFU, and the
peak memory a run has used so far (metrics.jsonl's and summary.json's `peak_memory_gib`)."""

from __future__ import annotations

import contextlib
import resource
import sys

import torch

from harness.errors import ConfigError

# Dense bf16 tensor-core peaks (FLOP/s) from the datasheets, for MFU. Keys match substrings of
# torch.cuda.get_device_name(); unknown GPUs report no MFU rather than a wrong one.
BF16_PEAK_FLOPS = {
    "H100": 989e12,  # SXM; the PCIe card is slower, so its MFU reads low
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "4090": 165e12,
}


def resolve_device(requested: str, setting: str = "train.device=") -> torch.device:
    """auto: CUDA where one is visible, else the CPU. `setting` is how the user chose it (a config
    key, or a benchmark's "--device "), for the error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting}cuda but no CUDA device is visible; use {setting}cpu or auto")
    return torch.device(requested)


def peak_flops(device: torch.device) -> float | None:
    """Datasheet bf16 peak of one device, or None (CPU, unknown GPU): MFU is then not reported."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in BF16_PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


GIB = 2**30


def peak_memory_bytes(device: torch.device) -> int:
    """The most memory this process has held so far: on a GPU, the most its tensors occupied
    (torch.cuda.max_memory_allocated, as torchtitan logs it; the caching allocator's reserve is
    more); on CPU, the process's peak resident set (everything it held, Python and libraries too).
    On Linux that is /proc's VmHWM, not getrusage's ru_maxrss, which carries over the peak of the process
    that exec'd this one (a torchrun worker would report its launcher's, a test's subprocess pytest's)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with contextlib.suppress(OSError, StopIteration):
        return proc_status_bytes("VmHWM")
    return maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sys.platform)


def proc_status_bytes(field: str, status: str = "/proc/self/status") -> int:
    """A memory field of /proc/<pid>/status ("VmHWM:   123456 kB"), in bytes (Linux only)."""
    with open(status) as lines:
        line = next(line for line in lines if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024


def maxrss_bytes(ru_maxrss: int, platform: str) -> int:
    """getrusage's ru_maxrss in bytes: Linux counts KiB (getrusage(2)), macOS bytes."""
    return ru_maxrss if platform == "darwin" else ru_maxrss * 1024
