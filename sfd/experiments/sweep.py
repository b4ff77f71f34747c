"""Sweeps over SFD's design axes at equal budgets, written as one table and one plot.

The paper's claims are comparisons (arXiv 2512.04926): FID as a function of the semantic lead Δt (paper §4.3, the Δt
ablation: 0 is the synchronous baseline, SFD uses 0.3), the weight of the semantic velocity loss (β = 2), and SFD on
top of ReDi, whose semantic channels are PCA components of the DINOv2 features instead of a Semantic VAE (Table 3).
The shape of the lead over the trajectory (``model.semfirst_schedule``: the release's constant lead, or the
shrinking and smooth shapes of :mod:`sfd.schedule`) is one more axis. A sweep trains every point of a grid over these
axes with the same trainer, steps, batch and seed, samples each with the same sampler and seeds, and scores them with
the same evaluator.

Two backends share the grid, the bookkeeping and the report:

* the Fashion-MNIST pipeline of ``make demo`` (:class:`sfd.experiments.fashion.FashionBackend`, the default):
  every variant reuses the pipeline's tokenizers; FID on the pipeline's classifier features;
* precomputed latents, e.g. ImageNet from ``scripts/extract_latents.py`` (:class:`LatentsBackend`): a base training
  YAML, the project's sampler and the ADM suite against a reference batch; launch under torchrun for several GPUs.

Every stage resumes: training from its last checkpoint, sampling from the images already written, scoring from the
saved results, so an interrupted or extended sweep (more steps, more Δt values) only computes what is missing.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence

from sfd.phema import MAX_SIGMA_REL
from sfd.samplers import FIXED_GRID_METHODS
from sfd.schedule import SCHEDULE_SHAPES

SEMANTIC_SOURCES = ("none", "semvae", "pca")


@dataclass(frozen=True)
class Variant:
    """One trained model of a sweep.

    ``semantics``: where the semantic channels come from — ``none`` (texture latents only: the LightningDiT rows of
    the paper's Table 1), ``semvae`` (SFD's Semantic VAE) or ReDi-style ``pca``; ``repa``: REPA alignment of an
    intermediate block to the semantic encoder's patch features (Table 1's "+ REPA"; SFD keeps it on);
    ``delta_t``: the semantic lead (0 = synchronous; must be 0 without semantic channels); ``semantic_weight``: β
    of the semantic velocity loss; ``repeat``: index of a repeated training run (seed + repeat), to measure the
    spread between runs that differ only in their seed; ``schedule``: the shape of the lead over the trajectory
    (``model.semfirst_schedule``, one of :data:`sfd.schedule.SCHEDULE_SHAPES`: ``constant``, the release's lead Δt
    throughout; ``shrinking`` and ``smooth`` take the same Δt; every shape needs a lead, so it is ``constant`` when
    Δt is 0, where every shape is the synchronous model).
    """

    semantics: str
    delta_t: float
    semantic_weight: float
    repa: bool
    repeat: int = 0
    schedule: str = "constant"

    @classmethod
    def of(cls, model, semantics: str, repeat: int = 0, **changes) -> "Variant":
        """A variant of a base config's ``model`` section: its Δt (``semfirst_delta_t``), β (``semantic_weight``),
        REPA (``use_repa``) and lead shape (``semfirst_schedule``) unless ``changes`` names them, so a sweep has no
        settings of its own to disagree with the config's. Without semantic channels Δt is 0: there is nothing to
        lead; without a lead the config's shape is dropped (constant)."""
        values = dict(delta_t=0.0 if semantics == "none" else model.semfirst_delta_t,
                      semantic_weight=model.semantic_weight, repa=model.use_repa, schedule=model.semfirst_schedule)
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"Variant.of: unknown setting(s) {', '.join(sorted(unknown))}")
        values.update(changes)
        if not values["delta_t"] and "schedule" not in changes:
            values["schedule"] = "constant"
        return cls(semantics, float(values["delta_t"]), float(values["semantic_weight"]), bool(values["repa"]), repeat,
                   values["schedule"])

    @classmethod
    def of_row(cls, row: dict) -> "Variant":
        """The model a result row (or summary entry) describes, repeat 0; rows written before the lead had a shape
        are the constant lead."""
        return cls(row["semantics"], row["delta_t"], row["semantic_weight"], row.get("repa", True),
                   schedule=row.get("schedule", "constant"))

    def __post_init__(self) -> None:
        if self.semantics not in SEMANTIC_SOURCES:
            raise ValueError(f"semantics: {self.semantics!r} is not one of {', '.join(SEMANTIC_SOURCES)}")
        if not 0.0 <= self.delta_t < 1.0:  # as model.semfirst_delta_t (the release asserts Δt < 1)
            raise ValueError(f"delta_t: {self.delta_t} is outside [0, 1)")
        if self.semantics == "none" and self.delta_t != 0:
            raise ValueError(f"delta_t: {self.delta_t} needs semantic channels (semantics 'none' has none to lead)")
        if self.semantic_weight < 0:
            raise ValueError(f"semantic_weight: {self.semantic_weight} is negative")
        if self.repeat < 0:
            raise ValueError(f"repeat: {self.repeat} is negative")
        if self.schedule not in SCHEDULE_SHAPES:
            raise ValueError(f"schedule: {self.schedule!r} is not one of {', '.join(SCHEDULE_SHAPES)}")
        if self.schedule != "constant" and self.delta_t == 0:
            raise ValueError(f"schedule: {self.schedule!r} needs a semantic lead (Δt 0 is the synchronous model "
                             "whatever the shape)")

    @property
    def name(self) -> str:
        """Folder and stage name; equal settings give equal names, so sweeps sharing a run folder share runs. The
        constant lead adds nothing (the names of the runs made before the lead had a shape)."""
        suffix = f"_r{self.repeat}" if self.repeat else ""
        if self.semantics == "none":
            return f"lightningdit{'_repa' if self.repa else ''}{suffix}"
        shape = "" if self.schedule == "constant" else f"_{self.schedule}"
        return (f"dt{self.delta_t:g}_w{self.semantic_weight:g}_{self.semantics}{'' if self.repa else '_norepa'}"
                f"{shape}{suffix}")

    @property
    def label(self) -> str:
        """The model as the paper's tables name it."""
        if self.semantics == "none":
            return "LightningDiT + REPA" if self.repa else "LightningDiT"
        source = {"semvae": "SemVAE", "pca": "PCA"}[self.semantics]
        lead = f"Δt {self.delta_t:g}" if self.delta_t else "synchronous, Δt 0"
        lead = lead if self.schedule == "constant" else f"{self.schedule} lead, {lead}"
        return f"{source} semantics, {lead}{'' if self.repa else ', no REPA'}"

    @property
    def series(self) -> str:
        """The line this variant belongs to in the Δt plot."""
        if self.semantics == "none":
            return self.label
        return (f"{self.semantics}, β={self.semantic_weight:g}{'' if self.repa else ', no REPA'}"
                f"{'' if self.schedule == 'constant' else f', {self.schedule} lead'}")

    def overrides(self) -> list[str]:
        return [f"model.semfirst_delta_t={self.delta_t}", f"model.semfirst_schedule={self.schedule}",
                f"model.semantic_weight={self.semantic_weight}", f"model.use_repa={str(self.repa).lower()}"]


