"""The study: its grid order, the verdict of each claim on hand-made rows, the sampler-convergence check, and a
CI-size study end to end through scripts/study.py."""

import json
from dataclasses import replace

import pytest

from sfd.demo.study import (
    StudySettings,
    compare,
    convergence_lines,
    delta_t_verdict,
    speedup_verdict,
    steps_to_reach,
    table1_verdict,
    verdicts,
)
from sfd.sweep import Scoring, Variant, summarise

MAIN = Scoring()


def rows_for(fids: dict, sampler: str = MAIN.sampler, conditioning: str = "conditional") -> list[dict]:
    """Rows of a study: ``fids[(variant without repeat, step)]`` = FID per seed."""
    rows = []
    for (variant, step), values in fids.items():
        for repeat, fid in enumerate(values):
            model = replace(variant, repeat=repeat)
            rows.append({"name": model.name, "label": model.label, "semantics": model.semantics, "repa": model.repa,
                         "delta_t": model.delta_t, "semantic_weight": 2.0, "repeat": repeat, "step": step,
                         "sampler": sampler, "conditioning": conditioning, "fid": fid, "nfe": 50.0})
    return rows


BASE, REPA = Variant("none", 0.0, 2.0, False), Variant("none", 0.0, 2.0, True)
SFD, SYNC, EARLY, LATE = (Variant("semvae", delta_t, 2.0, True) for delta_t in (0.3, 0.0, 0.1, 0.5))


def test_study_grid_is_seed_major_with_the_demo_models_first():
    names = [v.name for v in StudySettings(repeats=2).variants()]
    assert names[:3] == ["lightningdit", "lightningdit_repa", "dt0.3_w2_semvae"]
    assert names == ["lightningdit", "lightningdit_repa", "dt0.3_w2_semvae", "dt0_w2_semvae", "dt0.1_w2_semvae",
                     "dt0.5_w2_semvae", *[f"{name}_r1" for name in names[:6]]]
    with pytest.raises(ValueError, match="needs SFD itself"):
        StudySettings(delta_ts=(0.0, 0.5))
    with pytest.raises(ValueError, match="repeats: 0"):
        StudySettings(repeats=0)


def test_compare_needs_a_gap_beyond_twice_the_larger_spread():
    a = {"fid": 10.0, "fid_std": 1.0, "runs": 3}
    assert compare(a, {"fid": 12.5, "fid_std": 0.5, "runs": 3}) == "better"
    assert compare(a, {"fid": 11.9, "fid_std": 0.5, "runs": 3}) == "tied"  # 1.9 ≤ 2 × 1.0
    assert compare({"fid": 13.0, "fid_std": 0.1, "runs": 3}, a) == "worse"
    assert compare({"fid": 1.0, "fid_std": 0.0, "runs": 1}, a) == "tied"  # one run: no spread known


def test_table1_verdicts_for_each_outcome():
    def summary(base, repa, sfd):
        return summarise(rows_for({(BASE, 1200): base, (REPA, 1200): repa, (SFD, 1200): sfd}))

    text = table1_verdict(summary([20, 21, 22], [18, 19, 20], [10, 11, 12]), MAIN.sampler, "conditional")
    assert text.startswith("(a) Table 1 [dopri5 rtol 0.001, conditional, 1200 steps, 3 seeds]: SFD's FID "
                           "11.00 ± 1.00 is lower than LightningDiT's 21.00 ± 1.00; lower than LightningDiT + "
                           "REPA's 19.00 ± 1.00.")
    assert text.endswith("The claim holds: SFD is better than every baseline.")
    assert "holds only in part" in table1_verdict(summary([20, 21, 22], [11, 12, 13], [10, 11, 12]), MAIN.sampler,
                                                  "conditional")
    assert "contradicted" in table1_verdict(summary([5, 5.1, 5.2], [11, 12, 13], [10, 11, 12]), MAIN.sampler,
                                            "conditional")
    assert "not decided" in table1_verdict(summary([11, 12, 13], [11, 12, 13], [10, 11, 12]), MAIN.sampler,
                                           "conditional")
    assert "not scored" in table1_verdict(summary([1, 2], [1, 2], [1, 2]), "euler-25", "conditional")


def test_delta_t_verdicts():
    def verdict(sync, early, lead, late):
        rows = rows_for({(SYNC, 10): sync, (EARLY, 10): early, (SFD, 10): lead, (LATE, 10): late})
        return delta_t_verdict(summarise(rows), MAIN.sampler, "conditional")

    text = verdict([20, 21, 22], [15, 16, 17], [10, 11, 12], [14, 15, 16])
    assert "Δt 0: 21.00 ± 1.00, Δt 0.1: 16.00 ± 1.00, Δt 0.3: 11.00 ± 1.00, Δt 0.5: 15.00 ± 1.00" in text
    assert "lowest mean FID is at Δt = 0.3, strictly inside (0, 1), lower than Δt = 0. The claim holds." in text
    assert "not bracketed" in verdict([20, 21, 22], [15, 16, 17], [12, 13, 14], [10, 11, 12])
    assert "not decided" in verdict([12, 13, 14], [15, 16, 17], [11, 12, 13], [14, 15, 16])
    assert "the synchronous model. The claim is contradicted." in verdict([5, 5.1, 5.2], [15, 16, 17],
                                                                         [10, 11, 12], [14, 15, 16])
    assert "not beyond the seed spread" in verdict([10, 11, 12], [11, 12, 13], [15, 16, 17], [14, 15, 16])


