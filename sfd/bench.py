"""What every benchmark shares: the device it runs on, a peak-memory meter, timing (warm-up, synchronised clocks,
medians) and the writers of its results (Markdown tables, JSON). ``scripts/bench.py`` and
``tools/bench_vs_release.py`` build on it; no benchmark keeps its own copy of any of these.

Times are wall-clock milliseconds read after the device's queued work is done (``Accelerator.synchronize``); a row
reports the median of its timed calls, which one slow call (a page fault, another process) does not move.
"""

from __future__ import annotations

import contextlib
import gc
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

from sfd.device import Accelerator, DeviceError, default_device
from sfd.files import write_json_atomic, write_text_atomic

MIB = 2**20


# -- the device ---------------------------------------------------------------------------------------------------

def resolve_device(name: Optional[str]) -> torch.device:
    """The requested device, else the device layer's ($SFD_DEVICE, else the machine's accelerator, else the CPU);
    a one-line ValueError for an unknown or absent device."""
    try:
        device = default_device(name)
        present = Accelerator.of(device).count()
    except (DeviceError, ValueError) as error:  # unknown type, missing runtime, bad index
        raise ValueError(f"--device {name}: {error}") from None
    if present == 0:
        raise ValueError(f"--device {name}: no {device.type} device is available on this machine")
    if device.index is not None and device.index >= present:
        raise ValueError(f"--device {name}: only {present} {device.type} device(s) present")
    return device


def device_name(device: torch.device) -> str:
    """The accelerator's product name, or the CPU's model with the number of threads torch uses."""
    accelerator = Accelerator.of(device)
    if not accelerator.is_cpu:
        return accelerator.device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"CPU {name} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read afterwards includes it (a no-op on the CPU)."""
    Accelerator.of(device).synchronize(device)


# -- memory -------------------------------------------------------------------------------------------------------

class MemoryMeter:
    """Peak memory of one measurement, in MiB: call :meth:`start`, run, then :meth:`peak_memory_mib`.

    Accelerators: the device allocator's peak since ``start`` (``torch.accelerator.max_memory_allocated``: weights,
    optimizer state, activations; NaN where the backend does not track one). CPU: the growth of the process's peak
    RSS since ``start``; on Linux the peak (VmHWM) is reset at each start through /proc/self/clear_refs, elsewhere
    the growth of ``ru_maxrss`` is used, which only counts memory above the highest earlier peak (a lower bound).
    On the CPU memory already resident at the start (weights built before it, the allocator's cache) is not
    counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.accelerator = Accelerator.of(device)
        self.resettable = self.accelerator.is_cpu and self._reset_rss_peak()
        if not self.accelerator.is_cpu:
            self.method = "torch.accelerator.max_memory_allocated (weights + optimizer state + activations)"
        elif self.resettable:
            self.method = "peak RSS growth during the row (Linux VmHWM, reset per row); memory already resident " \
                          "is not counted"
        else:
            self.method = "growth of the process peak RSS (resource.getrusage ru_maxrss); a lower bound"
        self.start_bytes = 0

    @staticmethod
    def _reset_rss_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # 5: reset the peak resident set size (proc(5))
            return True
        except OSError:
            return False

    @staticmethod
    def _rss_peak_bytes() -> int:
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere

    def start(self) -> None:
        gc.collect()
        if not self.accelerator.is_cpu:
            self.accelerator.synchronize(self.device)
            self.accelerator.empty_cache()
            self.accelerator.reset_peak_memory_stats(self.device)
            return
        if self.resettable:
            self._reset_rss_peak()
        self.start_bytes = self._rss_peak_bytes()

    def peak_memory_mib(self) -> float:
        if not self.accelerator.is_cpu:
            peak = self.accelerator.max_memory_allocated(self.device)
            return peak / MIB if peak is not None else float("nan")
        return max(0, self._rss_peak_bytes() - self.start_bytes) / MIB


# -- networks to time and outputs to compare ----------------------------------------------------------------------

def perturb_weights(model: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    """Add N(0, scale²) noise to every trainable weight, so that the zero-initialised adaLN and output layers of a
    freshly built network give non-trivial outputs to time and compare (the fixed position table is not trained
    and stays as it is)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator).to(parameter.device))


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max|ours − reference| / max|reference| in float32 on the CPU (the measure of docs/goldens.md §5); the
    absolute error where the reference is all zeros."""
    ours, reference = ours.detach().float().cpu(), reference.detach().float().cpu()
    scale = reference.abs().max().item()
    return (ours - reference).abs().max().item() / (scale if scale > 0 else 1.0)


# -- timing -------------------------------------------------------------------------------------------------------

def elapsed_ms(call: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one ``call``, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def time_calls(call: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """``warmup`` untimed calls (allocations, kernel selection, compilation), then the milliseconds of each of
    ``iters`` timed calls."""
    for _ in range(warmup):
        call()
    return [elapsed_ms(call, device) for _ in range(iters)]


def timing_summary(times_ms: Sequence[float], items: int) -> dict:
    """The median of ``times_ms`` and the rate of ``items`` (images, samples) per second it gives."""
    median = statistics.median(times_ms)
    return {"ms": median, "per_s": items / (median / 1e3), "times_ms": list(times_ms)}


# -- results ------------------------------------------------------------------------------------------------------

def format_cell(value: object, digits: int = 2) -> str:
    """A table cell: ``–`` for a missing value, floats with ``digits`` decimals, anything else as ``str``."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: Optional[str] = None) -> str:
    """A Markdown table. ``align`` has one letter per column, ``l`` or ``r`` (default: the first column left, the
    others right, as numbers read); cells go through :func:`format_cell`."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"markdown_table: {len(header)} columns but align {align!r}")
    rule = "|" + "|".join("---:" if letter == "r" else "---" for letter in align) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(format_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def run_header(device: torch.device, *details: str) -> str:
    """The line printed above a table: where it ran (device, torch) and what (``details``)."""
    return " | ".join([f"# {device_name(device)}", f"torch {torch.__version__}", *details])


def write_json(path: str | Path, payload: dict) -> Path:
    """The results as indented JSON, written atomically (no half-written file after an interruption)."""
    return write_json_atomic(path, payload, indent=2)


def write_markdown(path: str | Path, sections: Sequence[tuple[str, str]], title: str) -> Path:
    """A Markdown file of (heading, body) sections under ``title``, written atomically."""
    parts = [f"# {title}\n"] + [f"## {heading}\n\n{body}\n" for heading, body in sections]
    return write_text_atomic(path, "\n".join(parts))
