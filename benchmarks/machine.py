"""The CPU a benchmark ran on, for the line above the table it prints.

    from machine import describe_cpu   # the scripts run as `python benchmarks/X.py`
    describe_cpu(2)     # "AMD EPYC 7B13 (avx2), 2 threads"
    describe_cpu()      # "AMD EPYC 7B13 (avx2), 2 logical CPUs, default threads"

Imported inside the function that prints, not at the top of a script:
tests/robustness/test_soak.py loads benchmarks/soak.py by path, without
benchmarks/ on sys.path.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The first "model name" of /proc/cpuinfo; else platform.processor() / platform.machine()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def vector_units() -> str:
    """The widest matrix/vector units of /proc/cpuinfo that torch and onnxruntime use: "amx", "avx512", "avx2" or ""."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = next((line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags")), [])
    return next((name for name, flag in (("amx", "amx_tile"), ("avx512", "avx512f"), ("avx2", "avx2")) if flag in flags), "")


def describe_cpu(threads: int | None = None) -> str:
    """CPU model and the thread count the benchmark used.

    threads: what the script set (torch.get_num_threads(), onnxruntime intra-op
    threads); None when it left the libraries at their default, then the line
    gives os.cpu_count() logical CPUs instead (onnxruntime and torch default to
    the physical cores, which can be fewer).
    """
    units = vector_units()
    model = f"{cpu_model()} ({units})" if units else cpu_model()
    if threads is None:
        return f"{model}, {os.cpu_count() or 1} logical CPUs, default threads"
    return f"{model}, {threads} thread{'s' if threads != 1 else ''}"