def test_steps_to_reach_interpolates_between_scored_lengths():
    assert steps_to_reach([(600, 20.0), (1200, 10.0)], 15.0) == pytest.approx(900.0)
    assert steps_to_reach([(600, 20.0), (1200, 10.0)], 25.0) == 600.0  # below at the first length: a bound
    assert steps_to_reach([(600, 20.0), (1200, 18.0)], 15.0) is None
    assert steps_to_reach([(400, 30.0), (800, 20.0), (1200, 10.0)], 20.0) == pytest.approx(800.0)


def test_speedup_verdicts():
    fids = {(BASE, 600): [30, 31, 32], (BASE, 1200): [20, 21, 22], (REPA, 600): [28, 29, 30],
            (REPA, 1200): [19, 20, 21], (SFD, 600): [25, 26, 27], (SFD, 1200): [14, 15, 16]}
    text = speedup_verdict(summarise(rows_for(fids)), MAIN.sampler, "conditional")
    # the best baseline (+ REPA) ends at 20; SFD's mean curve 26 → 15 crosses 20 at 600 + 600 × 6/11
    assert "the best baseline, LightningDiT + REPA, ends at FID 20.00 ± 1.00 after 1200 steps" in text
    crossing = 600 + 600 * 6 / 11
    assert f"reaches it at about {crossing:.0f} steps, a speed-up of {1200 / crossing:.1f}×" in text
    assert text.endswith("The claim holds (SFD needs fewer steps).")
    fids[(SFD, 1200)] = [24, 25, 26]
    assert "does not reach it within the budget" in speedup_verdict(summarise(rows_for(fids)), MAIN.sampler,
                                                                    "conditional")


def test_convergence_check_compares_the_solver_change_with_the_seed_spread():
    rows = rows_for({(BASE, 1200): [20.0, 22.0, 24.0], (SFD, 1200): [10.0, 10.1, 10.2]})
    check = MAIN.tighter()
    rows += [{**row, "sampler": check.sampler, "fid": row["fid"] + 0.5, "nfe": 90.0}
             for row in rows if row["repeat"] == 0]
    lines = convergence_lines(rows, summarise(rows), MAIN, check)
    assert lines[0].startswith("| model (seed 0, 1200 steps) | FID, dopri5 rtol 0.001 | FID, dopri5 rtol 0.0001 |")
    assert "| LightningDiT | 20.00 (50 NFE) | 20.50 (90 NFE) | 0.50 | 2.00 | converged |" in lines
    assert "| SemVAE semantics, Δt 0.3 | 10.00 (50 NFE) | 10.50 (90 NFE) | 0.50 | 0.10 | NOT converged |" in lines


def test_verdicts_cover_every_scoring_and_skip_single_length_speedups():
    fids = {(BASE, 600): [30, 31, 32], (BASE, 1200): [20, 21, 22], (REPA, 1200): [19, 20, 21],
            (SFD, 600): [25, 26, 27], (SFD, 1200): [14, 15, 16], (SYNC, 1200): [16, 17, 18]}
    rows = rows_for(fids) + rows_for({k: v for k, v in fids.items() if k[1] == 1200}, conditioning="unconditional")
    found = verdicts(summarise(rows))
    assert set(found) == {"table1 [dopri5 rtol 0.001, conditional]", "delta_t [dopri5 rtol 0.001, conditional]",
                          "speedup [dopri5 rtol 0.001, conditional]", "table1 [dopri5 rtol 0.001, unconditional]",
                          "delta_t [dopri5 rtol 0.001, unconditional]"}


def test_quick_study_runs_end_to_end_and_writes_its_report(fake_fashion, tmp_path, capsys):
    from scripts.study import main

    run_dir = tmp_path / "run"
    assert main(["--quick", "--data-root", str(fake_fashion), "--run-dir", str(run_dir), "--repeats", "2",
                 "--delta-t", "0", "0.3", "--steps", "10", "--eval-every", "5"]) == 0
    folder = run_dir / "studies" / "table1"
    assert f"report: {folder / 'report.md'}" in capsys.readouterr().out
    report = (folder / "report.md").read_text()
    assert "4 models × 2 training seeds (0, 1)" in report
    for claim in ("(a) Table 1 [euler-6, conditional, 10 steps, 2 seeds]", "(a) Table 1 [euler-6, unconditional",
                  "(b) Δt [euler-6, conditional", "(c) Convergence [euler-6, conditional]"):
        assert claim in report
    assert "| model (seed 0, 10 steps) | FID, euler-6 | FID, euler-11 |" in report  # the solver check
    assert "**euler-6** is the converged solver" in report and "models have converged at euler-6" in report
    table = (folder / "table.md").read_text()
    assert "| LightningDiT + REPA | – | – | euler-6 (5) | unconditional | 10 | 2 |" in table
    assert len(json.loads((folder / "verdicts.json").read_text())) == 5
    rows = json.loads((folder / "results.json").read_text())
    # 4 models × 2 seeds × (2 conditional lengths + unconditional) + the check on seed 0
    assert len(rows) == 4 * 2 * 3 + 4
    assert {row["repeat"] for row in rows if row["sampler"] == "euler-11"} == {0}
    for plot in ("fid_vs_step.png", "fid_vs_delta_t.png"):
        assert (folder / plot).stat().st_size > 0
    # the demo's report links the study
    from sfd.demo.report import report_links

    assert any(line.startswith("* study [table1](studies/table1/report.md): (a) Table 1") for line in
               report_links(run_dir))
