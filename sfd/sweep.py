"""Sweeps over SFD's design axes at equal budgets, written as one table and one plot.

The paper's claims are comparisons (arXiv 2512.04926): FID as a function of the semantic lead Δt (paper §4.3, the Δt
ablation: 0 is the synchronous baseline, SFD uses 0.3), the weight of the semantic velocity loss (β = 2), and SFD on
top of ReDi, whose semantic channels are PCA components of the DINOv2 features instead of a Semantic VAE (Table 3).
A sweep trains every point of a grid over these axes with the same trainer, steps, batch and seed, samples each
with the same sampler and seeds, and scores them with the same evaluator.

Two backends share the grid, the bookkeeping and the report:

* the Fashion-MNIST pipeline of ``make demo`` (:class:`sfd.demo.pipeline.DemoPipeline`, the default): every variant
  reuses the pipeline's tokenizers; FID on the pipeline's classifier features;
* precomputed latents, e.g. ImageNet from ``scripts/extract_latents.py`` (:class:`LatentsSweep`): a base training
  YAML, the project's sampler and the ADM suite against a reference batch; launch under torchrun for several GPUs.

Every stage resumes: training from its last checkpoint, sampling from the images already written, scoring from the
saved results, so an interrupted or extended sweep (more steps, more Δt values) only computes what is missing.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

import torch

from sfd.files import write_text_atomic
from sfd.samplers import FIXED_GRID_METHODS

SEMANTIC_SOURCES = ("none", "semvae", "pca")
VARIANT_FIELDS = ("semantics", "repa", "delta_t", "semantic_weight", "repeat")
SCORING_FIELDS = ("sampler", "conditioning")
# Metrics a backend may report, in table order, with the direction that is better.
METRICS = {"fid": "FID ↓", "sfid": "sFID ↓", "inception_score": "IS ↑", "precision": "Precision ↑",
           "recall": "Recall ↑", "class_accuracy": "class accuracy ↑"}


@dataclass(frozen=True)
class Variant:
    """One trained model of a sweep.

    ``semantics``: where the semantic channels come from — ``none`` (texture latents only: the LightningDiT rows of
    the paper's Table 1), ``semvae`` (SFD's Semantic VAE) or ReDi-style ``pca``; ``repa``: REPA alignment of an
    intermediate block to the semantic encoder's patch features (Table 1's "+ REPA"; SFD keeps it on);
    ``delta_t``: the semantic lead (0 = synchronous; must be 0 without semantic channels); ``semantic_weight``: β
    of the semantic velocity loss; ``repeat``: index of a repeated training run (seed + repeat), to measure the
    spread between runs that differ only in their seed.
    """

    semantics: str
    delta_t: float
    semantic_weight: float
    repa: bool
    repeat: int = 0

    @classmethod
    def of(cls, model, semantics: str, repeat: int = 0, **changes) -> "Variant":
        """A variant of a base config's ``model`` section: its Δt (``semfirst_delta_t``), β (``semantic_weight``) and
        REPA (``use_repa``) unless ``changes`` names them, so a sweep has no settings of its own to disagree with the
        config's. Without semantic channels Δt is 0: there is nothing to lead."""
        values = dict(delta_t=0.0 if semantics == "none" else model.semfirst_delta_t,
                      semantic_weight=model.semantic_weight, repa=model.use_repa)
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError(f"Variant.of: unknown setting(s) {', '.join(sorted(unknown))}")
        values.update(changes)
        return cls(semantics, float(values["delta_t"]), float(values["semantic_weight"]), bool(values["repa"]), repeat)

    @classmethod
    def of_row(cls, row: dict) -> "Variant":
        """The model a result row (or summary entry) describes, repeat 0."""
        return cls(row["semantics"], row["delta_t"], row["semantic_weight"], row.get("repa", True))

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

    @property
    def name(self) -> str:
        """Folder and stage name; equal settings give equal names, so sweeps sharing a run folder share runs."""
        suffix = f"_r{self.repeat}" if self.repeat else ""
        if self.semantics == "none":
            return f"lightningdit{'_repa' if self.repa else ''}{suffix}"
        return f"dt{self.delta_t:g}_w{self.semantic_weight:g}_{self.semantics}{'' if self.repa else '_norepa'}{suffix}"

    @property
    def label(self) -> str:
        """The model as the paper's tables name it."""
        if self.semantics == "none":
            return "LightningDiT + REPA" if self.repa else "LightningDiT"
        source = {"semvae": "SemVAE", "pca": "PCA"}[self.semantics]
        lead = f"Δt {self.delta_t:g}" if self.delta_t else "synchronous, Δt 0"
        return f"{source} semantics, {lead}{'' if self.repa else ', no REPA'}"

    @property
    def series(self) -> str:
        """The line this variant belongs to in the Δt plot."""
        if self.semantics == "none":
            return self.label
        return f"{self.semantics}, β={self.semantic_weight:g}{'' if self.repa else ', no REPA'}"

    def overrides(self) -> list[str]:
        lines = [f"model.semfirst_delta_t={self.delta_t}", f"model.semantic_weight={self.semantic_weight}",
                 f"model.use_repa={str(self.repa).lower()}"]
        return lines


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

    def __post_init__(self) -> None:
        if not self.method:
            raise ValueError("method: empty (euler, heun or a torchdiffeq method such as dopri5)")
        if self.steps < 2:
            raise ValueError(f"steps: {self.steps} must be at least 2 grid points")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"rtol/atol: {self.rtol}/{self.atol} must be positive")

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
        return "conditional" if self.conditional else "unconditional"

    @property
    def name(self) -> str:
        """Part of a score's stage and file names, e.g. ``dopri5rtol0.001`` or ``euler-25_uncond``."""
        return self.sampler.replace(" ", "") + ("" if self.conditional else "_uncond")

    def overrides(self) -> list[str]:
        return [f"sample.sampling_method={self.method}", f"sample.num_sampling_steps={self.steps}",
                f"sample.rtol={self.rtol}", f"sample.atol={self.atol}", f"sample.phase_split={self.phases}"]

    def tighter(self) -> "Scoring":
        """The same scoring with a ten times tighter tolerance (adaptive) or twice the intervals (fixed grid): the
        convergence check of a score."""
        if not self.fixed_grid:
            return replace(self, rtol=self.rtol / 10)
        return replace(self, steps=2 * (self.steps - 1) + 1)

    def fields(self) -> dict[str, str]:
        return {"sampler": self.sampler, "conditioning": self.conditioning}


