"""The sweep tool: the grid, the summary and report, a 3-point Δt sweep and a PCA-vs-SemVAE sweep on the tiny
Fashion-MNIST pipeline, and the precomputed-latents backend end to end with tiny models."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from sfd.config import load_config
from sfd.data.synthetic import write_synthetic_shards
from sfd.experiments.fashion import base_model
from sfd.experiments.latents_backend import LatentsBackend
from sfd.experiments.report import findings, summarise, write_sweep_report
from sfd.experiments.sweep import Scoring, Variant, evaluation_steps, grid, latent_channels, run_sweep

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
DEMO_MODEL = base_model()  # the demo config's model section: Δt 0.3, β 2, REPA on


def sfd_variant(delta_t: float = 0.3, semantics: str = "semvae", repeat: int = 0, **changes) -> Variant:
    """A variant of the demo config's model (Δt 0.3, β 2, REPA on)."""
    return Variant.of(DEMO_MODEL, semantics, repeat, delta_t=delta_t, **changes)


def test_variants_names_and_grid():
    assert sfd_variant().name == "dt0.3_w2_semvae" and sfd_variant(0.0, "pca", 2, semantic_weight=1.5).name == \
        "dt0_w1.5_pca_r2"
    # every setting not named comes from the base config's model section
    assert Variant.of(DEMO_MODEL, "semvae") == Variant("semvae", 0.3, 2.0, True)
    assert Variant.of(DEMO_MODEL, "none", repa=False).name == "lightningdit"
    assert Variant.of(DEMO_MODEL, "none", 1).name == "lightningdit_repa_r1"
    assert sfd_variant(repa=False).name == "dt0.3_w2_semvae_norepa"
    assert Variant.of(DEMO_MODEL, "none").label == "LightningDiT + REPA"
    assert sfd_variant().label == "SemVAE semantics, Δt 0.3"
    assert sfd_variant().overrides() == ["model.semfirst_delta_t=0.3", "model.semfirst_schedule=constant",
                                         "model.semantic_weight=2.0", "model.use_repa=true"]
    with pytest.raises(TypeError, match="unknown setting\\(s\\) beta"):
        Variant.of(DEMO_MODEL, "semvae", beta=2)
    variants = grid(DEMO_MODEL, [0, 0.3, 0.3], [2.0], ["semvae", "pca"], repeats=2)
    assert [v.name for v in variants] == ["dt0_w2_semvae", "dt0_w2_semvae_r1", "dt0.3_w2_semvae",
                                          "dt0.3_w2_semvae_r1", "dt0_w2_pca", "dt0_w2_pca_r1", "dt0.3_w2_pca",
                                          "dt0.3_w2_pca_r1"]
    # the sources without semantic channels take one model per repeat, whatever the Δt list
    assert [v.name for v in grid(DEMO_MODEL, [0, 0.3], [2.0], ["none", "none+repa"], repeats=2)] == [
        "lightningdit", "lightningdit_r1", "lightningdit_repa", "lightningdit_repa_r1"]
    for bad, message in ((dict(delta_t=1.5), "delta_t: 1.5 is outside"), (dict(semantics="clip"),
                                                                           "semantics: 'clip' is not one of"),
                         (dict(semantic_weight=-1), "semantic_weight"),
                         (dict(semantics="none"), "needs semantic channels")):
        with pytest.raises(ValueError, match=message):
            Variant(**{**dict(semantics="semvae", delta_t=0.3, semantic_weight=2.0, repa=True), **bad})
    with pytest.raises(ValueError, match="semantics: 'dino' is not one of none, none\\+repa"):
        grid(DEMO_MODEL, [0.3], semantics=["dino"])
    assert evaluation_steps(1200, 400) == [400, 800, 1200] and evaluation_steps(1000, 400) == [400, 800, 1000]
    assert evaluation_steps(50, None) == [50]


