"""The one device layer: which accelerator this process computes on, and every decision that depends on its kind.

:func:`resolve` picks the accelerator type: an explicit name (a ``--device`` flag) or the ``SFD_DEVICE`` environment
variable wins; otherwise the accelerator torch reports as available (an Ascend NPU when ``torch_npu`` is installed,
else CUDA, XPU or MPS through ``torch.accelerator``); otherwise the CPU. :class:`Accelerator` then answers everything
the rest of the project asks about it: the ``torch.device`` of a local rank, the process-group backend, autocast and
the gradient scaler for a precision, data-loader pinning, synchronisation, memory statistics and the device's name.
``sfd/distributed.py`` (the process-group layer) builds on it; no other module tests for a device type.

Precision names (docs/usage.md §10):

* ``no`` / ``fp32``: full float32, TF32 off;
* ``tf32``: float32 weights and activations, matrix products with TF32 inputs on CUDA (HF32 on an Ascend NPU) — the
  release's sampling numerics; on accelerators without such a switch (XPU, MPS) this is plain float32;
* ``bf16`` / ``fp16``: autocast of the model's forward on accelerators (fp16 training adds a gradient scaler).

The CPU always computes in float32: its bf16 matrix products are ~100× slower (docs/environment.md §2).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

DEVICE_ENV = "SFD_DEVICE"  # forces the accelerator type for every entry point (cpu | cuda | npu | xpu | mps)
DEVICE_TYPES = ("cpu", "cuda", "npu", "xpu", "mps")
PRECISIONS = ("no", "fp32", "tf32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
WITHOUT_FLOAT64 = frozenset({"mps"})  # Apple's Metal backend has no float64 tensors
WITHOUT_PINNING = frozenset({"cpu", "mps"})  # the DataLoader refuses to pin memory for MPS (unified memory anyway)
# Types whose float32 matmuls have a reduced-precision switch that tf32 turns on (see set_matmul_precision).
WITH_TF32_SWITCH = frozenset({"cuda", "npu"})
# The compiler each type's torch.compile (inductor) backend generates kernels with, checked before compiling.
COMPILER_PACKAGES = {"cuda": "triton", "xpu": "triton"}

AcceleratorQuery = Callable[[], Optional[str]]  # the available accelerator's type, or None


class DeviceError(RuntimeError):
    """A device that cannot be used as asked (unknown name, missing runtime); the message says why in one line."""


def parse_precision(name: str) -> str:
    """The canonical name of a precision setting: ``no`` is ``fp32``; unknown names raise ValueError."""
    if name not in PRECISIONS:
        raise ValueError(f"precision: unknown {name!r}; known: {', '.join(PRECISIONS)}")
    return "fp32" if name == "no" else name


def load_torch_npu() -> bool:
    """Import ``torch_npu`` when it is installed (importing it registers the ``npu`` device with torch); whether
    it is. Imported lazily so machines without Ascend software never load it."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    importlib.import_module("torch_npu")
    return True


@functools.cache
def detect_accelerator() -> Optional[str]:
    """The type of the accelerator this machine has, or None: an Ascend NPU when ``torch_npu`` is installed and
    sees one, else whatever ``torch.accelerator`` finds available (on a CUDA build without a GPU it would report
    ``cuda`` unless asked to check availability)."""
    if load_torch_npu() and torch.npu.is_available():
        return "npu"
    found = torch.accelerator.current_accelerator(check_available=True)
    return found.type if found is not None else None


def resolve(override: Optional[str] = None, detect: Optional[AcceleratorQuery] = None) -> "Accelerator":
    """The accelerator to compute on: ``override`` (e.g. a ``--device`` value; an index such as ``cuda:1`` is
    ignored here, the local rank picks the index), else ``$SFD_DEVICE``, else ``detect()`` (default
    :func:`detect_accelerator`; tests inject their own), else the CPU."""
    name = override or os.environ.get(DEVICE_ENV) or (detect or detect_accelerator)() or "cpu"
    return Accelerator.named(name)


def has_float64(device: torch.device) -> bool:
    """Whether ``device`` can hold float64 tensors (MPS cannot)."""
    return device.type not in WITHOUT_FLOAT64


def float64_device(device: torch.device) -> torch.device:
    """Where float64 work for ``device`` runs: on the device itself, or on the CPU when it has no float64."""
    return device if has_float64(device) else torch.device("cpu")


