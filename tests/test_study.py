"""The study: its grid order, paired statistics against a brute-force reference, the verdict of each claim on
hand-made rows, the sampler-convergence check, and a CI-size study end to end through scripts/study.py."""

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from sfd.config import load_config
from sfd.experiments.report import (
    Paired,
    StudyModels,
    convergence_lines,
    convergence_table,
    delta_t_verdict,
    ema_width_table,
    limit_verdict,
    model_key,
    paired,
    schedule_table,
    schedule_verdict,
    steps_to_reach,
    table1_verdict,
    write_study_report,
)
from sfd.experiments.study import StudySettings
from sfd.experiments.sweep import Scoring, Variant

MAIN = Scoring(samples=2000)
ORACLE = replace(MAIN, oracle=True)


def rows_for(fids: dict, scoring: Scoring = MAIN) -> list[dict]:
    """Rows of a study: ``fids[(variant without repeat, step)]`` = FID per seed."""
    rows = []
    for (variant, step), values in fids.items():
        for repeat, fid in enumerate(values):
            model = replace(variant, repeat=repeat)
            rows.append({"name": model.name, "label": model.label, "semantics": model.semantics, "repa": model.repa,
                         "delta_t": model.delta_t, "semantic_weight": 2.0, "schedule": model.schedule,
                         "repeat": repeat, "step": step, **scoring.fields(), "fid": fid, "nfe": 50.0})
    return rows


BASE, REPA = Variant("none", 0.0, 2.0, False), Variant("none", 0.0, 2.0, True)
SFD, SYNC, EARLY, LATE = (Variant("semvae", delta_t, 2.0, True) for delta_t in (0.3, 0.0, 0.1, 0.5))
SMOOTH, SHRINKING = (Variant("semvae", 0.3, 2.0, True, schedule=shape) for shape in ("smooth", "shrinking"))
WHERE = dict(step=3600, sampler=MAIN.sampler, conditioning="conditional", samples=2000)


def models(rows):
    return StudyModels.of(rows, 0.3)


def test_study_grid_is_seed_major_with_the_demo_models_first():
    names = [v.name for v in StudySettings(repeats=2).variants()]
    assert names == ["lightningdit", "lightningdit_repa", "dt0.3_w2_semvae", "dt0_w2_semvae",
                     *[f"{name}_r1" for name in names[:4]]]
    assert [v.repeat for v in StudySettings(seeds=(3, 1)).variants()] == [1] * 4 + [3] * 4
    with pytest.raises(ValueError, match="needs SFD itself"):
        StudySettings(delta_ts=(0.0, 0.5))
    with pytest.raises(ValueError, match="repeats: 0"):
        StudySettings(repeats=0)
    with pytest.raises(ValueError, match=r"seeds: \[7\] are not among the 5 repeats"):
        StudySettings(seeds=(1, 7))
    layout = StudySettings().layout()
    assert (layout.curve.samples, layout.main.samples, layout.oracle.oracle, layout.check.rtol) == (500, 2000, True,
                                                                                                   1e-4)
    assert layout.main.phases and layout.check.phases and layout.verdict_steps == (3600, 10_800)


def test_study_with_lead_shapes_adds_sfd_with_each_shape_on_every_seed():
    anchors = StudySettings(repeats=2).variants()
    assert StudySettings(repeats=2, schedules=("constant",)).variants() == anchors  # the default study, unchanged
    assert {v.schedule for v in anchors} == {"constant"}
    names = [v.name for v in StudySettings(repeats=2, schedules=("constant", "smooth", "shrinking")).variants()]
    assert names == ["lightningdit", "lightningdit_repa", "dt0.3_w2_semvae", "dt0_w2_semvae",
                     "dt0.3_w2_semvae_shrinking", "dt0.3_w2_semvae_smooth", *[f"{name}_r1" for name in names[:6]]]
    # the shapes at SFD's Δt only, with SemVAE semantics and REPA, whatever the other leads and sources
    wide = StudySettings(sources=("none", "semvae", "pca"), delta_ts=(0.0, 0.1, 0.3), repeats=1,
                         schedules=("constant", "smooth")).variants()
    assert [v for v in wide if v.schedule != "constant"] == [SMOOTH]
    for bad in (("smooth",), ("constant", "cosine")):
        with pytest.raises(ValueError, match="schedules: .* must be among constant, shrinking, smooth and hold "
                                             "constant"):
            StudySettings(schedules=bad)