# The semantic sources a sweep's command line names: the Table-1 baselines without semantic channels (with or without
# REPA) and SFD's two kinds of semantic channels (always with REPA, as the release trains them).
SOURCE_CHOICES = {"none": ("none", False), "none+repa": ("none", True), "semvae": ("semvae", True),
                  "pca": ("pca", True)}


def grid(model, delta_ts: Iterable[float], semantic_weights: Optional[Iterable[float]] = None,
         semantics: Iterable[str] = ("semvae",), repeats: int = 1) -> list[Variant]:
    """Every combination, in the order source → weight → Δt → repeat, without duplicates, as variants of the base
    config's ``model`` section (:meth:`Variant.of`; ``semantic_weights`` default: its β). ``semantics`` names
    :data:`SOURCE_CHOICES`; the sources without semantic channels take one variant per repeat (they have no Δt and
    no semantic weight)."""
    if repeats < 1:
        raise ValueError(f"repeats: {repeats} must be at least 1")
    weights = list(semantic_weights) if semantic_weights is not None else [model.semantic_weight]
    variants = []
    for choice, weight, delta_t, repeat in itertools.product(semantics, weights, delta_ts, range(repeats)):
        if choice not in SOURCE_CHOICES:
            raise ValueError(f"semantics: {choice!r} is not one of {', '.join(SOURCE_CHOICES)}")
        source, repa = SOURCE_CHOICES[choice]
        if source == "none":
            variants.append(Variant.of(model, source, repeat, repa=repa))
        else:
            variants.append(Variant.of(model, source, repeat, delta_t=delta_t, semantic_weight=weight, repa=repa))
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
              check_scorings: Sequence[Scoring] = (), log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train every variant for ``steps`` and score it at :func:`evaluation_steps` with each of ``scorings``; at the
    last length also with ``final_scorings`` (every repeat) and ``check_scorings`` (the first repeat only, e.g. a
    tighter solver to show that the main one has converged). One row per (variant, step, scoring)."""
    eval_steps = evaluation_steps(steps, eval_every)
    checkpoint_every = math.gcd(*eval_steps)  # a checkpoint at every scored length
    rows = []
    for number, variant in enumerate(variants, 1):
        log(f"== variant {number}/{len(variants)}: {variant.name}")
        backend.train(variant, steps, checkpoint_every)
        for step in eval_steps:
            chosen = list(scorings)
            if step == eval_steps[-1]:
                chosen += [*final_scorings, *(check_scorings if variant.repeat == 0 else ())]
            for scoring in dict.fromkeys(chosen):
                rows.append({"name": variant.name, "label": variant.label, **asdict(variant), "step": step,
                             **scoring.fields(), **backend.evaluate(variant, step, scoring)})
    return rows


# -- the report ------------------------------------------------------------------------------------------------

# What identifies a point of a sweep (rows equal in these are repeats); rows written before a field existed get its
# default.
GROUP_FIELDS = ("semantics", "repa", "semantic_weight", "delta_t", "sampler", "conditioning", "step")
FIELD_DEFAULTS = {"repa": True, "sampler": "", "conditioning": "conditional"}


def metrics_of(rows: Sequence[dict]) -> list[str]:
    return [metric for metric in METRICS if any(metric in row for row in rows)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    tensor = torch.tensor([float(value) for value in values], dtype=torch.float64)
    return tensor.mean().item(), (tensor.std().item() if len(tensor) > 1 else 0.0)


def summarise(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Rows averaged over repeats: per point (:data:`GROUP_FIELDS`) the mean, sample std and count of each
    metric, and the model's label."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = tuple(row.get(name, FIELD_DEFAULTS.get(name)) for name in GROUP_FIELDS)
        groups.setdefault(key, []).append(row)
    summary = []
    for key, members in sorted(groups.items(), key=lambda item: tuple(str(part) for part in item[0])):
        entry: dict[str, Any] = {**dict(zip(GROUP_FIELDS, key)), "runs": len(members)}
        entry["label"] = Variant.of_row(entry).label
        for metric in [*metrics_of(members), *(["nfe"] if any("nfe" in row for row in members) else [])]:
            entry[metric], entry[f"{metric}_std"] = mean_std([row[metric] for row in members if metric in row])
        summary.append(entry)
    return summary


def _cell(entry: dict, metric: str) -> str:
    if metric not in entry:
        return "–"
    digits = 3 if metric in ("precision", "recall", "class_accuracy") else 2
    value = f"{entry[metric]:.{digits}f}"
    return f"{value} ± {entry[f'{metric}_std']:.{digits}f}" if entry["runs"] > 1 else value


def _scorings(summary: Sequence[dict]) -> list[tuple[str, str]]:
    """The (sampler, conditioning) pairs of a summary, those scored at the most training lengths first."""
    lengths: dict[tuple[str, str], set] = {}
    for entry in summary:
        lengths.setdefault((entry["sampler"], entry["conditioning"]), set()).add(entry["step"])
    return sorted(lengths, key=lambda pair: (-len(lengths[pair]), pair[1], pair[0]))


def findings(summary: Sequence[dict], metric: str = "fid") -> list[str]:
    """Per series with semantic channels, at the longest training and for each way of sampling: the best Δt, and
    the best semantic lead (Δt > 0) against the synchronous Δt = 0, with the gap compared to twice the spread
    between repeated runs (when there are repeats)."""
    final = max(entry["step"] for entry in summary)
    higher_is_better = METRICS[metric].endswith("↑")
    pick = max if higher_is_better else min
    scorings = _scorings(summary)
    lines = []
    for sampler, conditioning in scorings:
        series: dict[tuple, list[dict]] = {}
        for entry in summary:
            if (entry["step"] == final and metric in entry and entry["semantics"] != "none"
                    and (entry["sampler"], entry["conditioning"]) == (sampler, conditioning)):
                series.setdefault((entry["semantics"], entry["semantic_weight"], entry["repa"]), []).append(entry)
        prefix = f"[{sampler}, {conditioning}] " if len(scorings) > 1 else ""
        for (semantics, weight, repa), entries in series.items():
            best = pick(entries, key=lambda entry: entry[metric])
            text = (f"{prefix}{semantics}, β={weight:g}{'' if repa else ', no REPA'}: the best {metric.upper()} at "
                    f"{final} steps is at Δt = {best['delta_t']:g} ({_cell(best, metric)})")
            synchronous = next((entry for entry in entries if entry["delta_t"] == 0), None)
            leads = [entry for entry in entries if entry["delta_t"] > 0]
            if synchronous is not None and leads:
                lead = pick(leads, key=lambda entry: entry[metric])
                gap = abs(lead[metric] - synchronous[metric])
                better = (lead[metric] > synchronous[metric]) == higher_is_better
                spread = max(lead[f"{metric}_std"], synchronous[f"{metric}_std"])
                text += (f"; the best semantic lead, Δt = {lead['delta_t']:g} ({_cell(lead, metric)}), is "
                         f"{'better' if better else 'worse'} than the synchronous Δt = 0 "
                         f"({_cell(synchronous, metric)}) by {gap:.2f}, ")
                text += (("more than" if gap > 2 * spread else "within") + f" twice the spread between repeated runs "
                         f"(std {spread:.2f})" if spread else "from one run each (no repeats: the run-to-run spread is "
                         "unknown)")
            lines.append(text + ".")
    return lines


def summary_table(entries: Sequence[dict], metrics: Sequence[str], with_step: bool) -> list[str]:
    """Markdown rows: model, β, Δt, sampler (with its mean NFE), conditioning, [step], runs, metrics."""
    head = ["model", "β", "Δt", "sampler (NFE)", "conditioning", *(["step"] if with_step else []), "runs",
            *(METRICS[m] for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 5 + "---:|" * (len(head) - 5)]
    for entry in entries:
        none = entry["semantics"] == "none"
        sampler = entry["sampler"] + (f" ({entry['nfe']:.0f})" if "nfe" in entry else "")
        cells = [entry["label"], "–" if none else f"{entry['semantic_weight']:g}",
                 "–" if none else f"{entry['delta_t']:g}", sampler, entry["conditioning"],
                 *([str(entry["step"])] if with_step else []), str(entry["runs"]), *(_cell(entry, m) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def delta_t_plot(summary: Sequence[dict], path: Path, metric: str = "fid", step: Optional[int] = None) -> Path:
    """``metric`` against Δt at training length ``step`` (default: the longest) for the main way of sampling:
    one line per semantic series with error bars; the models without semantic channels as flat lines."""
    from sfd.visualize import line_plot

    step = step or max(entry["step"] for entry in summary)
    sampler, conditioning = _scorings(summary)[0]
    chosen = [entry for entry in summary if entry["step"] == step and metric in entry
              and (entry["sampler"], entry["conditioning"]) == (sampler, conditioning)]
    leads = sorted({entry["delta_t"] for entry in chosen if entry["semantics"] != "none"}) or [0.0, 0.5]
    series: dict[str, tuple[list, list, list]] = {}
    for entry in chosen:
        label = Variant.of_row(entry).series
        x, y, error = series.setdefault(label, ([], [], []))
        positions = [leads[0], leads[-1]] if entry["semantics"] == "none" else [entry["delta_t"]]
        for position in positions:
            x.append(position)
            y.append(entry[metric])
            error.append(entry[f"{metric}_std"])
    return line_plot(path, series, "semantic lead Δt (0 = synchronous)", METRICS[metric],
                     f"{METRICS[metric].split()[0]} vs Δt after {step} steps ({sampler}, {conditioning})")


def write_sweep_report(rows: Sequence[dict], folder: str | Path, title: str, setup: Sequence[str] = (),
                       metric: str = "fid") -> Path:
    """``results.json`` (every row), ``table.md`` (averaged over repeats: the longest training first, then every
    scored length) and ``<metric>_vs_delta_t.png`` (:func:`delta_t_plot`). Returns the table's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "results.json", json.dumps(list(rows), indent=1) + "\n")
    summary = summarise(rows)
    metrics = metrics_of(rows)
    final = max(entry["step"] for entry in summary)
    plot = delta_t_plot(summary, folder / f"{metric}_vs_delta_t.png", metric)
    ordered = sorted(summary, key=lambda e: (e["semantics"] != "none", e["semantics"], not e["repa"],
                                             e["semantic_weight"], e["delta_t"], e["sampler"], e["conditioning"],
                                             e["step"]))
    lines = [f"# {title}", "", "## Findings", "", *[f"* {line}" for line in findings(summary, metric)], "",
             f"## After {final} steps", "", *summary_table([e for e in ordered if e["step"] == final], metrics, False),
             "", f"![{metric} vs Δt]({plot.name})", ""]
    if len({entry["step"] for entry in summary}) > 1:
        lines += ["## Every scored training length", "", *summary_table(ordered, metrics, True), ""]
    if setup:
        lines += ["## Setup", "", *[f"* {line}" for line in setup], ""]
    lines += ["Values are means over repeated training runs ± their sample standard deviation when a point was "
              "trained more than once. Raw rows: results.json.", ""]
    return write_text_atomic(folder / "table.md", "\n".join(lines))


