"""The paper's three claims put to a test at toy scale, on the demo's pipeline, with repeated seeds.

The study trains, on the demo's tokenizers and self-supervised semantics, every model of a grid — semantic source
(LightningDiT without semantic channels, LightningDiT + REPA, SFD's SemVAE semantics; optionally ReDi-style PCA) ×
semantic lead Δt × training seed — with the demo's budget, scores each at every training length with the converged
solver (conditional) and at the last also unconditionally and at an equal number of network evaluations, and writes
one report with a plain verdict per claim (arXiv 2512.04926):

(a) Table 1: LightningDiT → + REPA → + SFD (Δt = 0.3) lowers FID at equal training steps.
(b) The Δt ablation: FID is lowest for a semantic lead strictly inside (0, 1), better than the synchronous Δt = 0.
(c) Convergence: SFD reaches the best baseline's final FID in fewer steps (the paper's speed-up measure).

A difference counts only when it exceeds twice the larger seed-to-seed standard deviation of the two means compared
(:func:`compare`); otherwise the verdict says the claim is not decided at this scale. The sampler check tightens
the solver tenfold on the first seed of every model and compares the FID change with the seed spread.

Runs are ordered seed-major (every model of seed 0, then of seed 1, …), so a study stopped early leaves whole
seeds; a rerun resumes where it stopped, and the runs of ``make demo`` (seed 0) are reused, not retrained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from sfd.demo.pipeline import base_model
from sfd.files import write_text_atomic
from sfd.sweep import Scoring, Variant, _scorings, delta_t_plot, grid, metrics_of, summarise, summary_table

SFD_DELTA_T = base_model().semfirst_delta_t  # SFD's semantic lead as the demo config sets it (the paper's 0.3)


@dataclass
class StudySettings:
    name: str = "table1"
    sources: Sequence[str] = ("none", "none+repa", "semvae")  # names of sfd.sweep.SOURCE_CHOICES
    delta_ts: Sequence[float] = (0.0, 0.1, 0.3, 0.5)
    repeats: int = 3  # training seeds seed, seed + 1, …
    steps: Optional[int] = None  # default: the demo's
    eval_every: Optional[int] = None  # default: the demo's
    check: Optional[Scoring] = None  # the convergence check's solver (first seed only); default: the main one's
    # Scoring.tighter(), e.g. dopri5 at rtol 1e-4 for the release's 1e-3

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ValueError(f"repeats: {self.repeats} must be at least 1")
        if SFD_DELTA_T not in self.delta_ts or "semvae" not in self.sources:
            raise ValueError(f"delta_ts/sources: the study needs SFD itself (semvae at Δt = {SFD_DELTA_T})")

    def variants(self) -> list[Variant]:
        """Seed-major: all models of seed 0 first (the demo's three among them), then seed 1, …"""
        models = grid(base_model(), self.delta_ts, None, self.sources, 1)
        models.sort(key=lambda v: (v.semantics != "none", v.delta_t != SFD_DELTA_T, v.semantics, v.delta_t))
        return [replace(model, repeat=repeat) for repeat in range(self.repeats) for model in models]


# -- verdicts (pure functions of the summarised rows) ----------------------------------------------------------

def compare(a: dict, b: dict, metric: str = "fid") -> str:
    """``better``, ``worse`` or ``tied``: is mean ``a`` lower (better, for FID) than mean ``b`` by more than twice
    the larger of their seed standard deviations? ``tied`` also when either has a single run (no spread known)."""
    spread = max(a[f"{metric}_std"], b[f"{metric}_std"])
    if a["runs"] < 2 or b["runs"] < 2 or abs(a[metric] - b[metric]) <= 2 * spread:
        return "tied"
    return "better" if a[metric] < b[metric] else "worse"


def _cell(entry: dict, metric: str = "fid") -> str:
    return f"{entry[metric]:.2f} ± {entry[f'{metric}_std']:.2f}" if entry["runs"] > 1 else f"{entry[metric]:.2f}"


def _pick(summary: Sequence[dict], sampler: str, conditioning: str, step: Optional[int] = None, **fields) -> list:
    return [e for e in summary if e["sampler"] == sampler and e["conditioning"] == conditioning
            and (step is None or e["step"] == step) and all(e[k] == v for k, v in fields.items())]


def _final_step(summary: Sequence[dict], sampler: str, conditioning: str) -> Optional[int]:
    return max((e["step"] for e in _pick(summary, sampler, conditioning)), default=None)


_RELATION = {"better": "lower than", "worse": "higher than", "tied": "within the seed spread of"}


def table1_verdict(summary: Sequence[dict], sampler: str, conditioning: str) -> str:
    """Claim (a) at the longest training: SFD (SemVAE, Δt 0.3, REPA) against LightningDiT and LightningDiT + REPA."""
    step = _final_step(summary, sampler, conditioning)
    sfd = _pick(summary, sampler, conditioning, step, semantics="semvae", delta_t=SFD_DELTA_T, repa=True)
    baselines = _pick(summary, sampler, conditioning, step, semantics="none")
    if not sfd or not baselines:
        return f"(a) [{sampler}, {conditioning}]: not scored for SFD and a baseline."
    sfd = sfd[0]
    outcomes = [(base, compare(sfd, base)) for base in sorted(baselines, key=lambda e: e["repa"])]
    parts = "; ".join(f"{_RELATION[o]} {base['label']}'s {_cell(base)}" for base, o in outcomes)
    kinds = {o for _, o in outcomes}
    conclusion = ("holds: SFD is better than every baseline" if kinds == {"better"} else
                  "is contradicted: a baseline is better than SFD" if "worse" in kinds else
                  "holds only in part" if "better" in kinds else "is not decided at this scale")
    return (f"(a) Table 1 [{sampler}, {conditioning}, {step} steps, {sfd['runs']} seeds]: SFD's FID {_cell(sfd)} is "
            f"{parts}. The claim {conclusion}.")


def delta_t_verdict(summary: Sequence[dict], sampler: str, conditioning: str, semantics: str = "semvae") -> str:
    """Claim (b) at the longest training: where is the best Δt, and does it beat the synchronous Δt = 0?"""
    step = _final_step(summary, sampler, conditioning)
    entries = sorted(_pick(summary, sampler, conditioning, step, semantics=semantics, repa=True),
                     key=lambda e: e["delta_t"])
    synchronous = next((e for e in entries if e["delta_t"] == 0), None)
    if synchronous is None or len(entries) < 2:
        return f"(b) Δt [{sampler}, {conditioning}]: needs Δt = 0 and a semantic lead."
    best = min(entries, key=lambda e: e["fid"])
    curve = ", ".join(f"Δt {e['delta_t']:g}: {_cell(e)}" for e in entries)
    text = (f"(b) Δt [{sampler}, {conditioning}, {step} steps] ({curve}): the lowest mean FID is at "
            f"Δt = {best['delta_t']:g}")
    if best["delta_t"] == 0:
        beaten = [e for e in entries if e is not best and compare(best, e) == "better"]
        text += (", the synchronous model. The claim is contradicted" if len(beaten) == len(entries) - 1 else
                 ", the synchronous model, but not beyond the seed spread of every lead. The claim is not decided "
                 "at this scale")
        return text + "."
    edge = best["delta_t"] == entries[-1]["delta_t"]
    outcome = compare(best, synchronous)
    text += (", strictly inside (0, 1)" + (" (the largest lead tested, so no optimum is bracketed)" if edge else "")
             + f", {_RELATION[outcome]} Δt = 0. ")
    text += ("The claim holds." if outcome == "better" and not edge else
             "The claim holds in part (a lead helps; the optimum is not bracketed)." if outcome == "better" else
             "The claim is not decided at this scale.")
    return text


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float) -> Optional[float]:
    """The first training length at which a FID curve (scored lengths, ascending) reaches ``target``, by linear
    interpolation between the scored lengths around the crossing; the first scored length when it starts below
    (an upper bound); None when it never does."""
    previous = None
    for step, fid in curve:
        if fid <= target:
            if previous is None:
                return float(step)
            (step0, fid0) = previous
            return step0 + (step - step0) * (fid0 - target) / (fid0 - fid)
        previous = (step, fid)
    return None


