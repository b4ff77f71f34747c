#!/usr/bin/env python
"""ADM evaluation (FID, sFID, Inception Score, Precision, Recall) of a sample batch against an ADM reference batch,
in PyTorch, with the numbers and the five stdout lines of guided-diffusion's evaluations/evaluator.py.

    python scripts/evaluate.py outputs/ADM_npz/VIRTUAL_imagenet256_labeled.npz samples.npz \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth      # or set INCEPTION_WEIGHTS
    python scripts/evaluate.py REF.npz samples_png_folder/ --json report.json --pr-mode fp32

The weights file is never downloaded; see docs/evaluator.md §9.2 for its source and hash.
"""

import sys

from sfd.evaluation.adm import main

if __name__ == "__main__":
    sys.exit(main())