def test_lead_shapes_are_a_variant_axis_and_the_constant_lead_keeps_its_names():
    smooth = sfd_variant(schedule="smooth", repeat=1)
    assert smooth.name == "dt0.3_w2_semvae_smooth_r1" and sfd_variant(schedule="constant").name == "dt0.3_w2_semvae"
    assert sfd_variant(schedule="shrinking", repa=False).name == "dt0.3_w2_semvae_norepa_shrinking"
    assert smooth.label == "SemVAE semantics, smooth lead, Δt 0.3" and smooth.series == "semvae, β=2, smooth lead"
    assert sfd_variant().series == "semvae, β=2"
    assert "model.semfirst_schedule=smooth" in smooth.overrides()
    # the base config's shape is the default; without a lead it is dropped (Δt 0 is synchronous whatever the shape)
    smooth_model = replace(DEMO_MODEL, semfirst_schedule="smooth")
    assert Variant.of(smooth_model, "semvae").schedule == "smooth"
    assert Variant.of(smooth_model, "semvae", delta_t=0.0).schedule == "constant"
    assert Variant.of(smooth_model, "none").schedule == "constant"
    # result rows written before the field existed are the constant lead
    assert Variant.of_row({"semantics": "semvae", "delta_t": 0.3, "semantic_weight": 2.0}) == sfd_variant()
    assert Variant.of_row({"semantics": "semvae", "delta_t": 0.3, "semantic_weight": 2.0, "repa": True,
                           "schedule": "smooth"}) == sfd_variant(schedule="smooth")
    for bad, message in ((dict(schedule="cosine"), "schedule: 'cosine' is not one of constant, shrinking, smooth"),
                         (dict(schedule="smooth", delta_t=0.0), "schedule: 'smooth' needs a semantic lead")):
        with pytest.raises(ValueError, match=message):
            Variant(**{**dict(semantics="semvae", delta_t=0.3, semantic_weight=2.0, repa=True), **bad})
    # the grid: source → weight → Δt → shape → repeat; Δt 0 and the models without semantic channels once
    variants = grid(DEMO_MODEL, [0, 0.3], None, ["none", "semvae"], schedules=["constant", "smooth", "shrinking"])
    assert [v.name for v in variants] == ["lightningdit", "dt0_w2_semvae", "dt0.3_w2_semvae",
                                          "dt0.3_w2_semvae_smooth", "dt0.3_w2_semvae_shrinking"]
    assert grid(DEMO_MODEL, [0, 0.3]) == grid(DEMO_MODEL, [0, 0.3], schedules=["constant"])
    assert [v.schedule for v in grid(smooth_model, [0, 0.3])] == ["constant", "smooth"]


def test_scorings_name_their_sampler_and_tighten():
    assert Scoring().name == "dopri5rtol0.001" and Scoring().sampler == "dopri5 rtol 0.001"
    assert Scoring("euler", 25, conditional=False).name == "euler-25_uncond"
    assert Scoring().tighter() == Scoring(rtol=1e-4) and Scoring("euler", 25).tighter() == Scoring("euler", 49)
    assert Scoring("heun", 7).overrides() == ["sample.sampling_method=heun", "sample.num_sampling_steps=7",
                                              "sample.rtol=0.001", "sample.atol=1e-06", "sample.phase_split=False"]
    phased = Scoring("heun", 9, phases=True)
    assert phased.sampler == "heun-9 phases" and phased.name == "heun-9phases"
    assert phased.overrides()[-1] == "sample.phase_split=True"
    with pytest.raises(ValueError, match="steps: 1 must be at least 2"):
        Scoring("euler", 1)