def speedup_verdict(summary: Sequence[dict], sampler: str, conditioning: str) -> str:
    """Claim (c): training steps SFD needs (mean curve) to reach the best baseline's mean FID at its longest
    training, and the speed-up that gives."""
    step = _final_step(summary, sampler, conditioning)
    baselines = _pick(summary, sampler, conditioning, step, semantics="none")
    sfd_curve = sorted((e["step"], e["fid"]) for e in _pick(summary, sampler, conditioning, semantics="semvae",
                                                             delta_t=SFD_DELTA_T, repa=True))
    if not baselines or not sfd_curve:
        return f"(c) Convergence [{sampler}, {conditioning}]: not scored for SFD and a baseline."
    best = min(baselines, key=lambda e: e["fid"])
    reached = steps_to_reach(sfd_curve, best["fid"])
    lengths = ", ".join(str(s) for s, _ in sfd_curve)
    text = (f"(c) Convergence [{sampler}, {conditioning}]: the best baseline, {best['label']}, ends at FID "
            f"{_cell(best)} after {step} steps; SFD (scored at {lengths} steps) ")
    if reached is None:
        return text + "does not reach it within the budget. The claim is not supported at this scale."
    bound = reached == sfd_curve[0][0]
    text += (f"reaches it {'by' if bound else 'at about'} {reached:.0f} steps, a speed-up of "
             f"{'at least ' if bound else ''}{step / reached:.1f}×. ")
    return text + ("The claim holds (SFD needs fewer steps)." if reached < step else "The claim does not hold.")