def test_paired_statistics_equal_a_brute_force_reference():
    generator = np.random.default_rng(0)
    a_fid, b_fid = generator.normal(15, 1, 5), generator.normal(14, 1, 5)
    rows = rows_for({(SFD, 3600): list(a_fid), (BASE, 3600): list(b_fid)})
    rows.append({**rows[0], "repeat": 9})  # a seed only one model has: not paired
    result = paired(rows, model_key(rows[0]), model_key(rows[5]), WHERE)
    differences = [a - b for a, b in zip(a_fid, b_fid)]
    mean = sum(differences) / 5
    deviation = (sum((d - mean) ** 2 for d in differences) / 4) ** 0.5
    assert result.n == 5 and result.mean == pytest.approx(mean) and result.standard_error == pytest.approx(
        deviation / 5 ** 0.5)
    low, high = stats.ttest_rel(a_fid, b_fid).confidence_interval(0.95)
    assert result.interval == pytest.approx((low, high))
    assert result.decision() == ("lower" if high < 0 else "higher" if low > 0 else "not decided")
    assert Paired((-1.0, -1.1, -0.9)).decision() == "lower" and Paired((1.0, 1.2, 0.9)).decision() == "higher"
    assert Paired((-1.0, 1.0)).decision() == "not decided" and Paired((-5.0,)).decision() == "not decided"
    assert Paired((-5.0,)).text() == "-5.00 (1 seed)"


def test_table1_verdicts_for_each_outcome():
    def verdict(base, repa, sfd):
        rows = rows_for({(BASE, 3600): base, (REPA, 3600): repa, (SFD, 3600): sfd})
        return table1_verdict(rows, models(rows), 3600, MAIN)

    text = verdict([20, 21, 22], [18, 19, 20.5], [10, 11, 12])
    assert text.startswith("(a) Table 1 at 3600 steps (dopri5 rtol 0.001, 2000 samples): SemVAE semantics, Δt 0.3 "
                           "− LightningDiT: -10.00 ± 0.00")
    assert text.endswith("The claim holds: SFD is better than every baseline.")
    assert "holds only in part" in verdict([20, 21, 22], [11, 12.5, 12], [10, 11, 12])
    assert "contradicted" in verdict([5, 5.1, 5.2], [11, 12, 13.5], [10, 11, 12])
    assert "not decided" in verdict([11, 10, 13], [12, 10, 13], [10, 11, 12])
    rows = rows_for({(BASE, 3600): [1, 2]})
    assert "not scored" in table1_verdict(rows, models(rows), 3600, MAIN)


def test_delta_t_verdicts():
    def verdict(sync, early, lead, late):
        rows = rows_for({(SYNC, 3600): sync, (EARLY, 3600): early, (SFD, 3600): lead, (LATE, 3600): late})
        return delta_t_verdict(rows, models(rows), 3600, MAIN)

    text = verdict([20, 21, 22], [15, 16, 17.5], [10, 11, 12.5], [14, 15, 16])
    assert "SemVAE semantics, Δt 0.1 − SemVAE semantics, synchronous, Δt 0: -4.83" in text
    assert text.endswith("The claim that a semantic lead beats synchronous denoising: SFD's lead holds.")
    assert text.index("Δt 0.1 −") < text.index("Δt 0.3 −") < text.index("Δt 0.5 −")
    assert verdict([5, 5.1, 5.2], [15, 16, 17], [10, 11, 12.5], [14, 15, 16]).endswith("SFD's lead is contradicted.")
    assert "not decided" in verdict([10, 12, 11], [11, 12, 13], [12, 10, 11.5], [14, 15, 16])


