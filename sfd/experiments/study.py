"""The paper's claims put to a test at toy scale, with paired seeds, and the semantic-anchor diagnostics.

The study trains, on the Fashion-MNIST backend's tokenizers and self-supervised semantics, every model of a grid —
semantic source (LightningDiT without semantic channels, LightningDiT + REPA, SFD's SemVAE semantics; optionally
ReDi-style PCA) × semantic lead Δt × training seed — with one budget, scores each at several training lengths and
writes one report (:func:`sfd.experiments.report.write_study_report`) with a verdict per claim (arXiv 2512.04926):

(a) Table 1: LightningDiT → + REPA → + SFD (Δt = 0.3) lowers FID at equal training steps.
(b) The Δt ablation: a semantic lead beats the synchronous composite model (Δt = 0).
(c) Convergence: SFD reaches the best baseline's final FID in fewer steps (the paper's speed-up measure).
(d) The semantic anchor: with the true semantic latents of held-out images held in its semantic channels (oracle
    semantics, :mod:`sfd.experiments.diagnostics`), does SFD's texture get better than when it generates its own
    semantics, and better than a model without semantic channels? Which limit binds: generating or using them.
(e) The lead's shape (optional, ``schedules``): does SFD with a shrinking or smooth lead (:mod:`sfd.schedule`, the
    same Δt) beat the release's constant lead?

The setup follows the paper as closely as the toy allows and was fixed before any result: the four models the
verdicts rest on (LightningDiT, + REPA, the synchronous composite model, SFD at Δt 0.3) with 5 training seeds each,
trained to 10,800 steps (≈ 35 epochs of the 10,000 training images at batch 32); scored with the paper's dopri5 at
the release's tolerance, integrated phase by phase (the release's sampler without phases has not converged on these
models; with phases it lands within 0.04 of the tenfold tighter solver, docs/results.md), on 2,000 class-balanced
samples at the verdict lengths 3,600 and 10,800 and on 500 at every scored length (the curves), against all 10,000
Fashion-MNIST test images. Verdicts use paired differences per seed (:data:`sfd.experiments.report.VERDICT_RULE`).

Runs are ordered seed-major (every model of seed 0, then of seed 1, …), so a study stopped early leaves whole
seeds; a rerun resumes where it stopped, ``--steps`` extends every run, and the runs of ``make demo`` (seed 0) are
continued, not retrained.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

from sfd.experiments.fashion import FashionBackend, base_model
from sfd.experiments.report import StudyLayout, setup_lines, write_study_report
from sfd.experiments.sweep import Scoring, Variant, grid
from sfd.schedule import SCHEDULE_SHAPES


def sfd_delta_t() -> float:
    """SFD's semantic lead as the demo config sets it (the paper's 0.3)."""
    return base_model().semfirst_delta_t


@dataclass
class StudySettings:
    name: str = "anchors"
    sources: Sequence[str] = ("none", "none+repa", "semvae")  # names of sfd.experiments.sweep.SOURCE_CHOICES
    delta_ts: Sequence[float] = (0.0, 0.3)  # the synchronous composite model and SFD's lead
    repeats: int = 5  # training seeds seed, seed + 1, …
    seeds: Optional[Sequence[int]] = None  # only these repeats (parts run side by side); None: all, and the report
    steps: int = 10_800
    lengths: Sequence[int] = (1200, 3600, 7200, 10_800)  # scored lengths (those ≤ steps)
    verdict_steps: Sequence[int] = (3600, 10_800)  # lengths the verdicts are drawn at (with verdict_samples)
    curve_samples: int = 500  # samples per score at every length (the FID-vs-steps curves)
    verdict_samples: int = 2000  # samples per score at the verdict lengths
    reference_images: int = 10_000  # FID reference: this many Fashion-MNIST test images (10,000: all)
    # dopri5 at the release's tolerance, phase by phase; its check: the tenfold tighter tolerance (Scoring.tighter)
    main: Scoring = field(default_factory=lambda: Scoring(phases=True))
    # Post-hoc EMA (docs/ema.md): the runs track power EMAs of tracked_widths and every model is also scored, at the
    # verdict lengths with curve_samples, at each of ema_widths, rebuilt from the snapshots; the report sets each
    # model's best width beside its classic EMA. Empty: the classic EMA only (the runs track nothing).
    ema_widths: Sequence[float] = ()
    tracked_widths: Sequence[float] = (0.05, 0.10)  # EDM2's pair
    # Shapes of the lead (sfd.schedule.SCHEDULE_SHAPES): each one other than constant adds SFD with that shape (SFD's
    # Δt, SemVAE semantics, REPA) on every seed; the report pairs it with the constant lead, claim (e).
    schedules: Sequence[str] = ("constant",)

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats: {self.repeats} must be at least 1")
        if sfd_delta_t() not in self.delta_ts or "semvae" not in self.sources:
            raise ValueError(f"delta_ts/sources: the study needs SFD itself (semvae at Δt = {sfd_delta_t()})")
        if "constant" not in self.schedules or not set(self.schedules) <= set(SCHEDULE_SHAPES):
            raise ValueError(f"schedules: {', '.join(self.schedules)} must be among {', '.join(SCHEDULE_SHAPES)} "
                             "and hold constant (SFD itself)")
        unknown = sorted(set(self.seeds or ()) - set(range(self.repeats)))
        if unknown:
            raise ValueError(f"seeds: {unknown} are not among the {self.repeats} repeats (0..{self.repeats - 1})")

    def variants(self) -> list[Variant]:
        """Seed-major: all models of seed 0 first (the demo's three among them, then the other constant leads, then
        SFD with each other shape), then seed 1, …"""
        delta, model = sfd_delta_t(), base_model()
        models = grid(model, self.delta_ts, None, self.sources, 1, schedules=("constant",))
        models += [Variant.of(model, "semvae", delta_t=delta, repa=True, schedule=shape)
                   for shape in dict.fromkeys(self.schedules) if shape != "constant"]
        models.sort(key=lambda v: (v.schedule != "constant", v.semantics != "none", v.delta_t != delta, v.semantics,
                                   v.delta_t, SCHEDULE_SHAPES.index(v.schedule)))
        chosen = range(self.repeats) if self.seeds is None else sorted(self.seeds)
        return [replace(model, repeat=repeat) for repeat in chosen for model in models]

    def layout(self) -> StudyLayout:
        """The scorings of the study, for its runner and its report."""
        main = replace(self.main, samples=self.verdict_samples)
        curve = replace(self.main, samples=self.curve_samples)
        return StudyLayout(curve=curve, main=main, oracle=replace(main, oracle=True), check=main.tighter(),
                           verdict_steps=tuple(self.verdict_steps), sfd_delta_t=sfd_delta_t(),
                           averages=tuple(replace(curve, average=width) for width in self.ema_widths))


def run_study(backend: FashionBackend, study: StudySettings) -> Path:
    """Train and score the study's grid on ``backend`` and write its report under
    ``<run dir>/studies/<name>/`` (the folder of the part's runs when ``study.seeds`` names a part)."""
    layout = study.layout()
    lengths = [length for length in study.lengths if length <= study.steps] or [study.steps]
    at = {step: (layout.curve, layout.main, layout.oracle, *layout.averages) for step in study.verdict_steps
          if step in lengths}
    rows = backend.sweep(study.variants(), study.steps, scorings=(layout.curve,), lengths=lengths, at=at,
                         final_scorings=(), check_scorings=(layout.check,))
    settings = backend.settings
    floors = {count: backend.semantic_fd_floor(count) for count in (study.curve_samples, study.verdict_samples)}
    sampling = (f"Sampling: {layout.main.sampler} at every scored length (phase by phase when Δt > 0), at the verdict "
                f"lengths also with oracle semantics{' and at each power-EMA width' if layout.averages else ''}; the "
                f"check {layout.check.sampler} on the first seed at the last length; no guidance; the classic EMA "
                "weights unless a width is named.")
    setup = [*setup_lines(backend, f"{study.verdict_samples} (verdict lengths) or {study.curve_samples} (curves)",
                          sampling),
             f"Budget: {study.steps} training steps per model at batch {settings.diffusion_batch}, scored at "
             f"{', '.join(map(str, lengths))} steps with {study.curve_samples} samples, and at "
             f"{', '.join(map(str, sorted(at)))} with {study.verdict_samples} (normal and oracle semantics).",
             "Semantic FD: the Fréchet distance between generated and held-out semantic latents (each latent one "
             "vector); its floor, the true latents of as many training images against the same held-out ones, is "
             + ", ".join(f"{value:.2f} for {count} samples" for count, value in floors.items()) + "."]
    title = "Semantic-first diffusion at toy scale: the paper's claims with paired seeds, and the semantic anchor"
    name = study.name if study.seeds is None else f"{study.name}_seeds{'-'.join(map(str, sorted(study.seeds)))}"
    return write_study_report(rows, Path(settings.run_dir) / "studies" / name, title, layout, setup)
