"""Sweeps over SFD's design axes at equal budgets, written as one table and one plot.

The paper's claims are comparisons (arXiv 2512.04926): FID as a function of the semantic lead Δt (§4.3, the Δt
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
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

import torch

SEMANTIC_SOURCES = ("semvae", "pca")
VARIANT_FIELDS = ("delta_t", "semantic_weight", "semantics", "repeat")
# Metrics a backend may report, in table order, with the direction that is better.
METRICS = {"fid": "FID ↓", "sfid": "sFID ↓", "inception_score": "IS ↑", "precision": "Precision ↑",
           "recall": "Recall ↑", "class_accuracy": "class accuracy ↑"}


@dataclass(frozen=True)
class Variant:
    """One trained model of a sweep.

    ``delta_t``: the semantic lead (0 = synchronous); ``semantic_weight``: β of the semantic velocity loss;
    ``semantics``: where the semantic channels come from (``semvae`` or ReDi-style ``pca``); ``repeat``: index of a
    repeated training run (seed + repeat), to measure the spread between runs that differ only in their seed.
    """

    delta_t: float
    semantic_weight: float = 2.0
    semantics: str = "semvae"
    repeat: int = 0

    def __post_init__(self) -> None:
        if self.semantics not in SEMANTIC_SOURCES:
            raise ValueError(f"semantics: {self.semantics!r} is not one of {', '.join(SEMANTIC_SOURCES)}")
        if not 0.0 <= self.delta_t < 1.0:  # as model.semfirst_delta_t (the release asserts Δt < 1)
            raise ValueError(f"delta_t: {self.delta_t} is outside [0, 1)")
        if self.semantic_weight < 0:
            raise ValueError(f"semantic_weight: {self.semantic_weight} is negative")
        if self.repeat < 0:
            raise ValueError(f"repeat: {self.repeat} is negative")

    @property
    def name(self) -> str:
        """Folder and stage name; equal settings give equal names, so sweeps sharing a run folder share runs."""
        suffix = f"_r{self.repeat}" if self.repeat else ""
        return f"dt{self.delta_t:g}_w{self.semantic_weight:g}_{self.semantics}{suffix}"

    @property
    def series(self) -> str:
        """The line this variant belongs to in the Δt plot."""
        return f"{self.semantics}, β={self.semantic_weight:g}"

    def overrides(self) -> list[str]:
        return [f"model.semfirst_delta_t={self.delta_t}", f"model.semantic_weight={self.semantic_weight}"]


def grid(delta_ts: Iterable[float], semantic_weights: Iterable[float] = (2.0,),
         semantics: Iterable[str] = ("semvae",), repeats: int = 1) -> list[Variant]:
    """Every combination, in the order source → weight → Δt → repeat, without duplicates."""
    if repeats < 1:
        raise ValueError(f"repeats: {repeats} must be at least 1")
    variants = [Variant(float(dt), float(weight), source, repeat) for source, weight, dt, repeat in
                itertools.product(semantics, semantic_weights, delta_ts, range(repeats))]
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


def channel_overrides(data_path: str | Path) -> list[str]:
    """Point the config at a latent folder and size the model for its channels (texture first, semantic last)."""
    texture, semantic = latent_channels(data_path)
    return [f"data.data_path={data_path}", f"model.in_chans={texture + semantic}", f"model.semantic_chans={semantic}"]


class Backend(Protocol):
    def train(self, variant: Variant, steps: int, checkpoint_every: int) -> None: ...

    def evaluate(self, variant: Variant, step: int) -> dict[str, float]: ...


def run_sweep(backend: Backend, variants: Sequence[Variant], steps: int, eval_every: Optional[int] = None,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train every variant for ``steps`` and score it at :func:`evaluation_steps`; one row per (variant, step)."""
    eval_steps = evaluation_steps(steps, eval_every)
    checkpoint_every = math.gcd(*eval_steps)  # a checkpoint at every scored length
    rows = []
    for number, variant in enumerate(variants, 1):
        log(f"== variant {number}/{len(variants)}: {variant.name}")
        backend.train(variant, steps, checkpoint_every)
        for step in eval_steps:
            rows.append({"name": variant.name, **asdict(variant), "step": step, **backend.evaluate(variant, step)})
    return rows


# -- the report ------------------------------------------------------------------------------------------------

def metrics_of(rows: Sequence[dict]) -> list[str]:
    return [metric for metric in METRICS if any(metric in row for row in rows)]