# -- the precomputed-latents backend ---------------------------------------------------------------------------

@dataclass
class LatentsSweep:
    """Sweep variants trained on precomputed latent folders with a base training YAML (e.g.
    ``configs/baselines/sfd_b.yaml``), sampled with its ``sample`` section and scored by the ADM suite against
    ``reference``. ``latents`` maps a semantic source to its latent folder (SemVAE and PCA latents share the texture
    channels and differ in the semantic ones); the model's channels follow the folder's statistics. Outputs go to
    ``output_dir/{runs,samples,scores}``."""

    config_path: Path
    output_dir: Path
    latents: dict[str, Path]
    reference: Path
    samples: int
    overrides: Sequence[str] = ()
    seed: int = 0
    network: Optional[Callable] = None  # the ADM feature network; default: Inception from ``inception_weights``
    inception_weights: Optional[str] = None
    network_id: Optional[str] = None
    progress: bool = True
    topology: Any = field(default=None)

    def __post_init__(self) -> None:
        from sfd import distributed

        self.topology = self.topology or distributed.init()
        self.device = self.topology.device

    def latent_folder(self, variant: Variant) -> Path:
        """The variant's latents; models without semantic channels read the texture channels of any folder."""
        if variant.semantics == "none" and self.latents:
            return self.latents.get("semvae", next(iter(self.latents.values())))
        if variant.semantics not in self.latents:
            raise ValueError(f"semantics {variant.semantics!r}: no latent folder given for it "
                             f"(have: {', '.join(self.latents) or 'none'})")
        return self.latents[variant.semantics]

    def config(self, variant: Variant, steps: Optional[int] = None, checkpoint_every: Optional[int] = None,
               scoring: Optional[Scoring] = None):
        from sfd.config import load_config

        return load_config(self.config_path, [
            *self.overrides, *channel_overrides(self.latent_folder(variant), variant.semantics != "none"),
            *variant.overrides(), f"train.output_dir={self.output_dir / 'runs'}", f"train.exp_name={variant.name}",
            f"train.global_seed={self.seed + variant.repeat}", f"sample.fid_num={self.samples}",
            *([f"train.max_steps={steps}"] if steps else []),
            *([f"train.ckpt_every={checkpoint_every}"] if checkpoint_every else []),
            *(scoring.overrides() if scoring else [])])

    def train(self, variant: Variant, steps: int, checkpoint_every: int) -> None:
        from sfd.train import Trainer

        Trainer(self.config(variant, steps, checkpoint_every), self.topology).run(progress=self.progress)

    def evaluate(self, variant: Variant, step: int, scoring: Scoring) -> dict[str, float]:
        from sfd import distributed
        from sfd.evaluation import adm

        scores = self.output_dir / "scores" / f"{variant.name}_{step:07d}_{scoring.name}.json"
        if scores.exists():
            return _scores(json.loads(scores.read_text()))
        npz, nfe = self.sample(variant, step, scoring)
        result: dict[str, float] = {}
        if self.topology.is_main:
            network, network_id = self.feature_network()
            results, report = adm.evaluate(self.reference, npz, network, device=self.device, network_id=network_id)
            adm.write_json(scores, {**report, "nfe": nfe})
            result = _scores({**asdict(results), "nfe": nfe})
        distributed.barrier()
        return result

    def sample(self, variant: Variant, step: int, scoring: Scoring) -> tuple[Path, float]:
        """``samples`` images of the EMA weights at ``step`` (class-balanced, or all with the null label when
        ``scoring`` is unconditional), as a folder of PNGs and its .npz; returns the .npz and the mean NFE per
        batch (NaN when the folder was complete already)."""
        from sfd.build import build_model
        from sfd.checkpoint import load_weights
        from sfd.config import resolve_path
        from sfd.device import Accelerator, set_matmul_precision
        from sfd.generate import ImageSampler, LabelPlan, LatentDecoder, write_fid_set
        from sfd.tokenizers.texture_vae import load_texture_vae

        config = self.config(variant, scoring=scoring)
        folder = self.output_dir / "samples" / f"{variant.name}_{step:07d}_{scoring.name}"
        npz = folder.parent / f"{folder.name}.npz"  # not with_suffix: names hold dots (dt0.3)
        if npz.exists():
            return npz, float("nan")
        model = build_model(config)
        checkpoint = self.output_dir / "runs" / variant.name / "checkpoints" / f"{step:07d}.pt"
        load_weights(model, checkpoint, prefer="ema")
        vae = load_texture_vae(resolve_path(config.vae.config_path, self.config_path), device=self.device)
        seed = self.seed + variant.repeat
        # the release's sampling numerics (fp32 with TF32 matmuls on CUDA; plain fp32 where no such switch exists)
        precision = Accelerator.of(self.device).effective_precision("tf32")
        set_matmul_precision(precision)
        sampler = ImageSampler(model.to(self.device).eval(), config, LatentDecoder(vae, config, self.device),
                               device=self.device, seed=seed, precision=precision)
        plan = LabelPlan(self.samples, config.data.num_classes, balanced=config.sample.balanced_sampling, seed=seed,
                         fixed=None if scoring.conditional else config.data.num_classes)
        write_fid_set(sampler, plan, folder, batch_size=config.sample.per_proc_batch_size, topology=self.topology,
                      provenance={"checkpoint": str(checkpoint), "device": self.device.type})
        return npz, sampler.mean_nfe

    def feature_network(self):
        if self.network is None:
            from sfd.evaluation.inception import load_inception

            self.network, self.network_id = load_inception(self.inception_weights, device=self.device)
        return self.network, self.network_id


def _scores(results: dict) -> dict[str, float]:
    return {metric: float(results[metric]) for metric in (*METRICS, "nfe") if metric in results}