@dataclass(frozen=True)
class Scoring:
    """How a model is sampled for one score: the ODE solver and whether the class label is given.

    ``method``: ``dopri5`` (adaptive, the paper's; ``rtol``/``atol`` its tolerances; any torchdiffeq method works)
    or a fixed-grid ``euler`` / ``heun`` with ``steps`` grid points over τ ∈ [0, 1 + Δt]; ``conditional``:
    class-balanced labels, or the null label for every sample (unconditional generation by the same network, which
    trains its null-label branch through label dropout)."""

    method: str = "dopri5"
    steps: int = 25
    rtol: float = 1e-3
    atol: float = 1e-6
    conditional: bool = True
    phases: bool = False  # phase-aware integration (sample.phase_split)
    # Oracle semantics (a diagnostic, :mod:`sfd.experiments.diagnostics`): sample i is generated with the class of
    # held-out image i while its semantic channels are held to that image's true semantic latent, forward-noised to
    # the current t_sem (replacement conditioning). Only for models with semantic channels.
    oracle: bool = False
    samples: Optional[int] = None  # how many samples the score uses (None: the backend's default)
    # Which average of the weights is sampled: None, the classic EMA (train.ema_decay); a width σ_rel, the power-
    # function EMA of that width rebuilt at the scored step from the run's snapshots (docs/ema.md; the runs must
    # track power EMAs).
    average: Optional[float] = None

    def __post_init__(self) -> None:
        if not self.method:
            raise ValueError("method: empty (euler, heun or a torchdiffeq method such as dopri5)")
        if self.steps < 2:
            raise ValueError(f"steps: {self.steps} must be at least 2 grid points")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"rtol/atol: {self.rtol}/{self.atol} must be positive")
        if self.oracle and not self.conditional:
            raise ValueError("oracle: oracle semantics take each held-out image's class (conditional only)")
        if self.samples is not None and self.samples < 2:
            raise ValueError(f"samples: {self.samples} must be at least 2 (a Fréchet distance needs a covariance)")
        if self.average is not None and not 0 < self.average <= MAX_SIGMA_REL:
            raise ValueError(f"average: σ_rel {self.average} is outside (0, 1/sqrt(12) = {MAX_SIGMA_REL:.4f}]")

    @classmethod
    def from_config(cls, sample) -> "Scoring":
        """The scoring a config's ``sample`` section describes (class-conditional)."""
        return cls(sample.sampling_method, sample.num_sampling_steps, sample.rtol, sample.atol)

    @property
    def fixed_grid(self) -> bool:
        """Euler and Heun step along the grid; every other method is torchdiffeq's, adaptive with tolerances."""
        return self.method in FIXED_GRID_METHODS

    @property
    def sampler(self) -> str:
        base = f"{self.method} rtol {self.rtol:g}" if not self.fixed_grid else f"{self.method}-{self.steps}"
        return base + (" phases" if self.phases else "")

    @property
    def conditioning(self) -> str:
        if self.oracle:
            return "oracle semantics"
        return "conditional" if self.conditional else "unconditional"

    @property
    def name(self) -> str:
        """Part of a score's stage and file names, e.g. ``dopri5rtol0.001``, ``euler-25_uncond`` or
        ``dopri5rtol0.001phases_oracle_n2000``; a power-EMA average adds e.g. ``_ema0.1``."""
        return (self.sampler.replace(" ", "") + ("" if self.conditional else "_uncond")
                + ("_oracle" if self.oracle else "") + (f"_n{self.samples}" if self.samples else "")
                + (f"_ema{self.average:g}" if self.average else ""))

    def overrides(self) -> list[str]:
        return [f"sample.sampling_method={self.method}", f"sample.num_sampling_steps={self.steps}",
                f"sample.rtol={self.rtol}", f"sample.atol={self.atol}", f"sample.phase_split={self.phases}"]

    def tighter(self) -> "Scoring":
        """The same scoring with a ten times tighter tolerance (adaptive) or twice the intervals (fixed grid): the
        convergence check of a score."""
        if not self.fixed_grid:
            return replace(self, rtol=self.rtol / 10)
        return replace(self, steps=2 * (self.steps - 1) + 1)

    def fields(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "conditioning": self.conditioning,
                **({"samples": self.samples} if self.samples else {}),
                **({"average": f"σ_rel {self.average:g}"} if self.average else {})}


