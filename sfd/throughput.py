"""Model FLOPs and model FLOP utilisation (MFU): how much of a device's peak a training run turns into model math.

MFU = (images/s per device × training FLOPs per image) / the device's dense peak FLOP/s at the run's precision
(PaLM's definition, appendix B: the model's own FLOPs only, not recomputation or framework overhead). The FLOPs per
image are counted from the network's operator shapes (torch's FlopCounterMode over one forward on the meta device:
no memory, no compute), with training taken as 3× the forward (the backward pass costs twice the forward's matmuls).
The peaks are vendors' dense (non-sparse) datasheet figures; set ``SFD_PEAK_TFLOPS`` for a device or precision the
table lacks, or to use a measured peak.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

# Dense peak TFLOP/s per device, by a fragment of the device name and the matmul precision of the run. bf16 and
# fp16 share the tensor-core peak; tf32 is the TF32 tensor-core peak; fp32 the plain FP32 peak.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},  # SXM
    "H800": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "A800": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "Ascend910B": {"bf16": 313.0, "fp16": 313.0},  # Atlas 800T A2 (Ascend 910B2), per NPU
}
PEAK_ENV = "SFD_PEAK_TFLOPS"


def forward_flops_per_image(config) -> float:
    """FLOPs of one forward pass of ``config``'s network on one latent (REPA projector included), counted from the
    operators' shapes on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from sfd.build import build_model

    with torch.device("meta"):
        model = build_model(config)
        args = model.args
        x = torch.zeros(1, args.in_chans, args.input_size, args.input_size)
        t = torch.zeros(1)
        y = torch.zeros(1, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(x, t, t, y)
    return float(counter.get_total_flops())


def training_flops_per_image(config) -> float:
    """Forward + backward FLOPs per image: 3 × the forward."""
    return 3.0 * forward_flops_per_image(config)


def peak_flops(device_name: str, precision: str) -> Optional[float]:
    """The dense peak FLOP/s of one device at ``precision`` (fp32 | tf32 | bf16 | fp16): ``SFD_PEAK_TFLOPS`` when
    set, else :data:`PEAK_TFLOPS` by name; None when unknown (a CPU, or a device the table lacks)."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV]) * 1e12
    compact = device_name.replace(" ", "")
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in compact and precision in peaks:
            return peaks[precision] * 1e12
    return None


def model_flop_utilisation(images_per_s_per_device: float, flops_per_image: float,
                           peak: Optional[float]) -> Optional[float]:
    """MFU as a fraction of the peak (None when the peak is unknown)."""
    return images_per_s_per_device * flops_per_image / peak if peak else None
