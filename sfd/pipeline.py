"""A diffusers-style pipeline over this project's sampler and guidance.

    from sfd.pipeline import SFDPipeline
    pipe = SFDPipeline.from_pretrained("sfd-xl-800ep-ag", device="cuda")   # a release row, a folder or a repo id
    images = pipe(class_labels=[207, 360, 387, 974], seed=0).images          # PIL images

It follows diffusers' conventions (``from_pretrained``, ``save_pretrained``, ``__call__`` returning an output with
``images``, ``output_type`` "pil" or "np") without subclassing ``diffusers.DiffusionPipeline``, whose component
registry expects diffusers or transformers models and their configs. Image k of a call is seeded by (seed, k), the
per-sample noise of ``scripts/sample.py``, so ``pipe(class_labels=L, seed=s)`` gives the images of
``run_fast_inference.sh CONFIG --labels L`` with ``train.global_seed=s`` (tests/test_pretrained.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from sfd.pretrained import Pretrained, from_pretrained, save_pretrained


@dataclass
class SFDPipelineOutput:
    images: list | np.ndarray  # PIL images, or uint8 [N, H, W, 3] with output_type="np"
    nfe: float  # mean network evaluations per sample batch


class SFDPipeline:
    def __init__(self, pretrained: Pretrained) -> None:
        self.pretrained = pretrained

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
                        overrides: Sequence[str] = (), download: bool = True) -> "SFDPipeline":
        return cls(from_pretrained(name_or_path, device=device, overrides=overrides, download=download))

    def save_pretrained(self, folder: str | Path, scores: Optional[dict] = None) -> Path:
        return save_pretrained(self.pretrained, folder, scores)

    @property
    def config(self):
        return self.pretrained.config

    def __call__(self, class_labels: Sequence[int], num_inference_steps: Optional[int] = None,
                 guidance_scale: Optional[float] = None, seed: Optional[int] = None,
                 generator: Optional[torch.Generator] = None, output_type: str = "pil",
                 batch_size: Optional[int] = None) -> SFDPipelineOutput:
        """One image per class label (``num_classes`` = unconditional). ``num_inference_steps`` and
        ``guidance_scale`` override the config's ``sample.num_sampling_steps`` and ``sample.cfg_scale`` (guidance
        only above 1; with a guide it is AutoGuidance); ``seed`` (or a torch ``generator``'s initial seed) replaces
        ``train.global_seed``. All labels form one batch unless ``batch_size`` is given (an adaptive solver
        shares its steps over a batch, so the batching is part of the result there)."""
        if output_type not in ("pil", "np"):
            raise ValueError(f"output_type: {output_type!r} is not 'pil' or 'np'")
        num_classes = self.config.data.num_classes
        bad = [label for label in class_labels if not 0 <= int(label) <= num_classes]
        if bad:
            raise ValueError(f"class_labels: {bad[0]} is outside [0, {num_classes}] ({num_classes} = unconditional)")
        if generator is not None and seed is None:
            seed = generator.initial_seed()
        pretrained = self.pretrained
        if num_inference_steps is not None or guidance_scale is not None:
            pretrained = replace(pretrained, config=_with_sampling(pretrained.config, num_inference_steps,
                                                                   guidance_scale))
        sampler = pretrained.sampler(seed)
        labels = torch.tensor([int(label) for label in class_labels], dtype=torch.int64)
        step = batch_size or len(labels)  # one batch, as run_fast_inference.sh (dopri5 couples a batch)
        images = np.concatenate([sampler.images(range(start, min(start + step, len(labels))),
                                                labels[start: start + step])
                                 for start in range(0, len(labels), step)])
        if output_type == "pil":
            from PIL import Image

            images = [Image.fromarray(image) for image in images]
        return SFDPipelineOutput(images=images, nfe=sampler.mean_nfe)


def _with_sampling(config, steps: Optional[int], scale: Optional[float]):
    import copy

    config = copy.deepcopy(config)
    if steps is not None:
        config.sample.num_sampling_steps = int(steps)
    if scale is not None:
        config.sample.cfg_scale = float(scale)
    return config