# The semantic sources a sweep's command line names: the Table-1 baselines without semantic channels (with or without
# REPA) and SFD's two kinds of semantic channels (always with REPA, as the release trains them).
SOURCE_CHOICES = {"none": ("none", False), "none+repa": ("none", True), "semvae": ("semvae", True),
                  "pca": ("pca", True)}


def grid(model, delta_ts: Iterable[float], semantic_weights: Optional[Iterable[float]] = None,
         semantics: Iterable[str] = ("semvae",), repeats: int = 1,
         schedules: Optional[Iterable[str]] = None) -> list[Variant]:
    """Every combination, in the order source → weight → Δt → lead shape → repeat, without duplicates, as variants
    of the base config's ``model`` section (:meth:`Variant.of`; ``semantic_weights`` and ``schedules`` default: its β
    and its shape, ``constant`` in the shipped configs). ``semantics`` names :data:`SOURCE_CHOICES`; the sources
    without semantic channels take one variant per repeat (they have no Δt and no semantic weight), and Δt 0 takes
    one per weight and repeat (without a lead every shape is the synchronous model)."""
    if repeats < 1:
        raise ValueError(f"repeats: {repeats} must be at least 1")
    weights = list(semantic_weights) if semantic_weights is not None else [model.semantic_weight]
    shapes = list(schedules) if schedules is not None else [model.semfirst_schedule]
    variants = []
    for choice, weight, delta_t, shape, repeat in itertools.product(semantics, weights, delta_ts, shapes,
                                                                    range(repeats)):
        if choice not in SOURCE_CHOICES:
            raise ValueError(f"semantics: {choice!r} is not one of {', '.join(SOURCE_CHOICES)}")
        source, repa = SOURCE_CHOICES[choice]
        if source == "none":
            variants.append(Variant.of(model, source, repeat, repa=repa))
        else:
            variants.append(Variant.of(model, source, repeat, delta_t=delta_t, semantic_weight=weight, repa=repa,
                                       schedule=shape if delta_t else "constant"))
    return list(dict.fromkeys(variants))