def convergence_lines(rows: Sequence[dict], summary: Sequence[dict], main: Scoring, check: Scoring) -> list[str]:
    """Per model: |FID(main solver) − FID(tighter solver)| on the first seed at the last length, next to the seed
    standard deviation of the main solver's FID there; converged when the change is below the spread."""
    key = lambda row: (row["semantics"], row.get("repa", True), row["delta_t"], row["semantic_weight"])  # noqa: E731
    final = max(row["step"] for row in rows)
    first = {(key(row), row["sampler"]): row for row in rows
             if row["repeat"] == 0 and row["step"] == final and row["conditioning"] == main.conditioning}
    lines = []
    for (model, sampler), row in sorted(first.items(), key=lambda item: str(item[0])):
        tight = first.get((model, check.sampler))
        if sampler != main.sampler or tight is None:
            continue
        spread = next((e["fid_std"] for e in _pick(summary, main.sampler, main.conditioning, final)
                       if (e["semantics"], e["repa"], e["delta_t"], e["semantic_weight"]) == model), 0.0)
        change = abs(row["fid"] - tight["fid"])
        verdict = "converged" if spread and change < spread else "NOT converged" if spread else "spread unknown"
        lines.append(f"| {row['label']} | {row['fid']:.2f} ({row['nfe']:.0f} NFE) | {tight['fid']:.2f} "
                     f"({tight['nfe']:.0f} NFE) | {change:.2f} | {spread:.2f} | {verdict} |")
    if not lines:
        return []
    return [f"| model (seed 0, {final} steps) | FID, {main.sampler} | FID, {check.sampler} | change | seed std | |",
            "|---|---:|---:|---:|---:|---|", *lines]


def verdicts(summary: Sequence[dict]) -> dict[str, str]:
    """Every claim for every way of sampling in the summary, keyed ``<claim> [<sampler>, <conditioning>]``."""
    found = {}
    for sampler, conditioning in _scorings(summary):
        if _final_step(summary, sampler, conditioning) != max(e["step"] for e in summary):
            continue  # e.g. the convergence check, scored on one seed
        tag = f"[{sampler}, {conditioning}]"
        found[f"table1 {tag}"] = table1_verdict(summary, sampler, conditioning)
        found[f"delta_t {tag}"] = delta_t_verdict(summary, sampler, conditioning)
        if len({e["step"] for e in _pick(summary, sampler, conditioning)}) > 1:  # a curve, not one length
            found[f"speedup {tag}"] = speedup_verdict(summary, sampler, conditioning)
    return found


# -- the report ------------------------------------------------------------------------------------------------

def fid_vs_step_plot(summary: Sequence[dict], path: Path, sampler: str, conditioning: str) -> Path:
    from sfd.visualize import line_plot

    series: dict[str, tuple[list, list, list]] = {}
    for entry in sorted(_pick(summary, sampler, conditioning), key=lambda e: e["step"]):
        x, y, error = series.setdefault(entry["label"], ([], [], []))
        x.append(entry["step"])
        y.append(entry["fid"])
        error.append(entry["fid_std"])
    return line_plot(path, series, "training step", "FID ↓ (mean ± std over seeds)",
                     f"FID vs training length ({sampler}, {conditioning})")