def test_limit_verdicts_name_which_limit_binds():
    def verdict(base, own, oracle):
        rows = rows_for({(BASE, 3600): base, (SFD, 3600): own}) + rows_for({(SFD, 3600): oracle}, ORACLE)
        return limit_verdict(rows, models(rows), 3600, MAIN, ORACLE)

    assert verdict([15, 16, 17], [18, 19, 20.5], [12, 13, 14.5]).endswith(
        "generating the semantics limits SFD; with the true semantics SFD is better than LightningDiT.")
    assert verdict([15, 16, 17], [18, 19, 20.5], [14, 16.5, 17.2]).endswith(
        "generating the semantics limits SFD; with the true semantics SFD is not decidedly better or worse than "
        "LightningDiT.")
    assert verdict([15, 16, 17], [15.1, 16.2, 17], [15.2, 15.9, 17.1]).endswith(
        "neither limit is shown; with the true semantics SFD is not decidedly better or worse than LightningDiT.")
    assert verdict([15, 16, 17], [18, 19, 20.5], [17, 18, 19.2]).endswith("both limits bind.")
    assert verdict([15, 16, 17], [18, 19, 20.5], [18.1, 19, 20.6]).endswith("using the semantics limits SFD.")
    assert verdict([15, 16, 17], [12, 13, 14.5], [12.1, 12.9, 14.6]).endswith(
        "neither limit is shown; with the true semantics SFD is better than LightningDiT.")
    rows = rows_for({(BASE, 3600): [1, 2], (SFD, 3600): [1, 2]})
    assert "not scored with oracle semantics" in limit_verdict(rows, models(rows), 3600, MAIN, ORACLE)


def shape_rows(constant, smooth, shrinking, sync=(20, 21, 22.5)):
    rows = rows_for({(SYNC, 3600): sync, (SFD, 3600): constant, (SMOOTH, 3600): smooth,
                     (SHRINKING, 3600): shrinking})
    for row in rows:  # the constant lead's rows as written before the lead had a shape
        if row["schedule"] == "constant":
            del row["schedule"]
    return rows


def test_schedule_verdicts_for_each_outcome():
    def verdict(*fids):
        rows = shape_rows(*fids)
        return schedule_verdict(rows, models(rows), 3600, MAIN)

    constant, better, worse, undecided, also_undecided = ([10, 11, 12], [8, 9, 10.5], [12, 13, 14.2], [9, 12, 11.5],
                                                         [11, 10, 12.5])
    text = verdict(constant, better, worse)
    assert text == ("(e) Schedule shapes at 3600 steps (dopri5 rtol 0.001, 2000 samples; SFD's Δt 0.3): shrinking − "
                    f"constant lead: {Paired((2.0, 2.0, 2.2)).text()}; smooth − constant lead: "
                    f"{Paired((-2.0, -2.0, -1.5)).text()}. By the rule above, smooth beats the constant lead; "
                    "shrinking is worse than it.")
    assert verdict(constant, better, better).endswith("shrinking and smooth beat the constant lead.")
    assert verdict(constant, undecided, worse).endswith(
        "no shape beats the constant lead; shrinking is worse than it; smooth is not decided at this scale.")
    assert verdict(constant, undecided, also_undecided).endswith(
        "no shape beats the constant lead; shrinking and smooth are not decided at this scale.")
    # SFD's verdicts (a)–(d) name the constant lead, not a shape at the same Δt
    rows = shape_rows(constant, better, worse)
    assert models(rows).sfd == ("semvae", True, 2.0, 0.3, "constant")
    assert "shrinking" not in delta_t_verdict(rows, models(rows), 3600, MAIN)
    rows = rows_for({(SYNC, 3600): [1, 2], (SMOOTH, 3600): [1, 2]})
    assert "needs SFD (the constant lead)" in schedule_verdict(rows, models(rows), 3600, MAIN)