@dataclass(frozen=True)
class Accelerator:
    """One accelerator type (``cpu`` included) and the decisions that depend on it."""

    type: str = "cpu"

    def __post_init__(self) -> None:
        if self.type not in DEVICE_TYPES:
            raise DeviceError(f"device: unknown type {self.type!r}; known: {', '.join(DEVICE_TYPES)} "
                              f"(set --device or {DEVICE_ENV})")

    @classmethod
    def named(cls, name: str) -> "Accelerator":
        """The accelerator of a device name such as ``cuda``, ``cuda:1`` or ``NPU``."""
        return cls(name.split(":", 1)[0].strip().lower())

    @classmethod
    def of(cls, device: torch.device | str) -> "Accelerator":
        """The accelerator a ``torch.device`` (or its name) belongs to."""
        return cls.named(str(device))

    @property
    def is_cpu(self) -> bool:
        return self.type == "cpu"

    # -- placement ---------------------------------------------------------------------------------------------

    def device(self, local_rank: int = 0) -> torch.device:
        """The device process ``local_rank`` of a node computes on (the CPU has no index)."""
        if self.is_cpu:
            return torch.device("cpu")
        self._require_runtime()
        return torch.device(self.type, local_rank)

    def set_device_index(self, local_rank: int) -> None:
        """Make ``local_rank``'s device the current one (before joining a process group); a no-op on the CPU."""
        if not self.is_cpu:
            self._require_runtime()
            torch.accelerator.set_device_index(local_rank)

    def count(self) -> int:
        """How many devices of this type the process sees (the CPU counts as one)."""
        if self.is_cpu:
            return 1
        self._require_runtime()
        return torch.get_device_module(self.type).device_count()

    @property
    def backend(self) -> str:
        """torch.distributed's backend for this type (nccl, hccl, xccl; gloo for the CPU, MPS and any type torch
        names none for)."""
        try:
            return dist.get_default_backend_for_device(self.type)
        except (RuntimeError, ValueError):  # a type torch does not know without its plug-in (npu without torch_npu)
            return "gloo"

    @property
    def pin_memory(self) -> bool:
        """Whether data loaders should pin host memory (faster host-to-device copies)."""
        return self.type not in WITHOUT_PINNING

    # -- precision ---------------------------------------------------------------------------------------------

    def effective_precision(self, precision: str) -> str:
        """What ``precision`` really computes in on this accelerator: the CPU always fp32; ``no`` is fp32; tf32 is
        fp32 where no TF32/HF32 switch exists."""
        precision = parse_precision(precision)
        if self.is_cpu or (precision == "tf32" and self.type not in WITH_TF32_SWITCH):
            return "fp32"
        return precision

    def autocast_dtype(self, precision: str) -> Optional[torch.dtype]:
        """The dtype bf16/fp16 autocast computes in on this accelerator; None when the model runs in float32."""
        return AUTOCAST_DTYPES.get(self.effective_precision(precision))

    def autocast(self, precision: str) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for bf16/fp16 on an accelerator; a null context for fp32/tf32/no and on the CPU."""
        dtype = self.autocast_dtype(precision)
        if dtype is None:
            return contextlib.nullcontext()
        self._require_runtime()
        return torch.autocast(device_type=self.type, dtype=dtype)

    def grad_scaler(self, precision: str) -> torch.amp.GradScaler:
        """The loss scaler fp16 training needs on an accelerator; disabled (a pass-through) otherwise."""
        return torch.amp.GradScaler(self.type, enabled=self.effective_precision(precision) == "fp16")

    # -- runtime (``device`` may be a torch.device, an index, or None for the current device) -------------------

    def synchronize(self, device: torch.device | int | None = None) -> None:
        """Wait for the device's queued work (before reading a clock); a no-op on the CPU."""
        if not self.is_cpu:
            torch.accelerator.synchronize(device)

    def empty_cache(self) -> None:
        if not self.is_cpu:
            torch.accelerator.empty_cache()

    def reset_peak_memory_stats(self, device: torch.device | int | None = None) -> None:
        if not self.is_cpu:
            torch.accelerator.reset_peak_memory_stats(device)

    def max_memory_allocated(self, device: torch.device | int | None = None) -> Optional[int]:
        """Peak bytes allocated by tensors since the last reset; None on the CPU and where the backend does not
        track it (callers then measure the process's memory instead)."""
        if self.is_cpu:
            return None
        try:
            return torch.accelerator.max_memory_allocated(device)
        except (RuntimeError, NotImplementedError):
            return None

    def device_name(self, device: torch.device | int | None = None) -> str:
        """The device's product name (e.g. ``NVIDIA H200``), or its type in capitals where torch has none."""
        if self.is_cpu:
            return "CPU"
        get_name = getattr(torch.get_device_module(self.type), "get_device_name", None)
        return get_name(device) if get_name is not None else self.type.upper()

    def _require_runtime(self) -> None:
        """Make sure torch knows this type: ``npu`` exists only once ``torch_npu`` is imported."""
        if self.type == "npu" and not load_torch_npu():
            raise DeviceError("device npu: torch_npu is not installed (install the torch_npu release matching "
                              f"torch {torch.__version__.split('+')[0]}, or set {DEVICE_ENV}=cpu)")


