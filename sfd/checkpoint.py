"""Checkpoint files: reading released weights strictly, writing atomically.

Released SFD files are ``torch.save`` dicts with ``ema`` (used for inference), ``model``, and possibly ``opt`` and a
pickled OmegaConf ``config`` (docs/method.md §4.8). Weights are read with ``weights_only=True``; the OmegaConf
classes such a ``config`` entry needs are allow-listed, nothing else is. ``.safetensors`` files hold a bare state
dict. A mismatch is reported by key, with shapes; a file that is missing, truncated, not a checkpoint or lacks a
required entry is reported in one line naming it (CheckpointError).
"""

from __future__ import annotations

import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from sfd.files import atomic_path


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and keys."""


def _omegaconf_globals() -> list:
    """Classes a pickled OmegaConf config needs (official checkpoints store one); all are plain data holders."""
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig, nodes
    from omegaconf.base import Container, ContainerMetadata, Metadata, Node

    node_types = [getattr(nodes, name) for name in dir(nodes) if name.endswith("Node")]
    return [DictConfig, ListConfig, Container, ContainerMetadata, Metadata, Node, typing.Any, dict, list, int,
            collections.defaultdict, *node_types]


def describe_read_error(error: BaseException) -> str:
    """The gist of a reader's error in one short line. Library messages span lines and paragraphs; torch's
    weights-only refusals open with advice to disable the check, so only the unpickler's own verdict is kept."""
    text = str(error).replace("\x1b[1m", "").replace("\x1b[0m", "")
    text = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0].rstrip(".") if lines else type(error).__name__


def _load_payload(path: Path) -> Any:
    """The file's contents: safetensors tensors, or a ``weights_only`` torch.load on CPU. torch.save's zip files are
    memory-mapped: tensors are paged in as they are copied into a model, so loading an XL checkpoint does not hold
    the whole state in memory twice (the release's legacy-format files cannot be mapped and are read whole)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # SafetensorError on truncated or foreign files (its header is checked first)
            reason = describe_read_error(error)
            raise CheckpointError(f"{path}: cannot be read as a safetensors file ({reason})") from None
    try:
        with torch.serialization.safe_globals(_omegaconf_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or others on foreign files
        reason = describe_read_error(error)
        raise CheckpointError(f"{path}: cannot be read as a weights-only checkpoint ({reason})") from None


def read_file(path: str | Path, *, required: Sequence[str] = ()) -> Mapping[str, Any]:
    """Load a checkpoint file (``.pt``/``.pth``/``.ckpt`` with ``weights_only=True``, or ``.safetensors``) as a
    dict, on CPU. ``required`` entries (e.g. a training checkpoint's ``model``, ``ema``, ``opt``, ``step``) must be
    present. Any problem raises CheckpointError with a one-line message naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    payload = _load_payload(path)
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path}: holds a {type(payload).__name__}, not a dict of weights")
    missing = [key for key in required if key not in payload]
    if missing:
        present = ", ".join(map(str, list(payload)[:12])) + (" ..." if len(payload) > 12 else "")
        raise CheckpointError(f"{path}: missing {', '.join(map(repr, missing))} (has {present or 'nothing'})")
    return payload


def extract_state_dict(payload: Mapping[str, Any], path: str | Path, prefer: str = "ema") -> dict[str, torch.Tensor]:
    """The weights in an official payload: ``prefer`` ('ema' or 'model') if present, else the other one, else the
    payload itself as a bare state dict. A ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix is removed."""
    state = payload
    for key in (prefer, "model" if prefer == "ema" else "ema", "state_dict"):
        if isinstance(payload.get(key), Mapping):
            state = payload[key]
            break
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is {type(value).__name__}, not a tensor; "
                                  "expected a state dict or a dict with 'ema' / 'model'")
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        tensors[key] = value
    return tensors


def explain_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a model's state dict and ``state`` (empty when they match)."""
    expected = model.state_dict()
    problems = []
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}"
                        + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                        + (" ..." if len(unexpected) > 8 else ""))
    for key, tensor in expected.items():
        if key in state and tuple(state[key].shape) != tuple(tensor.shape):
            problems.append(f"shape of {key}: checkpoint {tuple(state[key].shape)}, model {tuple(tensor.shape)}")
    return problems