def test_schedule_table_pairs_each_shape_with_the_constant_lead_and_the_synchronous_model():
    rows = shape_rows([10, 11, 12], [8, 9, 10.5], [12, 13, 14.2])
    table = schedule_table(rows, models(rows), 3600, MAIN)
    assert table[0].startswith("| lead shape | FID ↓ (mean ± std) | − constant lead (paired) | decision |")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| constant", "| shrinking", "| smooth"]
    assert table[2] == f"| constant | 11.00 ± 1.00 | – | – | {Paired((-10.0, -10.0, -10.5)).text()} | better | 50 |"
    assert table[4] == (f"| smooth | 9.17 ± 1.26 | {Paired((-2.0, -2.0, -1.5)).text()} | better | "
                        f"{Paired((-12.0, -12.0, -12.0)).text()} | better | 50 |")
    assert "| worse |" in table[3]


def test_study_report_has_the_schedule_section_only_with_several_shapes(tmp_path):
    from sfd.experiments.report import StudyLayout

    layout = StudyLayout(MAIN, MAIN, ORACLE, MAIN.tighter(), (3600,), 0.3)
    rows = shape_rows([10, 11, 12], [8, 9, 10.5], [12, 13, 14.2]) + rows_for({(BASE, 3600): [20, 21, 22]})
    report = write_study_report(rows, tmp_path / "shapes", "Shapes", layout).read_text()
    assert "## Schedule shapes after 3600 steps" in report and "* (e) Schedule shapes at 3600 steps" in report
    assert "5 models × 3 training seeds" in report
    verdicts = json.loads((tmp_path / "shapes" / "verdicts.json").read_text())
    assert verdicts["schedules 3600"].endswith("smooth beats the constant lead; shrinking is worse than it.")
    constant = [row for row in rows if row["name"].endswith(("semvae", "semvae_r1", "semvae_r2", "lightningdit",
                                                            "lightningdit_r1", "lightningdit_r2"))]
    report = write_study_report(constant, tmp_path / "anchors", "Anchors", layout).read_text()
    assert "Schedule shapes" not in report
    assert "schedules 3600" not in json.loads((tmp_path / "anchors" / "verdicts.json").read_text())


def test_steps_to_reach_interpolates_between_scored_lengths():
    assert steps_to_reach([(600, 20.0), (1200, 10.0)], 15.0) == pytest.approx(900.0)
    assert steps_to_reach([(600, 20.0), (1200, 10.0)], 25.0) == 600.0  # below at the first length: a bound
    assert steps_to_reach([(600, 20.0), (1200, 18.0)], 15.0) is None
    assert steps_to_reach([(400, 30.0), (800, 20.0), (1200, 10.0)], 20.0) == pytest.approx(800.0)


def test_convergence_counts_the_seeds_that_reach_the_best_baseline():
    curve = Scoring(samples=500)
    fids = {(BASE, 1200): [30, 31, 32], (BASE, 3600): [20, 21, 22], (REPA, 1200): [28, 29, 30],
            (REPA, 3600): [19, 20, 21], (SFD, 1200): [25, 26, 27], (SFD, 3600): [14, 15, 16]}
    rows = rows_for(fids, curve)
    lines, text = convergence_table(rows, models(rows), curve)
    # the best baseline (+ REPA) ends at 20; SFD's seed curves 25 → 14, 26 → 15, 27 → 16 cross 20 at
    # 1200 + 2400 × 5/11, 6/11, 7/11
    crossing = np.mean([1200 + 2400 * k / 11 for k in (5, 6, 7)])
    assert f"| SemVAE semantics, Δt 0.3 | 3 of 3 | {crossing:.0f} |" in lines
    assert "| LightningDiT | 1 of 3 | 3600 |" in lines
    assert f"a speed-up of {3600 / crossing:.1f}×" in text
    fids[(SFD, 3600)] = [24, 25, 26]
    rows = rows_for(fids, curve)
    assert convergence_table(rows, models(rows), curve)[1].endswith("The claim is not supported at this scale.")