def default_device(name: str | torch.device | None = None) -> torch.device:
    """The device a single-process tool runs on: ``name`` as given (``cuda:1`` keeps its index), else the
    resolved accelerator's first device."""
    if isinstance(name, torch.device):
        return name
    if not name:
        return resolve().device(0)
    _, _, index = name.partition(":")
    return Accelerator.named(name).device(int(index) if index else 0)


# -- matmul precision (process-wide switches, whatever the device) ------------------------------------------------


def _reduced_precision_switches() -> list[tuple[object, str]]:
    """The (namespace, attribute) flags that let float32 matmuls and convolutions round their inputs: CUDA's TF32
    for cuBLAS and cuDNN and, once ``torch_npu`` is imported (it adds ``torch.npu``), the Ascend NPU's HF32 for
    matmuls and convolutions (its documented equivalent of TF32). Versions of torch_npu without them are skipped."""
    switches: list[tuple[object, str]] = [(torch.backends.cuda.matmul, "allow_tf32"),
                                          (torch.backends.cudnn, "allow_tf32")]
    npu = getattr(torch, "npu", None)
    for kind in ("matmul", "conv"):
        namespace = getattr(npu, kind, None)
        if namespace is not None and hasattr(namespace, "allow_hf32"):
            switches.append((namespace, "allow_hf32"))
    return switches


MatmulFlags = list[tuple[object, str, bool]]


def set_matmul_precision(precision: str) -> MatmulFlags:
    """Turn the TF32/HF32 switches on for ``tf32`` and off for every other setting (fp32/no: exact float32, as
    the evaluator needs; bf16/fp16: the autocast covers the model, the rest stays exact); returns the previous
    flags for :func:`restore_matmul_flags`."""
    allow = parse_precision(precision) == "tf32"
    previous = [(namespace, name, getattr(namespace, name)) for namespace, name in _reduced_precision_switches()]
    for namespace, name, _ in previous:
        setattr(namespace, name, allow)
    return previous


def restore_matmul_flags(flags: MatmulFlags) -> None:
    for namespace, name, value in flags:
        setattr(namespace, name, value)


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """:func:`set_matmul_precision` for the duration of a block, restoring the previous flags afterwards."""
    previous = set_matmul_precision(precision)
    try:
        yield
    finally:
        restore_matmul_flags(previous)


# -- torch.compile ------------------------------------------------------------------------------------------------


def check_compiler(accelerator: Accelerator) -> None:
    """A one-line DeviceError when the compiler the device's inductor backend needs is missing (compilation itself
    is lazy, so without this check the failure would come at the first step, deep in a traceback)."""
    package = COMPILER_PACKAGES.get(accelerator.type)
    if package is not None and importlib.util.find_spec(package) is None:
        raise DeviceError(f"torch.compile on {accelerator.type}: {package} is not installed, so inductor cannot "
                          f"build {accelerator.type} kernels; install {package} or turn compilation off")


def compile_by_default(setting: Optional[bool], accelerator: Accelerator) -> bool:
    """Whether to compile: an explicit true/false wins; ``None`` (auto) compiles on accelerators, where the compiled
    step is ~2× faster, and not on the CPU, where compilation costs more than it saves (docs/environment.md §2)."""
    return (not accelerator.is_cpu) if setting is None else bool(setting)


def compile_module(module: nn.Module, accelerator: Accelerator) -> nn.Module:
    """Regional compilation: every repeated block of the network (the modules in its ``blocks`` list) is compiled
    in place and the rest runs eagerly, as diffusers and torchtitan do. The blocks share one class and one
    ``forward``, and with parameters passed as graph inputs (dynamo's default ``inline_inbuilt_nn_modules``) they
    share one compiled graph per grad mode: compiling costs one block, not the whole depth, and train/eval
    switches recompile nothing (tests/test_device.py counts the graphs). State-dict keys do not change. A module
    without ``blocks`` (other networks, DDP's wrapper around one is unwrapped) is compiled whole."""
    check_compiler(accelerator)
    network = getattr(module, "module", module)  # DistributedDataParallel keeps the network in .module
    blocks = getattr(network, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        return torch.compile(module)
    for block in blocks:
        block.compile()
    return module