def test_summary_findings_and_report(tmp_path):
    rows = [{"name": sfd_variant(dt, repeat=r).name, "delta_t": dt, "semantic_weight": 2.0, "semantics": "semvae",
             "repeat": r, "step": 10, "fid": fid, "class_accuracy": 0.5}
            for dt, r, fid in ((0.0, 0, 10.0), (0.0, 1, 12.0), (0.3, 0, 7.0), (0.3, 1, 7.5))]
    summary = summarise(rows)
    assert [(e["delta_t"], e["runs"], e["fid"]) for e in summary] == [(0.0, 2, 11.0), (0.3, 2, 7.25)]
    assert summary[0]["fid_std"] == pytest.approx(2 ** 0.5)
    text = findings(rows)[0]
    # paired differences −3 and −4.5: mean −3.75, SE 0.75, t(0.975, 1) = 12.71, so the interval spans 0
    assert text == ("semvae, β=2: the best FID at 10 steps is at Δt = 0.3 (7.25 ± 0.35); the best semantic lead, "
                    "Δt = 0.3 (7.25 ± 0.35), is better than the synchronous Δt = 0 (11.00 ± 1.41), paired difference "
                    "-3.75 ± 0.75 (95 % CI -13.28 to +5.78, 2 seeds): not decided.")
    table = write_sweep_report(rows, tmp_path / "sweep", "Test sweep", ["setup line"])
    content = table.read_text()
    assert "| SemVAE semantics, Δt 0.3 | 2 | 0.3 |  | conditional | 2 | 7.25 ± 0.35 | 0.500 ± 0.000 |" in content
    assert "* setup line" in content
    assert (tmp_path / "sweep" / "fid_vs_delta_t.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "sweep" / "results.json").read_text())) == 4


def test_delta_t_and_semantics_sweeps_on_the_tiny_pipeline(fake_fashion, tmp_path, capsys):
    from scripts.sweep import main

    run_dir = tmp_path / "run"
    common = ["--quick", "--data-root", str(fake_fashion), "--run-dir", str(run_dir), "--steps", "10",
              "--eval-every", "5", "--samples", "20"]
    assert main([*common, "--delta-t", "0", "0.3", "0.6"]) == 0
    table = run_dir / "sweeps" / "delta_t" / "table.md"
    assert f"table: {table}" in capsys.readouterr().out
    content = table.read_text()
    for delta_t in ("0", "0.3", "0.6"):
        lead = "synchronous, Δt 0" if delta_t == "0" else f"Δt {delta_t}"
        assert f"| SemVAE semantics, {lead} | 2 | {delta_t} | euler-6 (5) | conditional | 1 |" in content
    assert "## Every scored training length" in content and "best FID at 10 steps" in content
    assert (run_dir / "sweeps" / "delta_t" / "fid_vs_delta_t.png").stat().st_size > 0
    rows = json.loads((run_dir / "sweeps" / "delta_t" / "results.json").read_text())
    assert [(row["delta_t"], row["step"], row["conditioning"]) for row in rows] == [
        (dt, step, conditioning) for dt in (0, 0.3, 0.6)
        for step, conditioning in ((5, "conditional"), (10, "conditional"), (10, "unconditional"))]
    stages = run_dir / "stages"
    assert json.loads((stages / "eval_ssl_dt0.6_w2_semvae_0000010_euler-6.json").read_text())["samples"] == 20

    # Table 1's baselines and ReDi-style PCA: the Δt = 0.3 SemVAE run is shared with the sweep above (skipped)
    trained_before = (stages / "train_ssl_dt0.3_w2_semvae.json").stat().st_mtime_ns
    assert main([*common, "--name", "sources", "--delta-t", "0.3", "--semantics", "none", "none+repa", "semvae",
                 "pca"]) == 0
    assert (stages / "train_ssl_dt0.3_w2_semvae.json").stat().st_mtime_ns == trained_before
    assert latent_channels(run_dir / "latents_ssl_pca4" / "train") == (4, 4)
    content = (run_dir / "sweeps" / "sources" / "table.md").read_text()
    for row in ("| PCA semantics, Δt 0.3 | 2 | 0.3 | euler-6 (5) | conditional | 1 |",
                "| LightningDiT | – | – | euler-6 (5) | conditional | 1 |",
                "| LightningDiT + REPA | – | – | euler-6 (5) | unconditional | 1 |"):
        assert row in content
    assert "ReDi-style semantics: the first 4 principal components" in content
    for name, use_repa, in_chans in (("lightningdit", False, 4), ("lightningdit_repa", True, 4),
                                     ("dt0.3_w2_pca", True, 8)):
        config = load_config(run_dir / "runs" / f"ssl_{name}" / "config.yaml")
        assert (config.model.use_repa, config.model.in_chans) == (use_repa, in_chans)
        assert json.loads((stages / f"eval_ssl_{name}_0000010_euler-6_uncond.json").read_text())["fid"] > 0

    # more steps extend the runs instead of starting over
    assert main([*common, "--name", "longer", "--delta-t", "0.3", "--steps", "15"]) == 0
    assert json.loads((stages / "train_ssl_dt0.3_w2_semvae.json").read_text())["steps"] == 15
    assert "| SemVAE semantics, Δt 0.3 | 2 | 0.3 | euler-6 (5) | conditional | 15 |" in (
        run_dir / "sweeps" / "longer" / "table.md").read_text()


def test_latents_backend_end_to_end(tmp_path):
    """Tiny SFD on synthetic SemVAE (16) and PCA (8) semantic latents, the tiny texture VAE, a random feature
    network standing in for Inception; the scores resume from their files."""
    import numpy as np

    from sfd import distributed
    from tests.test_evaluation import TinyFeatures

    semvae = write_synthetic_shards(tmp_path / "semvae", num_items=16, num_classes=4, shard_size=16)
    pca = write_synthetic_shards(tmp_path / "pca", num_items=16, num_classes=4, semantic_chans=8, shard_size=16)
    np.savez(tmp_path / "ref.npz", np.random.default_rng(0).integers(0, 255, (8, 256, 256, 3), dtype=np.uint8))
    network = TinyFeatures()
    sweep = LatentsBackend(ROOT / "configs/tiny/train_sfd_cpu.yaml", tmp_path / "out", {"semvae": semvae, "pca": pca},
                         tmp_path / "ref.npz", samples=4, network=network, network_id="tiny", progress=False,
                         topology=distributed.Topology(),
                         overrides=[f"vae.config={DATA / 'vae_tiny.yaml'}", "data.num_classes=4",
                                    "sample.sampling_method=euler", "sample.num_sampling_steps=3",
                                    "sample.per_proc_batch_size=2", "sample.balanced_sampling=true",
                                    "train.global_batch_size=4", "train.log_every=1"])
    assert sweep.config(sfd_variant(semantics="pca")).model.in_chans == 40
    assert sweep.config(Variant.of(DEMO_MODEL, "none")).model.in_chans == 32
    scorings = (Scoring.from_config(sweep.config(sfd_variant(0.0)).sample),)
    assert scorings[0].name == "euler-3"
    variants = [sfd_variant(0.0), sfd_variant(semantics="pca"), Variant.of(DEMO_MODEL, "none", repa=False)]
    rows = run_sweep(sweep, variants, steps=2, scorings=scorings, log=lambda message: None)
    assert [(row["name"], row["step"]) for row in rows] == [("dt0_w2_semvae", 2), ("dt0.3_w2_pca", 2),
                                                             ("lightningdit", 2)]
    assert all(set(row) >= {"fid", "sfid", "inception_score", "precision", "recall"} for row in rows)
    assert (tmp_path / "out" / "samples" / "dt0.3_w2_pca_0000002_euler-3.npz").exists()
    batches = network.batches
    again = run_sweep(sweep, [sfd_variant(0.0)], steps=2, scorings=scorings, log=lambda message: None)
    assert [{k: v for k, v in row.items() if k != "nfe"} for row in again] == [  # from the saved scores
        {k: v for k, v in rows[0].items() if k != "nfe"}]
    assert network.batches == batches
    table = write_sweep_report(rows, tmp_path / "out" / "sweeps" / "t", "latents").read_text()
    assert "| PCA semantics, Δt 0.3 | 2 | 0.3 | euler-3 (2) | conditional | 1 |" in table and "sFID ↓" in table


def test_bad_arguments_are_reported(tmp_path, capsys):
    from scripts.sweep import main

    assert main(["--config", "configs/tiny/train_sfd_cpu.yaml", "--latents", str(tmp_path)]) == 2
    assert "--config needs --reference or a data.fid_reference_file" in capsys.readouterr().err
    assert main(["--config", "configs/tiny/train_sfd_cpu.yaml", "--latents", str(tmp_path),
                 f"data.fid_reference_file={tmp_path / 'missing.npz'}"]) == 2  # the config's reference is used
    assert "missing.npz: reference batch not found" in capsys.readouterr().err
    (tmp_path / "ref.npz").write_bytes(b"")
    assert main(["--config", "configs/tiny/train_sfd_cpu.yaml", "--reference", str(tmp_path / "ref.npz"),
                 "--latents", str(tmp_path), "--semantics", "pca"]) == 2
    assert "--semantics pca needs --pca-latents" in capsys.readouterr().err
    assert main(["--delta-t", "2", "--run-dir", str(tmp_path)]) == 2
    assert "delta_t: 2.0 is outside [0, 1)" in capsys.readouterr().err