def load_weights(model: nn.Module, path: str | Path, prefer: str = "ema", strict: bool = True) -> nn.Module:
    """Load released or project weights into ``model`` strictly; any mismatch raises CheckpointError naming keys."""
    state = extract_state_dict(read_file(path), path, prefer)
    problems = explain_mismatch(model, state)
    if problems and (strict or any(p.startswith("shape") for p in problems)):
        hint = " (is model.model_type / semfirst_delta_t / use_repa the one the checkpoint was trained with?)"
        raise CheckpointError(f"{path}: does not fit the model: " + "; ".join(problems) + hint)
    model.load_state_dict(state, strict=strict)
    return model


def atomic_save(payload: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves half a file, and a
    full disk or a refused write raises :class:`sfd.files.WriteError` naming ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in payload.items()}, str(tmp))
        else:
            torch.save(payload, tmp)
    return path


def export_weights(model: nn.Module, path: str | Path, ema: Optional[nn.Module] = None) -> Path:
    """Inference export in the official layout ``{'ema': ..., 'model': ...}`` (or a bare state dict for
    ``.safetensors``, holding the EMA weights when given)."""
    weights = (ema or model).state_dict()
    if Path(path).suffix == ".safetensors":
        return atomic_save(weights, path)
    return atomic_save({"ema": weights, "model": model.state_dict()}, path)


# -- a run's checkpoints: discovery, and the choice of the one to resume from ---------------------------------------

STEP_CHECKPOINT = re.compile(r"^(\d+)\.pt$")  # the diffusion trainer's {step:07d}.pt


def checkpoints_newest_first(folder: str | Path, pattern: re.Pattern = STEP_CHECKPOINT) -> list[Path]:
    """The training checkpoints in ``folder`` whose name matches ``pattern`` (its first group is the step), highest
    step first. The step is read from the name, never guessed from sizes or times."""
    steps = [(int(match.group(1)), path) for path in Path(folder).glob("*.pt") if (match := pattern.match(path.name))]
    return [path for _, path in sorted(steps, reverse=True)]


def latest_checkpoint(folder: str | Path, pattern: re.Pattern = STEP_CHECKPOINT) -> Optional[Path]:
    """The checkpoint with the highest step in ``folder`` (by name), or None."""
    found = checkpoints_newest_first(folder, pattern)
    return found[0] if found else None


@dataclass
class Resumption:
    """What :func:`choose_checkpoint` found: the checkpoint to resume from (None: start afresh), its checked payload,
    and one line per newer checkpoint that was passed over."""

    path: Optional[Path] = None
    payload: Optional[Mapping[str, Any]] = None
    skipped: list[str] = field(default_factory=list)


def choose_checkpoint(folder: str | Path, read: Callable[[Path], Mapping[str, Any]],
                      pattern: re.Pattern = STEP_CHECKPOINT) -> Resumption:
    """The newest checkpoint of ``folder`` that ``read`` accepts. ``read`` loads a file and checks that every part of
    it fits the run, raising CheckpointError otherwise, so that a rejected file changes nothing; a newer file that is
    truncated or does not fit is reported (a warning and ``skipped``) and passed over. Retraining from an older
    checkpoint ends where an uninterrupted run would when every random draw is a function of the step. Raises
    CheckpointError when checkpoints exist but none can be used."""
    candidates = checkpoints_newest_first(folder, pattern)
    found = Resumption()
    for path in candidates:
        try:
            payload = read(path)
        except CheckpointError as error:
            found.skipped.append(str(error))
            print(f"warning: skipping checkpoint: {error}", file=sys.stderr, flush=True)
            continue
        if found.skipped:
            print(f"warning: resuming from the older checkpoint {path}", file=sys.stderr, flush=True)
        found.path, found.payload = path, payload
        return found
    if candidates:
        raise CheckpointError(f"{folder}: none of its {len(candidates)} checkpoint(s) can resume this run "
                              f"(newest: {found.skipped[0]}); move them away to start afresh")
    return found


def check_optimizer_state(path: str | Path, saved: Any, optimizer: torch.optim.Optimizer) -> None:
    """Raise CheckpointError unless ``saved`` is an optimizer state dict with ``optimizer``'s parameter groups."""
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{path}: its optimizer entry is a {type(saved).__name__}, not a state dict")
    saved_groups = [len(group["params"]) for group in saved.get("param_groups", [])]
    groups = [len(group["params"]) for group in optimizer.param_groups]
    if saved_groups != groups:
        raise CheckpointError(f"{path}: its optimizer state has parameter groups of sizes {saved_groups}, this "
                              f"run's are {groups}")
