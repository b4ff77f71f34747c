"""The demo's report: the Table-1-style comparison with a plain verdict, the encoders' probes, sample grids per
class, loss and FID-vs-step plots, and links to the sweeps and studies run in the same folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from sfd.demo.networks import CLASSES
from sfd.files import WriteError, write_text_atomic
from sfd.sweep import evaluation_steps
from sfd.visualize import image_grid, line_plot, save_png

if TYPE_CHECKING:
    from sfd.demo.pipeline import DemoPipeline


def report_command(make_report: Callable[[], Path]) -> int:
    """The tail of the demo's commands (scripts/demo.py, study.py, nfe_study.py): run ``make_report``, print where
    the report is and return 0, or print the one-line reason and return 2."""
    import sys

    try:
        report = make_report()
    except (FileNotFoundError, ValueError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    return 0


def _training_log(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def class_grid(samples_file: Path, per_class: int = 10, scale: int = 2) -> np.ndarray:
    """Rows = classes 0..9, ``per_class`` samples each, upscaled ``scale``× (nearest)."""
    data = np.load(samples_file)
    images, labels = data["images"], data["labels"]
    rows = []
    for label in range(10):
        chosen = images[labels == label][:per_class]
        if len(chosen):
            rows.append(chosen)
    picked = np.concatenate(rows).repeat(scale, axis=1).repeat(scale, axis=2)
    return image_grid(picked, columns=per_class, padding=2)


def verdict(rows: Sequence[dict], sfd: str, baselines: Sequence[str], sampler: str,
            conditioning: str = "conditional") -> str:
    """One plain sentence: at the longest training scored with ``sampler``, is the FID of the variant named ``sfd``
    lower than that of every variant in ``baselines`` (and by how much)?"""
    chosen = [row for row in rows if row["sampler"] == sampler and row["conditioning"] == conditioning]
    final = max((row["step"] for row in chosen), default=None)
    fid = {row["name"]: row["fid"] for row in chosen if row["step"] == final}
    if final is None or sfd not in fid or not all(name in fid for name in baselines):
        return f"No training length has SFD and every baseline scored with {sampler} ({conditioning})."
    labels = {row["name"]: row["label"] for row in chosen}
    beaten = [name for name in baselines if fid[sfd] < fid[name]]
    outcome = ("lower than every baseline's" if len(beaten) == len(baselines) else
               "lower than none of the baselines'" if not beaten else
               "lower than " + ", ".join(labels[name] for name in beaten) + "'s only")
    others = "; ".join(f"{labels[name]} {fid[name]:.2f}" for name in baselines)
    return (f"After {final} steps ({sampler}, {conditioning}), SFD's FID {fid[sfd]:.2f} is {outcome} ({others}); "
            "one training seed — the spread between seeds and the other conditions are in the study "
            "(scripts/study.py).")


def comparison_table(rows: Sequence[dict], names: Sequence[str]) -> list[str]:
    """Markdown: one line per (model, step, sampler, conditioning) of the ``names`` variants, in that order."""
    lines = ["| model | step | sampler | NFE | conditioning | FID ↓ | class accuracy ↑ |",
             "|---|---:|---|---:|---|---:|---:|"]
    order = {name: index for index, name in enumerate(names)}
    for row in sorted((row for row in rows if row["name"] in order),
                      key=lambda row: (row["step"], order[row["name"]], row["sampler"], row["conditioning"])):
        accuracy = f"{row['class_accuracy']:.3f}" if "class_accuracy" in row else "–"
        nfe = f"{row['nfe']:.0f}" if row.get("nfe") == row.get("nfe") and "nfe" in row else "–"
        lines.append(f"| {row['label']} | {row['step']} | {row['sampler']} | {nfe} | {row['conditioning']} | "
                     f"{row['fid']:.2f} | {accuracy} |")
    return lines


def scoring_note(main, final_scorings) -> str:
    """Which row is which: the converged-solver rows and the equal-NFE rows, worded from the scorings used."""
    if not main.fixed_grid:
        text = (f"Rows with {main.sampler} use the paper's adaptive solver at the release's tolerances, where FID has "
                "converged in the solver (the study checks it against a tighter tolerance).")
    else:
        text = f"Rows with {main.sampler} use a fixed grid of {main.steps} points (a smoke-sized setting)."
    fixed = [s for s in final_scorings if s.fixed_grid]
    if fixed:
        text += (f" The {', '.join(dict.fromkeys(s.sampler for s in fixed))} rows give every model the same number "
                 "of network evaluations (SFD spends some of them while texture waits for semantics).")
    return text


def probe_lines(probes: dict) -> list[str]:
    lines = ["| DINOv2 stand-in | k-NN accuracy | linear-probe accuracy |", "|---|---:|---:|"]
    names = {"ssl": "self-supervised (contrastive, no labels)", "supervised": "supervised (10-class classifier)",
             "untrained": "untrained (same architecture, initial weights)"}
    for key, name in names.items():
        if key in probes:
            lines.append(f"| {name} | {probes[key]['knn']:.3f} | {probes[key]['linear']:.3f} |")
    return lines


def report_links(run_dir: Path) -> list[str]:
    """A link to each sweep's table and each study's report, with their findings or verdicts."""
    from sfd.sweep import findings, summarise

    lines = []
    for table in sorted((run_dir / "sweeps").glob("*/table.md")):
        rows = json.loads((table.parent / "results.json").read_text())
        lines.append(f"* sweep [{table.parent.name}](sweeps/{table.parent.name}/table.md): "
                     + " ".join(findings(summarise(rows))))
    for report in sorted((run_dir / "studies").glob("*/report.md")):
        verdicts = report.parent / "verdicts.json"
        text = " ".join(json.loads(verdicts.read_text()).values()) if verdicts.exists() else ""
        lines.append(f"* study [{report.parent.name}](studies/{report.parent.name}/report.md): {text}".rstrip())
    return lines


def setup_lines(pipeline: "DemoPipeline") -> list[str]:
    """What every model of the pipeline shares: data, tokenizers, features, FID network, backbone, sampler."""
    settings, stage = pipeline.settings, pipeline.stages.done
    encoder = ("**a small CNN trained without labels** (SimCLR-style contrastive learning on two augmented views) "
               if settings.encoder == "ssl" else "**a small CNN trained as a 10-class classifier** ")
    lines = [
        f"Data: Fashion-MNIST, {len(pipeline.train_x)} training and {len(pipeline.test_x)} test images, padded to "
        "32×32 RGB.",
        "Texture tokenizer: a tiny LDM KL-VAE (32×32 → 4×8×8), trained here "
        f"(test reconstruction MSE {stage('texture_vae')['test_mse']:.4f}).",
        f"Semantic features: {encoder}stands in for DINOv2: its 8×8×32 per-patch tokens (pretrained DINOv2 cannot "
        "be downloaded offline). They feed the Semantic VAE and are the REPA target.",
        "Semantic tokenizer: the project's Semantic VAE (4 channels) trained on those features.",
    ]
    pca = stage(f"pca{settings.pca_components}_{settings.encoder}")
    if pca is not None:
        lines.append(f"ReDi-style semantics: the first {settings.pca_components} principal components of the same "
                     "features per patch (variances " + ", ".join(f"{v:.3g}" for v in pca["explained_variance"]) +
                     "), normalised per channel like the SemVAE latents.")
    lines += [
        f"FID network: a separate CNN classifier, test accuracy {stage('fid_classifier')['test_accuracy']:.3f}; FID of "
        f"{settings.samples} samples (class-balanced, or all with the null label when unconditional) against the "
        f"{len(pipeline.test_x)} held-out test images.",
        f"Diffusion: LightningDiT (config `sfd/demo/configs/sfd_fashion.yaml`{', ' if settings.overrides else ''}"
        f"{' '.join(settings.overrides)}), batch {settings.diffusion_batch}, training seed {settings.seed} (+ repeat).",
        f"Sampling: {settings.scoring.sampler} (three phases when Δt > 0) at every scored length; at the last also "
        + ", ".join(f"{s.sampler} {s.conditioning}" for s in settings.final_scorings) + "; no guidance, EMA weights.",
    ]
    return lines


def write_report(pipeline: "DemoPipeline", results: list[dict]) -> Path:
    run_dir = pipeline.run_dir
    figures = run_dir / "report"
    figures.mkdir(parents=True, exist_ok=True)
    settings = pipeline.settings
    variants = list(settings.variants)
    names = [variant.name for variant in variants]
    # the demo's own training and scoring stages (sweeps and studies in the same folder add others)
    runs = [pipeline.run_name(variant) for variant in variants]
    lengths = evaluation_steps(settings.diffusion_steps, settings.eval_every)
    own = {f"train_{run}" for run in runs} | {
        f"eval_{run}_{step:07d}_{scoring.name}" for run in runs
        for step, scoring in [*((length, settings.scoring) for length in lengths),
                              *((lengths[-1], final) for final in settings.final_scorings)]}
    sfd = next((v for v in variants if v.semantics != "none" and v.delta_t > 0), variants[-1])
    baselines = [v.name for v in variants if v.semantics == "none"]
    main = settings.scoring
    final_step = max(row["step"] for row in results)

    for variant in variants:
        save_png(class_grid(pipeline.samples_file(variant, final_step, main)), figures / f"samples_{variant.name}.png")
    logs = {v.label: _training_log(run_dir / "runs" / pipeline.run_name(v)) for v in variants}
    line_plot(figures / "loss_curves.png",
              {label: ([r["step"] for r in log if "loss" in r], [r["mse"] for r in log if "loss" in r])
               for label, log in logs.items()}, "training step", "training velocity MSE (β-weighted)",
              "Training loss")
    line_plot(figures / "validation_mse.png",
              {label: ([r["step"] for r in log if "valid_mse_t0.5" in r],
                       [r["valid_mse_t0.5"] for r in log if "valid_mse_t0.5" in r]) for label, log in logs.items()},
              "training step", "validation velocity MSE at t = 0.5", "Held-out loss")
    main_rows = [row for row in results if row["sampler"] == main.sampler and row["conditioning"] == main.conditioning]
    line_plot(figures / "fid_vs_step.png",
              {v.label: ([r["step"] for r in main_rows if r["name"] == v.name],
                         [r["fid"] for r in main_rows if r["name"] == v.name]) for v in variants},
              "training step", "FID (classifier features, vs test images)", f"FID vs training length ({main.sampler})")

    lines = [
        "# Table 1 at toy scale: LightningDiT, + REPA, + SFD on Fashion-MNIST (CPU)", "",
        "Generated by `make demo` (sfd/demo/pipeline.py). Everything below was trained from scratch in this run, "
        f"seed {settings.seed}; rerunning the command with the same settings reproduces it. The semantic channels "
        f"and REPA targets come from the **{'self-supervised' if settings.encoder == 'ssl' else 'supervised'}** "
        "DINOv2 stand-in.", "",
        "## Result", "",
        verdict(results, sfd.name, baselines, main.sampler), "",
        *[f"* {verdict(results, sfd.name, baselines, s.sampler, s.conditioning)}" for s in settings.final_scorings],
        "", *comparison_table(results, names), "",
        scoring_note(main, settings.final_scorings) + " FID uses the penultimate "
        "features of a classifier trained in this pipeline (independently of the semantic encoder) and compares "
        "samples with the held-out test images; class accuracy is how often that classifier assigns a conditional "
        "sample its class. Both are toy-scale proxies, not ImageNet FID.", "",
        "![FID vs step](report/fid_vs_step.png)", "",
        "## The DINOv2 stand-ins", "",
        "Held-out accuracy of the mean-pooled patch tokens (k-NN: DINO's weighted 20-NN on cosine similarity; "
        "linear: multinomial logistic regression), fitted on the training images:", "",
        *probe_lines(pipeline.probes), "",
        f"## Samples (after {final_step} steps, {main.sampler}; rows = classes "
        + ", ".join(f"{i} {c}" for i, c in enumerate(CLASSES)) + ")", "",
        *[f"**{v.label}**\n\n![{v.label}](report/samples_{v.name}.png)\n" for v in variants],
    ]
    links = report_links(run_dir)
    if links:
        lines += ["## Sweeps and studies in this run folder", "", *links, ""]
    lines += [
        "## Training", "", "![loss](report/loss_curves.png) ![validation](report/validation_mse.png)", "",
        "## Setup", "", *[f"* {line}" for line in setup_lines(pipeline)],
        f"* Diffusion: {settings.diffusion_steps} steps at batch {settings.diffusion_batch} for each model (same "
        "backbone, steps, batch, seed, data and sampling noise); SFD with Δt = "
        f"{sfd.delta_t:g}, β = {sfd.semantic_weight:g}; LightningDiT on the texture channels alone.",
        "* Stage times (s): " + ", ".join(f"{p.stem} {json.loads(p.read_text()).get('seconds', '?')}"
                                          for p in sorted((run_dir / "stages").glob("*.json"))
                                          if not p.stem.startswith(("train_", "eval_")) or p.stem in own),
    ]
    return write_text_atomic(run_dir / "report.md", "\n".join(lines) + "\n")


def run_demo(pipeline: "DemoPipeline") -> Path:
    """The demo: train and score the settings' models (every stage resumes), then write ``report.md`` — rewritten
    every time (a second), since it also lists the sweeps run in the same folder since."""
    rows = pipeline.sweep(pipeline.settings.variants)
    return write_report(pipeline, rows)