def summarise(rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Rows averaged over repeats: per (semantics, weight, Δt, step) the mean, sample std and count of each metric."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["semantics"], row["semantic_weight"], row["delta_t"], row["step"]), []).append(row)
    summary = []
    for (semantics, weight, delta_t, step), members in sorted(groups.items()):
        entry: dict[str, Any] = {"semantics": semantics, "semantic_weight": weight, "delta_t": delta_t, "step": step,
                                 "runs": len(members)}
        for metric in metrics_of(members):
            values = torch.tensor([float(row[metric]) for row in members if metric in row], dtype=torch.float64)
            entry[metric] = values.mean().item()
            entry[f"{metric}_std"] = values.std().item() if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def _cell(entry: dict, metric: str) -> str:
    if metric not in entry:
        return "–"
    digits = 3 if metric in ("precision", "recall", "class_accuracy") else 2
    value = f"{entry[metric]:.{digits}f}"
    return f"{value} ± {entry[f'{metric}_std']:.{digits}f}" if entry["runs"] > 1 else value


def findings(summary: Sequence[dict], metric: str = "fid") -> list[str]:
    """Per series at the longest training: the best Δt, and the best semantic lead (Δt > 0) against the synchronous
    Δt = 0, with the gap compared to twice the spread between repeated runs (when there are repeats)."""
    final = max(entry["step"] for entry in summary)
    higher_is_better = METRICS[metric].endswith("↑")
    pick = max if higher_is_better else min
    series: dict[tuple, list[dict]] = {}
    for entry in summary:
        if entry["step"] == final and metric in entry:
            series.setdefault((entry["semantics"], entry["semantic_weight"]), []).append(entry)
    lines = []
    for (semantics, weight), entries in series.items():
        best = pick(entries, key=lambda entry: entry[metric])
        text = (f"{semantics}, β={weight:g}: the best {metric.upper()} at {final} steps is at Δt = {best['delta_t']:g} "
                f"({_cell(best, metric)})")
        synchronous = next((entry for entry in entries if entry["delta_t"] == 0), None)
        leads = [entry for entry in entries if entry["delta_t"] > 0]
        if synchronous is not None and leads:
            lead = pick(leads, key=lambda entry: entry[metric])
            gap = abs(lead[metric] - synchronous[metric])
            better = (lead[metric] > synchronous[metric]) == higher_is_better
            spread = max(lead[f"{metric}_std"], synchronous[f"{metric}_std"])
            text += (f"; the best semantic lead, Δt = {lead['delta_t']:g} ({_cell(lead, metric)}), is "
                     f"{'better' if better else 'worse'} than the synchronous Δt = 0 ({_cell(synchronous, metric)}) "
                     f"by {gap:.2f}, ")
            text += (("more than" if gap > 2 * spread else "within") + f" twice the spread between repeated runs "
                     f"(std {spread:.2f})" if spread else "from one run each (no repeats: the run-to-run spread is "
                     "unknown)")
        lines.append(text + ".")
    return lines


def write_sweep_report(rows: Sequence[dict], folder: str | Path, title: str, setup: Sequence[str] = (),
                       metric: str = "fid") -> Path:
    """``results.json`` (every row), ``table.md`` (averaged over repeats: the longest training first, then every
    scored length) and ``<metric>_vs_delta_t.png`` (one line per semantic source and weight, the longest training).
    Returns the table's path."""
    from sfd.visualize import line_plot

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_text(folder / "results.json", json.dumps(list(rows), indent=1) + "\n")
    summary = summarise(rows)
    metrics = metrics_of(rows)
    final = max(entry["step"] for entry in summary)
    series: dict[str, tuple[list, list, list]] = {}
    for entry in summary:
        if entry["step"] == final and metric in entry:
            x, y, error = series.setdefault(f"{entry['semantics']}, β={entry['semantic_weight']:g}", ([], [], []))
            x.append(entry["delta_t"])
            y.append(entry[metric])
            error.append(entry[f"{metric}_std"])
    plot = line_plot(folder / f"{metric}_vs_delta_t.png", series, "semantic lead Δt (0 = synchronous)",
                     METRICS[metric], f"{METRICS[metric].split()[0]} vs Δt after {final} steps")

    def table(entries: Sequence[dict], with_step: bool) -> list[str]:
        head = ["semantics", "β", "Δt", *(["step"] if with_step else []), "runs", *(METRICS[m] for m in metrics)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
        for entry in entries:
            cells = [entry["semantics"], f"{entry['semantic_weight']:g}", f"{entry['delta_t']:g}",
                     *([str(entry["step"])] if with_step else []), str(entry["runs"]),
                     *(_cell(entry, m) for m in metrics)]
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    ordered = sorted(summary, key=lambda e: (e["semantics"], e["semantic_weight"], e["delta_t"], e["step"]))
    lines = [f"# {title}", "", "## Findings", "", *[f"* {line}" for line in findings(summary, metric)], "",
             f"## After {final} steps", "", *table([e for e in ordered if e["step"] == final], False), "",
             f"![{metric} vs Δt]({plot.name})", ""]
    if len({entry["step"] for entry in summary}) > 1:
        lines += ["## Every scored training length", "", *table(ordered, True), ""]
    if setup:
        lines += ["## Setup", "", *[f"* {line}" for line in setup], ""]
    lines += ["Values are means over repeated training runs ± their sample standard deviation when a point was "
              "trained more than once. Raw rows: results.json.", ""]
    return _write_text(folder / "table.md", "\n".join(lines))


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


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

    def config(self, variant: Variant, steps: Optional[int] = None, checkpoint_every: Optional[int] = None):
        from sfd.config import load_config

        if variant.semantics not in self.latents:
            raise ValueError(f"semantics {variant.semantics!r}: no latent folder given for it "
                             f"(have: {', '.join(self.latents) or 'none'})")
        return load_config(self.config_path, [
            *self.overrides, *channel_overrides(self.latents[variant.semantics]), *variant.overrides(),
            f"train.output_dir={self.output_dir / 'runs'}", f"train.exp_name={variant.name}",
            f"train.global_seed={self.seed + variant.repeat}", f"sample.fid_num={self.samples}",
            *([f"train.max_steps={steps}"] if steps else []),
            *([f"train.ckpt_every={checkpoint_every}"] if checkpoint_every else [])])

    def train(self, variant: Variant, steps: int, checkpoint_every: int) -> None:
        from sfd.train import Trainer

        Trainer(self.config(variant, steps, checkpoint_every), self.topology).run(progress=self.progress)

    def evaluate(self, variant: Variant, step: int) -> dict[str, float]:
        from sfd import distributed
        from sfd.evaluation import adm

        scores = self.output_dir / "scores" / f"{variant.name}_{step:07d}.json"
        if scores.exists():
            return _scores(json.loads(scores.read_text()))
        npz = self.sample(variant, step)
        result: dict[str, float] = {}
        if self.topology.is_main:
            network, network_id = self.feature_network()
            results, report = adm.evaluate(self.reference, npz, network, device=self.device, network_id=network_id)
            adm.write_json(scores, report)
            result = _scores(asdict(results))
        distributed.barrier()
        return result

    def sample(self, variant: Variant, step: int) -> Path:
        """``samples`` class-balanced images of the EMA weights at ``step``, as a folder of PNGs and its .npz."""
        from sfd import distributed
        from sfd.build import build_model
        from sfd.checkpoint import load_weights
        from sfd.config import resolve_path
        from sfd.evaluation.npz import load_images, save_sample_npz
        from sfd.generate import ImageSampler, LabelPlan, LatentDecoder, generate_folder
        from sfd.tokenizers.texture_vae import load_texture_vae

        config = self.config(variant)
        folder = self.output_dir / "samples" / f"{variant.name}_{step:07d}"
        npz = folder.parent / f"{folder.name}.npz"  # not with_suffix: names hold dots (dt0.3)
        if npz.exists():
            return npz
        model = build_model(config)
        load_weights(model, self.output_dir / "runs" / variant.name / "checkpoints" / f"{step:07d}.pt", prefer="ema")
        vae = load_texture_vae(resolve_path(config.vae.config_path, self.config_path), device=self.device)
        seed = self.seed + variant.repeat
        sampler = ImageSampler(model.to(self.device).eval(), config, LatentDecoder(vae, config, self.device),
                               device=self.device, seed=seed)
        plan = LabelPlan(self.samples, config.data.num_classes, balanced=config.sample.balanced_sampling, seed=seed)
        generate_folder(sampler, plan, folder, batch_size=config.sample.per_proc_batch_size,
                        rank=self.topology.rank, world_size=self.topology.world_size)
        distributed.barrier()
        if self.topology.is_main:
            save_sample_npz(npz, load_images(folder)[: self.samples], plan.labels(range(self.samples)).numpy())
        distributed.barrier()
        return npz

    def feature_network(self):
        if self.network is None:
            from sfd.evaluation.inception import load_inception

            self.network, self.network_id = load_inception(self.inception_weights, device=self.device)
        return self.network, self.network_id


def _scores(results: dict) -> dict[str, float]:
    return {metric: float(results[metric]) for metric in METRICS if metric in results}
