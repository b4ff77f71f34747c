"""The semantic-anchor diagnostics: does a composite model fail at generating the semantics, or at using them?

Two measurements, both on the normalised latents the model generates (docs/results.md explains how to read them):

* **Oracle semantics** (:class:`SemanticOracle`): texture generated while the semantic channels are held to the
  true semantic latent of a held-out image, forward-noised to the current semantic time at every network
  evaluation — replacement conditioning. On the linear path the semantic state at time t is
  ``t·z_sem + (1 − t)·ε_sem`` (the training's interpolant, ``sfd.loss``), and its velocity is ``z_sem − ε_sem``;
  the wrapper feeds the network the first and returns the second, so every solver carries the semantic channels
  exactly along the noised truth while the texture channels follow the network. FID of such textures is what a
  perfect semantic generator would give this model: the upper bound of what leading with semantics can buy here.
  :func:`source_distances` then asks whether a generated texture is nearer to its source image's texture than to
  another held-out image of the same class (the semantics carry more than the class).
* **Semantic generation quality** (:func:`semantic_frechet_distance`): the Fréchet distance between the semantic
  channels the model generates and the true semantic latents of held-out images, each latent flattened to one
  vector.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from sfd.evaluation.metrics import feature_statistics, frechet_distance


class SemanticOracle(nn.Module):
    """``model`` with its semantic channels replaced by the noised truth at every call (see the module's docstring).

    ``truth``: the true semantic latents [B, C_sem, H, W], the model's trailing C_sem channels (normalised like
    its inputs); ``noise``: the
    semantic part of the sampler's initial state (the state at t_sem = 0), so the replaced channels start where
    the sampler starts. Calls with a multiple of B rows (a guidance batch holds the conditional and the reference
    halves) replace every copy."""

    def __init__(self, model: nn.Module, truth: torch.Tensor, noise: torch.Tensor) -> None:
        super().__init__()
        if truth.shape != noise.shape:
            raise ValueError(f"truth/noise: shapes {tuple(truth.shape)} and {tuple(noise.shape)} differ")
        if not 0 < truth.shape[1] < model.args.in_chans:
            raise ValueError(f"truth: {truth.shape[1]} semantic channels for a model of {model.args.in_chans} channels "
                             "(texture first, semantic last: the semantic part is the trailing channels)")
        self.model = model
        self.truth, self.noise = truth, noise
        self.args, self.null_label = model.args, model.null_label

    def noised_truth(self, t_sem: torch.Tensor, rows: int) -> torch.Tensor:
        """The semantic state at ``t_sem`` [rows] for ``rows`` = a multiple of the batch."""
        copies = rows // len(self.truth)
        truth, noise = self.truth.repeat(copies, 1, 1, 1), self.noise.repeat(copies, 1, 1, 1)
        t = t_sem.to(truth.dtype).view(-1, 1, 1, 1)
        return t * truth + (1 - t) * noise

    def forward(self, x: torch.Tensor, t_tex: torch.Tensor, t_sem: torch.Tensor, y: torch.Tensor, **kwargs):
        if len(x) % len(self.truth):
            raise ValueError(f"x: {len(x)} rows for an oracle of {len(self.truth)} samples")
        texture_chans = x.shape[1] - self.truth.shape[1]
        semantic = self.noised_truth(t_sem, len(x)).to(x.dtype)
        output = self.model(torch.cat([x[:, :texture_chans], semantic], 1), t_tex, t_sem, y, **kwargs)
        copies = len(x) // len(self.truth)
        velocity = (self.truth - self.noise).repeat(copies, 1, 1, 1).to(output.velocity.dtype)
        return replace(output, velocity=torch.cat([output.velocity[:, :texture_chans], velocity], 1))


def flat(latents: torch.Tensor | np.ndarray) -> np.ndarray:
    """[N, C, H, W] → [N, C·H·W] float64 (one vector per latent)."""
    array = latents.detach().cpu().numpy() if isinstance(latents, torch.Tensor) else np.asarray(latents)
    return array.reshape(len(array), -1).astype(np.float64)


def semantic_frechet_distance(generated: torch.Tensor | np.ndarray, real: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between two sets of semantic latents [N, C, H, W], each latent one vector (the project's
    :func:`~sfd.evaluation.metrics.frechet_distance`, the FID formula)."""
    return frechet_distance(feature_statistics(flat(generated)), feature_statistics(flat(real)))


def same_class_partners(labels: np.ndarray) -> np.ndarray:
    """For each image, another image of its class: the next one of that class in index order (cyclically); an image
    alone in its class is its own partner (left out by :func:`source_distances`)."""
    labels = np.asarray(labels)
    partners = np.arange(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        partners[members] = np.roll(members, -1)
    return partners


def source_distances(generated: torch.Tensor, sources: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Root-mean-square distance of each generated texture latent to its source image's texture latent, and to the
    texture of another held-out image of the same class (the control), averaged over the samples; ``ratio`` below
    1 means the textures follow the instance their semantics came from, not only its class."""
    partners = same_class_partners(labels)
    keep = partners != np.arange(len(partners))
    generated, sources = flat(generated)[keep], flat(sources)
    to_source = np.sqrt(((generated - sources[keep]) ** 2).mean(axis=1)).mean()
    to_control = np.sqrt(((generated - sources[partners[keep]]) ** 2).mean(axis=1)).mean()
    return {"source_distance": float(to_source), "control_distance": float(to_control),
            "source_ratio": float(to_source / to_control)}
