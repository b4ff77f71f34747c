"""The sweep tool: the grid, the summary and report, a 3-point Δt sweep and a PCA-vs-SemVAE sweep on the tiny
Fashion-MNIST pipeline, and the precomputed-latents backend end to end with tiny models."""

import json
from pathlib import Path

import pytest

from sfd.data.synthetic import write_synthetic_shards
from sfd.sweep import (LatentsSweep, Variant, evaluation_steps, findings, grid, latent_channels, run_sweep,
                       summarise, write_sweep_report)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def test_variants_names_and_grid():
    assert Variant(0.3).name == "dt0.3_w2_semvae" and Variant(0.0, 1.5, "pca", 2).name == "dt0_w1.5_pca_r2"
    assert Variant(0.3).overrides() == ["model.semfirst_delta_t=0.3", "model.semantic_weight=2.0"]
    variants = grid([0, 0.3, 0.3], [2.0], ["semvae", "pca"], repeats=2)
    assert [v.name for v in variants] == ["dt0_w2_semvae", "dt0_w2_semvae_r1", "dt0.3_w2_semvae",
                                          "dt0.3_w2_semvae_r1", "dt0_w2_pca", "dt0_w2_pca_r1", "dt0.3_w2_pca",
                                          "dt0.3_w2_pca_r1"]
    for bad, message in ((dict(delta_t=1.5), "delta_t: 1.5 is outside"), (dict(delta_t=0.3, semantics="clip"),
                                                                           "semantics: 'clip' is not one of"),
                         (dict(delta_t=0.3, semantic_weight=-1), "semantic_weight")):
        with pytest.raises(ValueError, match=message):
            Variant(**bad)
    assert evaluation_steps(1200, 400) == [400, 800, 1200] and evaluation_steps(1000, 400) == [400, 800, 1000]
    assert evaluation_steps(50, None) == [50]


def test_summary_findings_and_report(tmp_path):
    rows = [{"name": Variant(dt, 2.0, "semvae", r).name, "delta_t": dt, "semantic_weight": 2.0, "semantics": "semvae",
             "repeat": r, "step": 10, "fid": fid, "class_accuracy": 0.5}
            for dt, r, fid in ((0.0, 0, 10.0), (0.0, 1, 12.0), (0.3, 0, 7.0), (0.3, 1, 7.5))]
    summary = summarise(rows)
    assert [(e["delta_t"], e["runs"], e["fid"]) for e in summary] == [(0.0, 2, 11.0), (0.3, 2, 7.25)]
    assert summary[0]["fid_std"] == pytest.approx(2 ** 0.5)
    text = findings(summary)[0]
    assert text == ("semvae, β=2: the best FID at 10 steps is at Δt = 0.3 (7.25 ± 0.35); the best semantic lead, "
                    "Δt = 0.3 (7.25 ± 0.35), is better than the synchronous Δt = 0 (11.00 ± 1.41) by 3.75, more than "
                    "twice the spread between repeated runs (std 1.41).")
    table = write_sweep_report(rows, tmp_path / "sweep", "Test sweep", ["setup line"])
    content = table.read_text()
    assert "| semvae | 2 | 0.3 | 2 | 7.25 ± 0.35 | 0.500 ± 0.000 |" in content and "* setup line" in content
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
        assert f"| semvae | 2 | {delta_t} | 1 |" in content
    assert "## Every scored training length" in content and "best FID at 10 steps" in content
    assert (run_dir / "sweeps" / "delta_t" / "fid_vs_delta_t.png").stat().st_size > 0
    rows = json.loads((run_dir / "sweeps" / "delta_t" / "results.json").read_text())
    assert [(row["delta_t"], row["step"]) for row in rows] == [(0, 5), (0, 10), (0.3, 5), (0.3, 10), (0.6, 5),
                                                               (0.6, 10)]
    assert json.loads((run_dir / "stages" / "eval_dt0.6_w2_semvae_0000010.json").read_text())["samples"] == 20

    # PCA vs SemVAE: the Δt = 0.3 SemVAE run is shared with the sweep above (its stages are skipped)
    stages = run_dir / "stages"
    trained_before = (stages / "train_dt0.3_w2_semvae.json").stat().st_mtime_ns
    assert main([*common, "--name", "semantics", "--delta-t", "0.3", "--semantics", "semvae", "pca"]) == 0
    assert (stages / "train_dt0.3_w2_semvae.json").stat().st_mtime_ns == trained_before
    assert latent_channels(run_dir / "latents_pca4" / "train") == (4, 4)
    content = (run_dir / "sweeps" / "semantics" / "table.md").read_text()
    assert "| pca | 2 | 0.3 | 1 |" in content and "ReDi-style semantics: the first 4 principal components" in content

    # more steps extend the runs instead of starting over
    assert main([*common, "--name", "longer", "--delta-t", "0.3", "--steps", "15"]) == 0
    assert json.loads((stages / "train_dt0.3_w2_semvae.json").read_text())["steps"] == 15
    assert "| semvae | 2 | 0.3 | 15 |" in (run_dir / "sweeps" / "longer" / "table.md").read_text()


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
    sweep = LatentsSweep(ROOT / "configs/tiny/train_sfd_cpu.yaml", tmp_path / "out", {"semvae": semvae, "pca": pca},
                         tmp_path / "ref.npz", samples=4, network=network, network_id="tiny", progress=False,
                         topology=distributed.Topology(),
                         overrides=[f"vae.config={DATA / 'vae_tiny.yaml'}", "data.num_classes=4",
                                    "sample.sampling_method=euler", "sample.num_sampling_steps=3",
                                    "sample.per_proc_batch_size=2", "sample.balanced_sampling=true",
                                    "train.global_batch_size=4", "train.log_every=1"])
    assert sweep.config(Variant(0.3, semantics="pca")).model.in_chans == 40
    rows = run_sweep(sweep, [Variant(0.0), Variant(0.3, semantics="pca")], steps=2, log=lambda message: None)
    assert [(row["name"], row["step"]) for row in rows] == [("dt0_w2_semvae", 2), ("dt0.3_w2_pca", 2)]
    assert all(set(row) >= {"fid", "sfid", "inception_score", "precision", "recall"} for row in rows)
    assert (tmp_path / "out" / "samples" / "dt0.3_w2_pca_0000002.npz").exists()
    batches = network.batches
    assert run_sweep(sweep, [Variant(0.0)], steps=2, log=lambda message: None) == rows[:1]  # from the saved scores
    assert network.batches == batches
    table = write_sweep_report(rows, tmp_path / "out" / "sweeps" / "t", "latents").read_text()
    assert "| pca | 2 | 0.3 | 1 |" in table and "sFID ↓" in table


def test_bad_arguments_are_reported(tmp_path, capsys):
    from scripts.sweep import main

    with pytest.raises(SystemExit):
        main(["--config", "configs/tiny/train_sfd_cpu.yaml"])
    assert "--config needs --reference" in capsys.readouterr().err
    (tmp_path / "ref.npz").write_bytes(b"")
    assert main(["--config", "configs/tiny/train_sfd_cpu.yaml", "--reference", str(tmp_path / "ref.npz"),
                 "--latents", str(tmp_path), "--semantics", "pca"]) == 2
    assert "--semantics pca needs --pca-latents" in capsys.readouterr().err
    assert main(["--delta-t", "2", "--run-dir", str(tmp_path)]) == 2
    assert "delta_t: 2.0 is outside [0, 1)" in capsys.readouterr().err