def test_convergence_check_compares_the_solver_change_with_the_seed_spread():
    rows = rows_for({(BASE, 3600): [20.0, 22.0, 24.0], (SFD, 3600): [10.0, 10.1, 10.2]})
    check = MAIN.tighter()
    rows += [{**row, "sampler": check.sampler, "fid": row["fid"] + 0.5, "nfe": 90.0}
             for row in rows if row["repeat"] == 0]
    lines = convergence_lines(rows, MAIN, check)
    assert lines[0].startswith("| model (seed 0, 3600 steps) | FID, dopri5 rtol 0.001 | FID, dopri5 rtol 0.0001 |")
    assert "| LightningDiT | 20.00 (50 NFE) | 20.50 (90 NFE) | 0.50 | 2.00 | converged |" in lines
    assert "| SemVAE semantics, Δt 0.3 | 10.00 (50 NFE) | 10.50 (90 NFE) | 0.50 | 0.10 | NOT converged |" in lines


def test_quick_study_runs_end_to_end_and_writes_its_report(fake_fashion, tmp_path, capsys):
    from scripts.study import main

    run_dir = tmp_path / "run"
    assert main(["--quick", "--data-root", str(fake_fashion), "--run-dir", str(run_dir), "--repeats", "2"]) == 0
    folder = run_dir / "studies" / "anchors"
    assert f"report: {folder / 'report.md'}" in capsys.readouterr().out
    report = (folder / "report.md").read_text()
    assert "4 models × 2 training seeds (0, 1)" in report
    assert report.index("## The verdict rule (fixed before any result)") < report.index("## Verdicts")
    for claim in ("(a) Table 1 at 20 steps (euler-6 phases, 40 samples)", "(b) Δt at 20 steps",
                  "(c) Convergence (euler-6 phases, 20 samples per length)", "(d) Semantic anchor at 20 steps",
                  "## Semantic anchor after 20 steps", "| model (seed 0, 20 steps) | FID, euler-6 phases | "
                  "FID, euler-11 phases |", "Semantic FD: the Fréchet distance"):
        assert claim in report
    assert len(json.loads((folder / "verdicts.json").read_text())) == 4
    rows = json.loads((folder / "results.json").read_text())
    # 4 models × 2 seeds × 3 scores (20 samples at 10 and 20 steps, 40 at 20) + the 2 composite models' oracle
    # scores × 2 seeds + the check on seed 0
    assert len(rows) == 4 * 2 * 3 + 2 * 2 + 4
    oracle = [row for row in rows if row["conditioning"] == "oracle semantics"]
    assert {row["semantics"] for row in oracle} == {"semvae"} and all("source_ratio" in row for row in oracle)
    assert all("semantic_fd" in row for row in rows if row["semantics"] == "semvae" and row not in oracle)
    for plot in ("fid_vs_step.png", "semantic_fd_vs_step.png"):
        assert (folder / plot).stat().st_size > 0
    # a part of the seeds writes its own report folder; the demo's report links every study
    assert main(["--quick", "--data-root", str(fake_fashion), "--run-dir", str(run_dir), "--repeats", "2",
                 "--seeds", "1"]) == 0
    assert (run_dir / "studies" / "anchors_seeds1" / "report.md").is_file()
    from sfd.experiments.report import report_links

    assert any(line.startswith("* study [anchors](studies/anchors/report.md): (a) Table 1") for line in
               report_links(run_dir))

    # post-hoc EMA: runs of their own that track power EMAs, each model also scored at rebuilt widths
    assert main(["--quick", "--data-root", str(fake_fashion), "--run-dir", str(run_dir), "--repeats", "2",
                 "--name", "ema", "--sources", "none", "semvae", "--delta-t", "0.3",
                 "--ema-widths", "0.05", "0.1", "0.2"]) == 0
    report = (run_dir / "studies" / "ema" / "report.md").read_text()
    assert "## Post-hoc EMA after 20 steps" in report
    assert "| classic EMA | σ_rel 0.05 | σ_rel 0.1 | σ_rel 0.2 |" in report
    assert "SFD − LightningDiT, both at their best widths:" in report
    rows = json.loads((run_dir / "studies" / "ema" / "results.json").read_text())
    assert {row.get("average") for row in rows} == {None, "σ_rel 0.05", "σ_rel 0.1", "σ_rel 0.2"}
    run = run_dir / "runs" / "ssl_dt0.3_w2_semvae_r1_pema"
    assert (run / "power_ema" / "0000020_sigma0.1.pt").is_file()
    assert (run / "power_ema_reconstructed" / "ema_sigma0.2_0000020.pt").is_file()
    # their classic-EMA scores are the anchor runs' (tracking changes no weight): reused, not redone
    tracked = sorted((run_dir / "stages").glob("eval_*_pema_*"))
    assert tracked and all("_ema0." in path.name for path in tracked)

    # the lead's shapes: SFD with each shape next to the constant lead, whose runs (same names) are reused
    stages = run_dir / "stages"
    trained = {name: (stages / f"train_ssl_{name}.json").stat().st_mtime_ns for name in ("dt0.3_w2_semvae",
                                                                                        "lightningdit_r1")}
    assert main(["--quick", "--data-root", str(fake_fashion), "--run-dir", str(run_dir), "--repeats", "2",
                 "--name", "shapes", "--sources", "none", "semvae", "--delta-t", "0", "0.3",
                 "--schedules", "constant", "smooth", "shrinking"]) == 0
    assert {name: (stages / f"train_ssl_{name}.json").stat().st_mtime_ns for name in trained} == trained
    report = (run_dir / "studies" / "shapes" / "report.md").read_text()
    assert "5 models × 2 training seeds (0, 1)" in report and "## Schedule shapes after 20 steps" in report
    assert "* (e) Schedule shapes at 20 steps (euler-6 phases, 40 samples; SFD's Δt 0.3): shrinking − constant " \
           "lead:" in report
    for shape in ("constant", "shrinking", "smooth"):
        assert f"\n| {shape} | " in report
    assert "schedules 20" in json.loads((run_dir / "studies" / "shapes" / "verdicts.json").read_text())
    model = load_config(run_dir / "runs" / "ssl_dt0.3_w2_semvae_smooth_r1" / "config.yaml").model
    assert (model.semfirst_schedule, model.semfirst_delta_t) == ("smooth", 0.3)


