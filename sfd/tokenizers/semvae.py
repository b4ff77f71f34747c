"""The Semantic VAE (SemVAE): compresses DINOv2 patch tokens [B, L, D] into a channels-first latent [B, C, √L, √L].

Architecture of the release (docs/semvae.md §1, ``transformer_ch16``): a Linear D→E, N pre-norm transformer blocks,
a LayerNorm and a Linear E→2C form the encoder; the decoder mirrors it (C→E, N blocks, LayerNorm, E→D). The module
and parameter names are the released ones (``encoder.0`` … ``encoder.N+2``, ``attn.in_proj_weight``, ``mlp.0``,
``mlp.2``), so ``semantic_ae_final.pt`` loads strictly. There are no positional embeddings: the network is
permutation-equivariant over tokens, and token t sits at grid position (t // side, t % side).

The posterior is the shared :class:`DiagonalGaussian` (log-variance clamped to [-30, 20]). The release always
samples it, also when writing the diffusion latents (docs/semvae.md §1.3); ``encode`` does the same by default, with an
explicit generator, and offers the mean with ``sample=False``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from sfd.checkpoint import CheckpointError, explain_mismatch, read_file
from sfd.tokenizers.distributions import DiagonalGaussian


@dataclass(frozen=True)
class SemVAEArgs:
    """Sizes of a SemVAE; field names are the official constructor's keyword names (vae.py factory)."""

    input_dim: int = 768  # D, width of the feature tokens (768 for dinov2_vitb14_reg)
    bottleneck_dim: int = 16  # C, latent channels
    hidden_dim: int = 768  # E, transformer width
    transformer_heads: int = 6  # attention heads (head dim E / heads)
    transformer_blocks: int = 4  # N, blocks in the encoder and again in the decoder


# Released sizes, by the name of the official run folder (docs/semvae.md §1.1).
SIZES = {"transformer_ch16": SemVAEArgs(input_dim=768, bottleneck_dim=16, hidden_dim=768,
                                        transformer_heads=6, transformer_blocks=4)}


class SemVAEOutput(NamedTuple):
    recon: torch.Tensor  # [B, L, D] decoded from the latent
    latent: torch.Tensor  # [B, C, side, side] posterior sample (or mean), channels-first
    kl: torch.Tensor  # [B] KL(q ‖ N(0, I)) summed over the C·side·side latent elements


class TransformerBlock(nn.Module):
    """Pre-norm block of the release (docs/semvae.md §1.2): h = x + Attn(LN1 x); out = h + MLP(LN2 h), exact GELU."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        # need_weights=False takes the fused scaled-dot-product kernel; the release asks for (and discards) the
        # averaged attention map, which changes nothing but rounding (goldens agree to < 1e-5).
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def _stack(in_dim: int, width: int, out_dim: int, heads: int, blocks: int) -> nn.Sequential:
    """Linear in→E, ``blocks`` transformer blocks, LayerNorm, Linear E→out (indices as in the release)."""
    return nn.Sequential(nn.Linear(in_dim, width), *(TransformerBlock(width, heads) for _ in range(blocks)),
                         nn.LayerNorm(width), nn.Linear(width, out_dim))


def grid_side(tokens: int) -> int:
    """Side of the square token grid; the latent is [C, side, side] with token t at (t // side, t % side)."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"SemVAE: {tokens} tokens do not form a square grid (expected a perfect square such as 256)")
    return side


class SemanticVAE(nn.Module):
    def __init__(self, args: SemVAEArgs = SemVAEArgs()) -> None:
        super().__init__()
        if args.hidden_dim % args.transformer_heads:
            raise ValueError(f"SemVAE: hidden_dim {args.hidden_dim} is not divisible by "
                             f"transformer_heads {args.transformer_heads}")
        self.args = args
        width, heads, blocks = args.hidden_dim, args.transformer_heads, args.transformer_blocks
        # Encoder output channels 0..C-1 are the mean, C..2C-1 the log-variance (docs/semvae.md §1.2).
        self.encoder = _stack(args.input_dim, width, 2 * args.bottleneck_dim, heads, blocks)
        self.decoder = _stack(args.bottleneck_dim, width, args.input_dim, heads, blocks)

    def posterior(self, tokens: torch.Tensor) -> DiagonalGaussian:
        """q(z | tokens) over the channels-first grid: moments [B, 2C, side, side] from tokens [B, L, D]."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.args.input_dim:
            raise ValueError(f"SemVAE.posterior: expected tokens [B, L, {self.args.input_dim}], "
                             f"got {list(tokens.shape)}")
        side = grid_side(tokens.shape[1])
        moments = self.encoder(tokens)  # [B, L, 2C]
        return DiagonalGaussian(moments.transpose(1, 2).reshape(tokens.shape[0], -1, side, side))

    def encode(self, tokens: torch.Tensor, generator: Optional[torch.Generator] = None, sample: bool = True,
               noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Latent [B, C, side, side]: a posterior sample (as the release stores, docs/semvae.md §3.1) or, with
        ``sample=False``, the mean. ε comes from ``noise`` if given, else from ``generator``."""
        return self._latent(self.posterior(tokens), generator, sample, noise)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Tokens [B, L, D] from a latent [B, C, side, side] (row-major: token t = side·row + col)."""
        if latent.dim() != 4 or latent.shape[1] != self.args.bottleneck_dim or latent.shape[2] != latent.shape[3]:
            raise ValueError(f"SemVAE.decode: expected a latent [B, {self.args.bottleneck_dim}, side, side], "
                             f"got {list(latent.shape)}")
        return self.decoder(latent.flatten(2).transpose(1, 2))

    def forward(self, tokens: torch.Tensor, generator: Optional[torch.Generator] = None,
                noise: Optional[torch.Tensor] = None, sample: bool = True) -> SemVAEOutput:
        """Reconstruction from a posterior sample (the training path of the release), the latent and the KL."""
        posterior = self.posterior(tokens)
        latent = self._latent(posterior, generator, sample, noise)
        return SemVAEOutput(self.decode(latent), latent, posterior.kl())

    @staticmethod
    def _latent(posterior: DiagonalGaussian, generator: Optional[torch.Generator], sample: bool,
                noise: Optional[torch.Tensor]) -> torch.Tensor:
        if not sample:
            return posterior.mode()
        if noise is None and generator is not None and generator.device != posterior.mean.device:
            # A CPU generator driving a GPU model: draw where the generator lives, so a run's ε does not depend on
            # the device it runs on.
            noise = torch.randn(posterior.mean.shape, generator=generator, dtype=posterior.mean.dtype,
                                device=generator.device).to(posterior.mean.device)
        return posterior.sample(generator=generator, noise=noise)


@torch.no_grad()
def init_weights(model: SemanticVAE, generator: torch.Generator) -> SemanticVAE:
    """PyTorch's default initialisation (which the release uses), drawn from ``generator`` instead of the global
    RNG: Linear weight kaiming-uniform(a=√5) and bias U(±1/√fan_in); MHA in-projection xavier-uniform with zero
    biases; LayerNorm weight 1, bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.MultiheadAttention):
            nn.init.xavier_uniform_(module.in_proj_weight, generator=generator)
            nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    # The out-projection is an nn.Linear and was drawn above; MHA then zeroes its bias (torch's MHA reset).
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            nn.init.zeros_(module.out_proj.bias)
    return model


