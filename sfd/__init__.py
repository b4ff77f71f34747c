"""sfd: Semantic-First Diffusion ("Semantics Lead the Way", arXiv 2512.04926), clean and tested.

The Python API in a few names:

    config = sfd.load_config("configs/sfd/lightningdit_xl/inference_4m_autoguidance.yaml", ["sample.cfg_scale=1.5"])
    model = sfd.build_model(config)                    # or sfd.load_model(path) with the config's weights
    terms = sfd.FlowMatchingLoss.from_config(config)(model, x1, y, dino, t=t, noise=noise)
    latents = sfd.sample(model, z, y, sfd.SamplerOptions.from_config(config, guide)).x
    released = sfd.from_pretrained("sfd-xl-800ep-ag")  # model, guide, config, decoder (sfd.pretrained)
"""

from sfd.build import build_model, load_guide, load_model
from sfd.checkpoint import CheckpointError, export_weights, load_weights
from sfd.config import ConfigError, SFDConfig, load_config, model_args, save_config
from sfd.guidance import Guidance, guided_velocity
from sfd.lightningdit import SIZES, LightningDiT, LightningDiTArgs, ModelOutput
from sfd.loss import FlowMatchingLoss, LossTerms
from sfd.pretrained import Pretrained, from_pretrained, save_pretrained
from sfd.samplers import SampleResult, SamplerOptions, sample
from sfd.schedule import TimeSplit

__all__ = [
    "SIZES", "CheckpointError", "ConfigError", "FlowMatchingLoss", "Guidance", "LightningDiT", "LightningDiTArgs",
    "LossTerms", "ModelOutput", "Pretrained", "SFDConfig", "SampleResult", "SamplerOptions", "TimeSplit", "build_model",
    "export_weights", "from_pretrained", "guided_velocity", "load_config", "load_guide", "load_model", "load_weights",
    "model_args", "sample", "save_config", "save_pretrained",
]