def test_ema_width_table_picks_each_seeds_best_width_and_pairs_it_with_the_classic_ema():
    from sfd.experiments.report import StudyLayout

    curve = Scoring(samples=500)
    widths = (replace(curve, average=0.05), replace(curve, average=0.1))
    fids = {CLASSIC: {BASE: [10.0, 11.0, 12.0], SFD: [13.0, 12.0, 14.0]},
            0.05: {BASE: [9.0, 11.5, 11.0], SFD: [12.0, 12.5, 13.0]},
            0.1: {BASE: [9.5, 10.0, 12.5], SFD: [12.5, 11.0, 13.5]}}
    rows = []
    for average, by_model in fids.items():
        scoring = curve if average == CLASSIC else replace(curve, average=average)
        rows += rows_for({(variant, 3600): values for variant, values in by_model.items()}, scoring)
    layout = StudyLayout(curve, MAIN, ORACLE, MAIN.tighter(), (3600,), 0.3, widths)
    table = ema_width_table(rows, models(rows), 3600, layout)
    base_line = next(line for line in table if line.startswith("| LightningDiT |"))
    # best per seed: 9.0 (0.05), 10.0 (0.1), 11.0 (0.05) → mean 10.0; gains −1.0, −1.0, −1.0
    assert "| 10.00 ± 1.00 (σ_rel 0.05) |" in base_line
    assert Paired((-1.0, -1.0, -1.0)).text() in base_line
    sfd_line = next(line for line in table if line.startswith("| SemVAE semantics, Δt 0.3 |"))
    assert "(σ_rel 0.05)" in sfd_line or "(σ_rel 0.1)" in sfd_line
    # SFD at best (12.0, 11.0, 13.0) − LightningDiT at best (9.0, 10.0, 11.0)
    assert f"SFD − LightningDiT, both at their best widths: {Paired((3.0, 1.0, 2.0)).text()}." in "".join(table)


CLASSIC = "classic"