def args_from_state_dict(state: Mapping[str, torch.Tensor], transformer_heads: int,
                         source: str = "state dict") -> SemVAEArgs:
    """Sizes read off the tensor shapes (the head count is not visible in shapes and must be given)."""
    try:
        width, input_dim = state["encoder.0.weight"].shape
        blocks = sum(1 for key in state if key.startswith("encoder.") and key.endswith(".norm1.weight"))
        bottleneck_dim = state[f"encoder.{blocks + 2}.weight"].shape[0] // 2
    except KeyError as error:
        raise CheckpointError(f"{source}: not a SemVAE state dict (no {error.args[0]!r})") from None
    return SemVAEArgs(input_dim=int(input_dim), bottleneck_dim=int(bottleneck_dim), hidden_dim=int(width),
                      transformer_heads=transformer_heads, transformer_blocks=blocks)


def _heads_from_payload(payload: Mapping[str, Any], metadata: Optional[Mapping[str, str]]) -> Optional[int]:
    """The head count a file records: ``constructor_kwargs`` metadata of a .safetensors, or ``model.params`` of the
    YAML string under ``config`` (official and trainer checkpoints); ``${variables...}`` interpolations resolve."""
    if metadata and "constructor_kwargs" in metadata:
        return int(json.loads(metadata["constructor_kwargs"])["transformer_heads"])
    if isinstance(payload.get("config"), str):
        heads = OmegaConf.select(OmegaConf.create(payload["config"]), "model.params.transformer_heads")
        return None if heads is None else int(heads)
    return None


def load_semvae(path: str | Path, device: str | torch.device = "cpu",
                transformer_heads: Optional[int] = None) -> SemanticVAE:
    """A SemVAE in eval mode from an official ``semantic_ae_*.pt`` (key ``model_state_dict``), a checkpoint of our
    trainer (same layout), a ``.safetensors`` state dict with ``constructor_kwargs`` metadata, or a bare state dict.
    Sizes come from the tensor shapes; the head count from the file (or ``transformer_heads``). Loading is strict:
    a mismatch raises CheckpointError naming the keys."""
    path = Path(path)
    payload = read_file(path)
    metadata = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
    state = payload["model_state_dict"] if isinstance(payload.get("model_state_dict"), Mapping) else payload
    state = {key.removeprefix("module."): value for key, value in state.items()}
    recorded = _heads_from_payload(payload, metadata)
    if recorded is not None and transformer_heads is not None and recorded != transformer_heads:
        raise CheckpointError(f"{path}: transformer_heads={transformer_heads} given, the file records {recorded}")
    heads = transformer_heads if transformer_heads is not None else recorded
    if heads is None:
        raise CheckpointError(f"{path}: the file does not record transformer_heads; pass transformer_heads=")
    model = SemanticVAE(args_from_state_dict(state, heads, str(path)))
    problems = explain_mismatch(model, state)
    if problems:
        raise CheckpointError(f"{path}: does not fit a SemVAE {asdict(model.args)}: " + "; ".join(problems))
    model.load_state_dict(state)
    return model.to(device).eval()
