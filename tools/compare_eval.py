#!/usr/bin/env python
"""Compare two ADM evaluations metric by metric: IS, FID, sFID, Precision, Recall, with B − A and (B − A)/|A|.

Each input is a JSON report of scripts/evaluate.py or a text file holding the evaluator's stdout (the five
'Label: value' lines, e.g. what run_eval_via_guided_diffusion.sh saved from OpenAI's TensorFlow evaluator).

    python tools/compare_eval.py samples_adm_tf.txt samples_adm_eval.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from sfd.cli import make_parser

# (stdout label, JSON key) in ADM's print order.
METRICS = (("Inception Score", "inception_score"), ("FID", "fid"), ("sFID", "sfid"), ("Precision", "precision"),
           ("Recall", "recall"))


def read_metrics(path: Path) -> dict[str, float]:
    """The five metrics of a JSON report or of a text file with ADM's stdout lines, keyed by stdout label."""
    text = path.read_text()
    if text.lstrip().startswith("{"):
        report = json.loads(text)
        missing = [key for _, key in METRICS if key not in report]
        if missing:
            raise ValueError(f"{path}: JSON report lacks {', '.join(missing)}")
        return {label: float(report[key]) for label, key in METRICS}
    found = {}
    for label, _ in METRICS:
        match = re.search(rf"^{re.escape(label)}: (\S+)\s*$", text, flags=re.MULTILINE)
        if match is None:
            raise ValueError(f"{path}: no '{label}: <value>' line")
        found[label] = float(match.group(1))
    return found


def comparison_table(a: dict[str, float], b: dict[str, float]) -> list[str]:
    """Fixed-width rows: metric, A, B, B − A, (B − A)/|A|."""
    rows = [f"{'metric':<16}{'A':>20}{'B':>20}{'B - A':>14}{'rel':>11}"]
    for label, _ in METRICS:
        diff = b[label] - a[label]
        rel = diff / abs(a[label]) if a[label] else float("nan")
        rows.append(f"{label:<16}{a[label]:>20.10g}{b[label]:>20.10g}{diff:>+14.6g}{rel:>+11.2e}")
    return rows


def main(argv=None) -> int:
    parser = make_parser(*__doc__.split("\n\n", 1))
    parser.add_argument("a", help="first evaluation (JSON report or evaluator stdout)")
    parser.add_argument("b", help="second evaluation")
    args = parser.parse_args(argv)
    try:
        a, b = read_metrics(Path(args.a)), read_metrics(Path(args.b))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"A: {args.a}\nB: {args.b}")
    print("\n".join(comparison_table(a, b)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
