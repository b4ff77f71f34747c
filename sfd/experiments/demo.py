"""``make demo``: the paper's Table 1 at toy scale on the Fashion-MNIST backend, one training seed, with the oracle
bound of SFD (its texture generated from the true semantics of held-out images), written as ``report.md``."""

from __future__ import annotations

from pathlib import Path

from sfd.experiments.fashion import FashionBackend
from sfd.experiments.report import write_demo_report


def run_demo(backend: FashionBackend) -> Path:
    """Train and score the settings' models (every stage resumes), then write ``report.md`` — rewritten every time
    (a second), since it also lists the sweeps and studies run in the same folder since."""
    rows = backend.sweep(backend.settings.variants)
    return write_demo_report(backend, rows)