def write_study_report(rows: Sequence[dict], folder: Path, title: str, main: Scoring, check: Scoring,
                       setup: Sequence[str] = ()) -> Path:
    """``results.json``, ``table.md`` (every point, mean ± std), ``verdicts.json``, ``fid_vs_delta_t.png``,
    ``fid_vs_step.png`` and ``report.md`` (verdicts first). Returns the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "results.json", json.dumps(list(rows), indent=1) + "\n")
    # the tighter solver is scored on one seed: it checks the main solver, it is not a row of the comparison
    compared = [row for row in rows if row["sampler"] != check.sampler]
    summary = summarise(compared)
    found = verdicts(summary)
    write_text_atomic(folder / "verdicts.json", json.dumps(found, indent=1) + "\n")
    seeds = sorted({row["repeat"] for row in rows})
    ordered = sorted(summary, key=lambda e: (e["semantics"] != "none", e["semantics"], e["repa"], e["delta_t"],
                                             e["conditioning"], e["sampler"], e["step"]))
    table = summary_table(ordered, metrics_of(compared), True)
    write_text_atomic(folder / "table.md", "\n".join([f"# {title}: every point", "", *table, ""]))
    delta_t_plot(summary, folder / "fid_vs_delta_t.png")
    fid_vs_step_plot(summary, folder / "fid_vs_step.png", main.sampler, main.conditioning)
    others = ", ".join(sorted({row["sampler"] for row in compared} - {main.sampler}))
    equal_nfe = (f"**{others}** gives every model the same number of network evaluations (SFD spends some while its "
                 "texture waits); " if others else "")
    check_table = convergence_lines(rows, summarise(rows), main, check)
    converged = sum(line.endswith("| converged |") for line in check_table)
    lines = [f"# {title}", "",
             f"{len({row['label'] for row in rows})} models × {len(seeds)} training seeds "
             f"({', '.join(map(str, seeds))}); "
             "values are means ± sample standard deviations over seeds. A difference counts when it exceeds twice "
             "the larger of the two standard deviations.", "",
             "## Verdicts", "", *[f"* {text}" for text in found.values()],
             f"* Solver: {converged} of {len(check_table[2:])} models have converged at {main.sampler} (tightening "
             "it moves FID by less than the seed spread; table below).", "",
             "Which row is which: "
             f"**{main.sampler}** is the converged solver (checked below), scored at every training length; "
             f"{equal_nfe}**unconditional** gives every sample the null label (the same class-dropout-trained "
             "networks, no separate training).", "",
             "![FID vs step](fid_vs_step.png) ![FID vs Δt](fid_vs_delta_t.png)", "",
             "## Is the solver converged?", ""]
    lines += (check_table or ["(not checked: no row has both solvers)"]) + [
        "", f"The check reruns the first seed of every model with {check.sampler} ("
            + ("twice the grid intervals" if check.fixed_grid else "a tenfold tighter tolerance") + "); a change "
            "below the seed spread means the main solver's FID measures the model, not the solver.", "",
        f"## After {max(e['step'] for e in summary)} steps and at every length", "", *table, ""]
    if setup:
        lines += ["## Setup", "", *[f"* {line}" for line in setup], ""]
    lines += ["Raw rows (one per model, seed, length and scoring): results.json.", ""]
    return write_text_atomic(folder / "report.md", "\n".join(lines))


def run_study(pipeline, study: StudySettings) -> Path:
    """Train and score the study's grid on ``pipeline`` (a :class:`sfd.demo.pipeline.DemoPipeline`) and write its
    report under ``<run dir>/studies/<name>/``."""
    from sfd.demo.report import setup_lines

    settings = pipeline.settings
    steps = study.steps or settings.diffusion_steps
    check = study.check or settings.scoring.tighter()
    rows = pipeline.sweep(study.variants(), steps, study.eval_every or settings.eval_every, check_scorings=(check,))
    setup = [*setup_lines(pipeline), f"Budget: {steps} training steps per model, scored at "
             f"{', '.join(map(str, sorted({row['step'] for row in rows})))} steps with {settings.samples} samples."]
    title = "Semantic-first diffusion at toy scale: Table 1, the Δt ablation and convergence"
    return write_study_report(rows, Path(settings.run_dir) / "studies" / study.name, title, settings.scoring,
                              check, setup)

