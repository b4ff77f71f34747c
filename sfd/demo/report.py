"""The demo's report: FID table with an honest verdict, sample grids per class, loss and FID-vs-step plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sfd.visualize import image_grid, line_plot, save_png

if TYPE_CHECKING:
    from sfd.demo.pipeline import DemoPipeline


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


def verdict(results: list[dict], better: str, worse: str) -> str:
    """One honest sentence comparing the FIDs of the variants named ``better`` (SFD) and ``worse`` (the synchronous
    baseline) at equal training length."""
    by_step = {}
    for row in results:
        by_step.setdefault(row["step"], {})[row["name"]] = row["fid"]
    steps = sorted(step for step, fids in by_step.items() if better in fids and worse in fids)
    if not steps:
        return "No training length has both models evaluated."
    wins = [step for step in steps if by_step[step][better] < by_step[step][worse]]
    final = steps[-1]
    comparison = "lower (better)" if by_step[final][better] < by_step[final][worse] else "not lower"
    return (f"SFD had the lower FID at {len(wins)} of {len(steps)} training lengths "
            f"({', '.join(str(s) for s in wins) or 'none'}); at the longest ({final} steps) its FID "
            f"{by_step[final][better]:.2f} is {comparison} than the synchronous baseline's {by_step[final][worse]:.2f}.")


def sweep_lines(tables: list[Path]) -> list[str]:
    """A link to each sweep's table, with its findings."""
    from sfd.sweep import findings, summarise

    lines = []
    for table in tables:
        rows = json.loads((table.parent / "results.json").read_text())
        lines.append(f"* [{table.parent.name}](sweeps/{table.parent.name}/table.md): "
                     + " ".join(findings(summarise(rows))))
    return lines


def setup_lines(pipeline: "DemoPipeline") -> list[str]:
    """What every model of the pipeline shares: data, tokenizers, features, FID network, backbone, sampler."""
    settings, stage = pipeline.settings, pipeline.stages.done
    lines = [
        f"Data: Fashion-MNIST, {len(pipeline.train_x)} training and {len(pipeline.test_x)} test images, padded to "
        "32×32 RGB.",
        "Texture tokenizer: a tiny LDM KL-VAE (32×32 → 4×8×8), trained here "
        f"(test reconstruction MSE {stage('texture_vae')['test_mse']:.4f}).",
        "Semantic features: **a small CNN trained as a classifier stands in for DINOv2** (its 8×8×32 per-patch "
        "features; pretrained DINOv2 cannot be downloaded offline). They feed the Semantic VAE and are the REPA target.",
        "Semantic tokenizer: the project's Semantic VAE (4 channels) trained on those features.",
    ]
    pca = stage(f"pca{settings.pca_components}")
    if pca is not None:
        lines.append(f"ReDi-style semantics: the first {settings.pca_components} principal components of the same "
                     "features per patch (variances " + ", ".join(f"{v:.3g}" for v in pca["explained_variance"]) +
                     "), normalised per channel like the SemVAE latents.")
    lines += [
        f"FID network: a separate CNN classifier, test accuracy {stage('fid_classifier')['test_accuracy']:.3f}; FID of "
        f"{settings.samples} class-balanced samples against the {len(pipeline.test_x)} held-out test images.",
        f"Diffusion: LightningDiT (config `configs/demo/sfd_fashion.yaml`{', ' if settings.overrides else ''}"
        f"{' '.join(settings.overrides)}), batch {settings.diffusion_batch}, training seed {settings.seed} (+ repeat).",
        f"Sampling: {settings.sampling_method} with {settings.sampling_steps} grid points (three phases when Δt > 0), "
        "no guidance, EMA weights.",
    ]
    return lines


def write_report(pipeline: "DemoPipeline", results: list[dict]) -> Path:
    from sfd.demo.pipeline import CLASSES

    run_dir = pipeline.run_dir
    figures = run_dir / "report"
    figures.mkdir(parents=True, exist_ok=True)
    settings = pipeline.settings
    models = [variant.name for variant in settings.variants]
    sfd = next((v for v in settings.variants if v.delta_t > 0), settings.variants[0])
    baseline = next((v for v in settings.variants if v.delta_t == 0), settings.variants[-1])
    final_step = max(row["step"] for row in results)

    for name in models:
        save_png(class_grid(run_dir / "samples" / f"{name}_{final_step:07d}.npz"), figures / f"samples_{name}.png")
    logs = {name: _training_log(run_dir / "runs" / name) for name in models}
    line_plot(figures / "loss_curves.png",
          {name: ([r["step"] for r in log if "loss" in r], [r["loss"] for r in log if "loss" in r])
           for name, log in logs.items()}, "training step", "training loss (mse + cos + repa)", "Training loss")
    line_plot(figures / "validation_mse.png",
          {name: ([r["step"] for r in log if "valid_mse_t0.5" in r], [r["valid_mse_t0.5"] for r in log
                                                                        if "valid_mse_t0.5" in r])
           for name, log in logs.items()}, "training step", "validation velocity MSE at t = 0.5",
          "Held-out loss")
    line_plot(figures / "fid_vs_step.png",
          {name: ([r["step"] for r in results if r["name"] == name], [r["fid"] for r in results
                                                                      if r["name"] == name]) for name in models},
          "training step", "FID (classifier features, vs test images)", "FID vs training length")

    sweeps = sorted((run_dir / "sweeps").glob("*/table.md"))
    lines = [
        "# SFD vs synchronous baseline on Fashion-MNIST (toy scale, CPU)", "",
        "Generated by `make demo` (sfd/demo/pipeline.py). Everything below was trained from scratch in this run, "
        f"seed {settings.seed}; rerunning the command with the same settings reproduces it.", "",
        "## Result", "", verdict(results, sfd.name, baseline.name), "",
        "| model | Δt | step | FID ↓ | class accuracy of samples ↑ |", "|---|---:|---:|---:|---:|",
        *[f"| {r['name']} | {r['delta_t']} | {r['step']} | {r['fid']:.2f} | {r['class_accuracy']:.3f} |"
          for r in sorted(results, key=lambda r: (r["step"], -r["delta_t"]))], "",
        "FID uses the penultimate features of a classifier trained in this pipeline (independently of the semantic "
        "encoder) and compares samples with the held-out test images; class accuracy is how often that classifier "
        "assigns a sample the class it was generated for. Both are toy-scale proxies, not ImageNet FID.", "",
        "![FID vs step](report/fid_vs_step.png)", "",
        "## Samples (final step; rows = classes " + ", ".join(f"{i} {c}" for i, c in enumerate(CLASSES)) + ")",
        "", *[f"**{name}**\n\n![{name}](report/samples_{name}.png)\n" for name in models],
        *(["## Sweeps in this run folder (scripts/sweep.py)", "", *sweep_lines(sweeps), ""] if sweeps else []),
        "## Training", "", "![loss](report/loss_curves.png) ![validation](report/validation_mse.png)", "",
        "## Setup", "",
        *[f"* {line}" for line in setup_lines(pipeline)],
        f"* Diffusion: {settings.diffusion_steps} steps at batch {settings.diffusion_batch} for each model; SFD with "
        f"Δt = {sfd.delta_t:g}, the baseline with Δt = 0 (synchronous; same backbone, steps, batch, seed and data).",
        "* Stage times (s): " + ", ".join(f"{p.stem} {json.loads(p.read_text()).get('seconds', '?')}"
                                          for p in sorted((run_dir / "stages").glob("*.json"))),
    ]
    report = run_dir / "report.md"
    tmp = report.with_name(".report.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, report)
    return report
