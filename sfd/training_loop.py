"""The skeleton every trainer of this project shares: a run log, and a loop of optimizer steps with periodic events.

A trainer is three parts (docs/development.md §2):

* a **step object** — model, optimizer, loss and whatever else one optimizer step needs, with ``state_dict`` /
  ``load_state_dict`` for checkpoints (the diffusion trainer's :class:`sfd.train.DiffusionStep`, the Semantic VAE's
  :class:`sfd.tokenizers.semvae_train.SemVAEStep`);
* the **run-folder services** — the folder's ownership lock and start-up (:func:`sfd.runlock.owned_folder`), the
  choice of the checkpoint to resume from with fallback past a bad one (:func:`sfd.checkpoint.choose_checkpoint`),
  atomic checkpoint writes (:func:`sfd.checkpoint.atomic_save`) and the :class:`RunLog`;
* the **loop** (:func:`run_steps`): take a batch, make a step, fire the events whose period divides the step count.

Each trainer's ``run`` reads top to bottom with these: own the folder, resume, build the batches, loop, finish.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping, Optional, Sequence

from sfd.files import write_text_atomic


class RunLog:
    """A run's JSON-lines log (one record per line, each with its ``step``), mirrored to TensorBoard when asked.

    Only the main process of a run writes (``enabled``). TensorBoard is optional: with ``tensorboard`` set to a
    folder, scalars of every record also go there when the package is installed (``require_tensorboard`` makes its
    absence an error instead of a silent skip). The writer is opened by :meth:`open`, once the run owns its folder.
    """

    def __init__(self, path: str | Path, *, tensorboard: Optional[str | Path] = None, enabled: bool = True,
                 require_tensorboard: bool = False, tag_prefix: str = "") -> None:
        self.path = Path(path)
        self.tensorboard = Path(tensorboard) if tensorboard is not None else None
        self.enabled = enabled
        self.require_tensorboard = require_tensorboard
        self.tag_prefix = tag_prefix  # TensorBoard tags are f"{tag_prefix}{key}"
        self.writer: Any = None

    def open(self) -> "RunLog":
        if self.enabled and self.tensorboard is not None and self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if self.require_tensorboard:
                    raise
                return self
            self.writer = SummaryWriter(str(self.tensorboard))
        return self

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` (it has a ``step``) to the log and its numbers to TensorBoard."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(dict(record)) + "\n")
        self.scalars(record, self.tag_prefix)

    def scalars(self, record: Mapping[str, Any], prefix: str = "") -> None:
        """Only the TensorBoard half of :meth:`write` (for values logged to another file)."""
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}{key}", value, record["step"])

    def forget_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (those a killed run logged after its last checkpoint, which the
        resumed run logs again) and a last line a kill cut short, so each step is logged once however often the run
        is resumed."""
        if not (self.enabled and self.path.exists()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass
class Every:
    """An event of the loop: ``action(step, record)`` after every ``period``-th step and after the steps listed in
    ``also`` (e.g. the last one); ``record`` is what that step returned."""

    period: int
    action: Callable[[int, Mapping[str, float]], None]
    also: Collection[int] = ()

    def due(self, step: int) -> bool:
        return step % self.period == 0 or step in self.also


def run_steps(step: Callable[[Any], Mapping[str, float]], batches: Iterable[Any], *, start: int, stop: int,
              events: Sequence[Every] = (), progress: Optional[Callable[[Mapping[str, float]], None]] = None
              ) -> Mapping[str, float]:
    """The loop: for each batch, one ``step(batch)`` (which returns its loss terms), then the events due at the new
    step count, until ``stop`` steps are done or the batches run out. ``progress(record)`` follows every step.
    Returns the last step's record (empty when no step was made)."""
    record: Mapping[str, float] = {}
    done = start
    if done >= stop:
        return record
    for batch in batches:
        record = step(batch)
        done += 1
        if progress is not None:
            progress(record)
        for event in events:
            if event.due(done):
                event.action(done, record)
        if done >= stop:
            break
    return record