def evaluation_steps(steps: int, every: Optional[int]) -> list[int]:
    """Training lengths at which each variant is scored: every ``every`` steps and the last one."""
    if steps < 1:
        raise ValueError(f"steps: {steps} must be at least 1")
    chosen = list(range(every, steps + 1, every)) if every else []
    return chosen if chosen and chosen[-1] == steps else [*chosen, steps]


def latent_channels(data_path: str | Path) -> tuple[int, int]:
    """(texture, semantic) channel counts of a latent folder, from its statistics files."""
    from sfd.data.latents import load_stats

    return load_stats(data_path, "latents")[0].shape[1], load_stats(data_path, "latents_sv")[0].shape[1]


def channel_overrides(data_path: str | Path, semantic: bool = True) -> list[str]:
    """Point the config at a latent folder and size the model for its channels (texture first, semantic last);
    ``semantic=False`` trains on the texture channels alone (the folder's semantic latents are not read)."""
    texture, semantic_chans = latent_channels(data_path)
    semantic_chans = semantic_chans if semantic else 0
    return [f"data.data_path={data_path}", f"model.in_chans={texture + semantic_chans}",
            f"model.semantic_chans={semantic_chans}"]


class Backend(Protocol):
    def train(self, variant: Variant, steps: int, checkpoint_every: int) -> None: ...

    def evaluate(self, variant: Variant, step: int, scoring: Scoring) -> dict[str, float]: ...


def run_sweep(backend: Backend, variants: Sequence[Variant], steps: int, eval_every: Optional[int] = None,
              scorings: Sequence[Scoring] = (Scoring(),), final_scorings: Sequence[Scoring] = (),
              check_scorings: Sequence[Scoring] = (), log: Callable[[str], None] = print, *,
              lengths: Optional[Sequence[int]] = None,
              at: Optional[Mapping[int, Sequence[Scoring]]] = None) -> list[dict[str, Any]]:
    """Train every variant for ``steps`` and score it at :func:`evaluation_steps` (or at ``lengths``) with each of
    ``scorings`` — or, at the lengths ``at`` names, with its scorings instead; at the last length also with
    ``final_scorings`` (every repeat) and ``check_scorings`` (the first repeat only, e.g. a tighter solver to show
    that the main one has converged). Oracle scorings skip the models without semantic channels. One row per
    (variant, step, scoring)."""
    eval_steps = sorted(set(lengths)) if lengths else evaluation_steps(steps, eval_every)
    if eval_steps[-1] > steps:
        raise ValueError(f"lengths: {eval_steps[-1]} is beyond the training's {steps} steps")
    checkpoint_every = math.gcd(*eval_steps)  # a checkpoint at every scored length
    rows = []
    for number, variant in enumerate(variants, 1):
        log(f"== variant {number}/{len(variants)}: {variant.name}")
        backend.train(variant, steps, checkpoint_every)
        for step in eval_steps:
            chosen = list((at or {}).get(step, scorings))
            if step == eval_steps[-1]:
                chosen += [*final_scorings, *(check_scorings if variant.repeat == 0 else ())]
            for scoring in dict.fromkeys(chosen):
                if scoring.oracle and variant.semantics == "none":
                    continue
                rows.append({"name": variant.name, "label": variant.label, **asdict(variant), "step": step,
                             **scoring.fields(), **backend.evaluate(variant, step, scoring)})
    return rows
