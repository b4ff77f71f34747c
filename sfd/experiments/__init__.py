"""Experiments on SFD: the demo, the sweeps and the studies, in one shape.

* :mod:`sfd.experiments.sweep` — the grid of models (:class:`~sfd.experiments.sweep.Variant`), the ways of scoring
  them (:class:`~sfd.experiments.sweep.Scoring`), the backend protocol (``train`` and ``evaluate``) and
  :func:`~sfd.experiments.sweep.run_sweep`, which trains and scores a grid at equal budgets on any backend.
* Backends: :class:`sfd.experiments.fashion.FashionBackend` (the toy-scale pipeline of ``make demo`` on
  Fashion-MNIST, trained from scratch on a CPU) and :class:`sfd.experiments.latents_backend.LatentsBackend`
  (precomputed latents such as ImageNet's, scored by the ADM suite).
* :mod:`sfd.experiments.study` (the paper's claims with repeated seeds and the semantic-anchor diagnostics),
  :mod:`sfd.experiments.nfe` (FID against the sampler's cost) and :mod:`sfd.experiments.demo` (``make demo``) decide
  what to run.
* :mod:`sfd.experiments.report` — every report: statistics (means, spreads, paired differences), the verdict rules,
  tables and plots, written once.
* :mod:`sfd.experiments.diagnostics` — oracle semantics (replacement conditioning) and distances on latents.
"""
