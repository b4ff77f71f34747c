"""The FID-vs-NFE report (sfd/experiments/report.py) on made-up scores: pairing per seed, both verdicts, files."""

import json

from sfd.experiments import report as nfe
from sfd.experiments.sweep import Scoring


def rows_for(scores: dict[str, tuple[float, list[float]]]) -> list[dict]:
    return [{"repeat": repeat, "step": 3600, "sampler": sampler, "fid": fid, "nfe": nfe_count}
            for sampler, (nfe_count, fids) in scores.items() for repeat, fid in enumerate(fids)]


SCORES = {
    Scoring().sampler: (80.0, [14.0, 14.5, 15.0]),  # the release's sampler: spread 0.5
    Scoring(rtol=1e-4).sampler: (270.0, [15.0, 15.5, 16.0]),  # converged
    Scoring(phases=True).sampler: (60.0, [15.1, 15.4, 16.1]),
    Scoring("heun", 9).sampler: (16.0, [14.1, 14.6, 15.1]),
    Scoring("euler", 9).sampler: (8.0, [17.0, 17.5, 18.0]),
}


def test_paired_differences_and_verdicts(tmp_path):
    rows = rows_for(SCORES)
    summary = {entry["sampler"]: entry for entry in nfe.nfe_summary(rows)}
    heun = summary["heun-9"]
    assert abs(heun["diff"] - 0.1) < 1e-9 and heun["diff_std"] < 1e-9 and heun["seeds"] == 3
    # against the release's sampler heun-9 matches at 16/80 NFE; euler-9 is far worse
    assert "**heun-9** matches it" in nfe.nfe_verdict(nfe.nfe_summary(rows))
    # against the converged solver the phase-split dopri5 is within its spread (|+0.03| <= 0.5), heun-9 is not
    converged = nfe.nfe_verdict(nfe.nfe_summary(rows, nfe.NFE_CONVERGED), nfe.NFE_CONVERGED, two_sided=True)
    assert "**dopri5 rtol 0.001 phases** matches it" in converged
    report = nfe.write_nfe_report(rows, tmp_path / "nfe", setup=["made-up scores"])
    text = report.read_text()
    assert text.index("## Verdicts") < text.index("| sampler | NFE |")
    assert "Against the converged solver" in text and "made-up scores" in text
    assert (tmp_path / "nfe" / "fid_vs_nfe.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "nfe" / "results.json").read_text())) == 15


def test_no_match_is_said_plainly():
    rows = rows_for({Scoring().sampler: (80.0, [14.0, 14.1, 14.2]), Scoring("euler", 9).sampler: (8.0, [17, 18, 19])})
    assert nfe.nfe_verdict(nfe.nfe_summary(rows)).endswith("No setting tried matches it at half its NFE or less.")


def test_families_of_the_plot():
    assert nfe.sampler_family("dopri5 rtol 0.001 phases") == "dopri5 phases"
    assert nfe.sampler_family("heun-9") == "heun" and nfe.sampler_family("euler-33 phases") == "euler phases"
