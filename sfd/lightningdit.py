"""LightningDiT, the velocity network of SFD, with state-dict keys identical to the official release.

This is the only backbone file. It holds no loss, guidance or sampler (see ``sfd.loss``, ``sfd.guidance``,
``sfd.samplers``). Conventions (docs/method.md §2, §4):

* input ``x`` is [B, C, H, W] with texture channels first and the ``semantic_chans`` semantic channels last;
* time is the raw flow-matching time, t = 0 noise and t = 1 data (never multiplied by 1000);
* a semantic-first model (Δt > 0) has two time embedders of width D/2 whose outputs are concatenated as
  [emb(t_sem), emb(t_tex)] (semantic half first), while callers always pass times in the order (t_tex, t_sem);
* a synchronous model (Δt = 0) has one embedder of width D and reads ``t_tex`` (equal to ``t_sem`` there).

Label dropout for classifier-free guidance is *not* done here: the loss drops labels with an explicit generator
(``sfd.loss``), so the network is a deterministic function of its inputs in train and eval mode alike.

Each block is written here once, as the reference path. ``LightningDiT.fused`` (on by default) runs the blocks
through ``sfd.fused`` instead: the same computation in fewer passes over memory, for eager CPU training, equal to
this file's path within rounding (tests/test_lightningdit.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sfd import fused

# Official registry sizes: name -> (depth, hidden width D, heads). Every size exists with patch 1 and 2
# (`LightningDiT-XL/1`, `LightningDiT-XL/2`, ...). docs/method.md §4.1.
SIZES: dict[str, tuple[int, int, int]] = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
    "1p0B": (24, 1536, 24),
    "1p6B": (28, 1792, 28),
}

# Feature width of each REPA target encoder the release registers (docs/method.md §4.7).
REPA_TARGET_DIMS: dict[str, int] = {
    "dinov2_vits14": 384,
    "dinov2_vits14_reg": 384,
    "dinov2_vitb14": 768,
    "dinov2_vitb14_reg": 768,
    "dinov2_vitl14": 1024,
    "dinov2_vitl14_reg": 1024,
    "mae_base": 768,
    "mae_large": 1024,
    "clip_vit_base_patch16": 768,
    "clip_vit_large_patch14": 1024,
    "siglip_base_patch16_224": 768,
}


def parse_model_type(model_type: str) -> tuple[str, Optional[int]]:
    """Split ``LightningDiT-XL/1`` into (``XL``, 1). The patch is None when the name has no ``/N`` suffix."""
    name = model_type.removeprefix("LightningDiT-")
    size, _, patch = name.partition("/")
    return size, int(patch) if patch.isdigit() else None


@dataclass(frozen=True)
class LightningDiTArgs:
    """Everything that decides the architecture and thus the state-dict keys and shapes. No defaults: a config's
    values come through ``sfd.config.model_args`` (the config dataclasses hold the one set of defaults)."""

    input_size: int  # latent side (image_size / VAE stride)
    patch_size: int
    in_chans: int
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float
    num_classes: int
    class_dropout_prob: float  # > 0 adds the null row (index num_classes) to the label table
    learn_sigma: bool  # doubles the output channels; the extra half is dropped in forward
    use_qknorm: bool
    use_swiglu: bool
    use_rope: bool
    use_rmsnorm: bool
    wo_shift: bool
    use_checkpoint: bool  # gradient checkpointing of the blocks
    semantic_first: bool  # two time embedders (Δt > 0 and semantic channels present)
    repa_target_dim: Optional[int]  # None: no REPA projector
    repa_feat_depth: int  # 1-based block whose output the projector reads
    repa_projector_dim: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        # The release truncates int(2/3 * int(4 * D)): L -> 2730, 1p6B -> 4778 (docs/method.md §4.1).
        hidden = int(self.hidden_size * self.mlp_ratio)
        return int(2 / 3 * hidden) if self.use_swiglu else hidden

    @property
    def out_chans(self) -> int:
        return self.in_chans * 2 if self.learn_sigma else self.in_chans


@dataclass
class ModelOutput:
    """What the network returns in train and eval mode alike."""

    velocity: torch.Tensor  # [B, C, H, W]
    repa: Optional[torch.Tensor] = None  # [B, tokens, repa_target_dim], projector output (None without REPA)


class RMSNorm(nn.Module):
    """RMSNorm with statistics in float32, cast back to the input dtype *before* the weight
    (docs/method.md §4.4; quirk 6 of §9.2)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm without a weight is the release's x·rsqrt(mean(x²) + eps) in one call (bit-identical in fp32,
        # tests/test_lightningdit.py); the weight stays outside so that, under bf16, the normalised value is rounded
        # to the input dtype before it is scaled, as the release does (quirk 6 of docs/method.md §9.2).
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


def block_norm(dim: int, use_rmsnorm: bool) -> nn.Module:
    return RMSNorm(dim) if use_rmsnorm else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


def modulate(x: torch.Tensor, shift: Optional[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x·(1 + scale) + shift, broadcast over tokens; no shift with ``wo_shift``
    (docs/method.md §4.4)."""
    x = x * (1 + scale.unsqueeze(1))
    return x if shift is None else x + shift.unsqueeze(1)


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table [grid², dim] in float64: first half encodes the column, second half the row,
    sin before cos in each half (DiT/MAE convention, docs/method.md §4.3)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, …) -> (−x1, x0, −x3, x2, …): each interleaved RoPE pair turned by 90°."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


class RotaryEmbedding2D(nn.Module):
    """EVA-02 style 2-D RoPE (docs/method.md §4.5): interleaved pairs, first half of each head rotated by the row index,
    second half by the column index, ω_j = 10000^(-2j/d) with d = head_dim/2. The tables are persistent buffers because
    the released checkpoints contain them (``feat_rope.freqs_cos``/``freqs_sin``)."""

    def __init__(self, head_dim: int, grid: int) -> None:
        super().__init__()
        axis_dim = head_dim // 2
        freqs = 1.0 / 10000 ** (torch.arange(0, axis_dim, 2)[: axis_dim // 2].float() / axis_dim)
        angles = torch.arange(grid).float()[:, None] * freqs  # [grid, d/2]
        angles = angles.repeat_interleave(2, dim=-1)  # [grid, d]: each frequency twice (adjacent pairs)
        row = angles[:, None, :].expand(grid, grid, axis_dim)
        col = angles[None, :, :].expand(grid, grid, axis_dim)
        table = torch.cat([row, col], dim=-1).reshape(grid * grid, head_dim)
        self.register_buffer("freqs_cos", table.cos())
        self.register_buffer("freqs_sin", table.sin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., T, head_dim] rotated pair by pair: (x0, x1)·cos + (−x1, x0)·sin."""
        return x * self.freqs_cos + rotate_pairs(x) * self.freqs_sin


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, use_qknorm: bool, use_rmsnorm: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        if not use_qknorm:
            self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        elif use_rmsnorm:
            # One weight of length head_dim shared by all heads (quirk 6).
            self.q_norm, self.k_norm = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        else:
            self.q_norm, self.k_norm = nn.LayerNorm(self.head_dim), nn.LayerNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Optional[RotaryEmbedding2D]) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # qkv features are [q of all heads | k | v], head h at slice [h*hd, (h+1)*hd) of each.
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, hd]
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class SwiGLU(nn.Module):
    """One fused ``w12``: SiLU(first half) · second half, then ``w3`` (quirk 8)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class GeluMlp(nn.Module):
    """timm ``Mlp`` layout (``fc1``/``fc2``) with tanh-GELU, used when SwiGLU is off."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class LightningDiTBlock(nn.Module):
    """adaLN-Zero block; modulation chunks (shift, scale, gate) for attention, then for the MLP
    (docs/method.md §4.4)."""

    def __init__(self, args: LightningDiTArgs) -> None:
        super().__init__()
        dim = args.hidden_size
        self.norm1 = block_norm(dim, args.use_rmsnorm)
        self.norm2 = block_norm(dim, args.use_rmsnorm)
        self.attn = Attention(dim, args.num_heads, args.use_qknorm, args.use_rmsnorm)
        self.mlp = SwiGLU(dim, args.mlp_hidden) if args.use_swiglu else GeluMlp(dim, args.mlp_hidden)
        self.wo_shift = args.wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (4 if args.wo_shift else 6) * dim))
        self.fused = True  # set through LightningDiT.fused

    def modulation(self, c: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        """(shift, scale, gate) for attention, then for the MLP, each [B, D]; the shifts are None with wo_shift."""
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            return None, scale_msa, gate_msa, None, scale_mlp, gate_mlp
        return self.adaLN_modulation(c).chunk(6, dim=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: Optional[RotaryEmbedding2D]) -> torch.Tensor:
        if self.fused:
            return fused.block_forward(self, x, c, rope)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, args: LightningDiTArgs) -> None:
        super().__init__()
        dim = args.hidden_size
        self.norm_final = block_norm(dim, args.use_rmsnorm)
        self.linear = nn.Linear(dim, args.patch_size**2 * args.out_chans)
        # The final layer always has shift and scale, also with wo_shift.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.fused = True  # set through LightningDiT.fused

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return fused.final_layer_forward(self, x, c)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class TimestepEmbedder(nn.Module):
    """256 sinusoidal features of the raw t, [cos | sin] (cos first, max period 10000), then a 2-layer MLP."""

    frequencies = 256

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(self.frequencies, width), nn.SiLU(), nn.Linear(width, width))

    @classmethod
    def sinusoid(cls, t: torch.Tensor) -> torch.Tensor:
        half = cls.frequencies // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        angles = t[:, None].float() * freqs[None]
        return torch.cat([angles.cos(), angles.sin()], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = self.sinusoid(t)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding table; with class dropout > 0 it has a null row at index ``num_classes``."""

    def __init__(self, num_classes: int, dim: int, has_null: bool) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(has_null), dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class LightningDiT(nn.Module):
    """LightningDiT with SFD's semantic-first dual time embedding and an optional REPA projector."""

    def __init__(self, args: LightningDiTArgs, fused: bool = True) -> None:
        super().__init__()
        self.args = args
        dim = args.hidden_size
        self.in_chans = args.in_chans
        self.num_classes = args.num_classes
        self.x_embedder = PatchEmbed(args.in_chans, dim, args.patch_size)
        if args.semantic_first:
            self.t_embedder_sem = TimestepEmbedder(dim // 2)
            self.t_embedder_tex = TimestepEmbedder(dim // 2)
        else:
            self.t_embedder = TimestepEmbedder(dim)
        self.y_embedder = LabelEmbedder(args.num_classes, dim, has_null=args.class_dropout_prob > 0)
        grid = args.input_size // args.patch_size
        # Fixed table kept as a (frozen) parameter because the checkpoints store it under `pos_embed`.
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, dim), requires_grad=False)
        self.feat_rope = RotaryEmbedding2D(args.head_dim, grid) if args.use_rope else None
        self.blocks = nn.ModuleList(LightningDiTBlock(args) for _ in range(args.depth))
        self.final_layer = FinalLayer(args)
        if args.repa_target_dim is not None:
            width = args.repa_projector_dim
            self.repa_projector = nn.Sequential(
                nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                nn.Linear(width, args.repa_target_dim),
            )
        else:
            self.repa_projector = None
        self.fused = fused
        self.initialize_weights()

    @property
    def fused(self) -> bool:
        """Whether the blocks and the final layer run ``sfd.fused``'s CPU-eager variants (the default) instead of
        this file's reference path. Not part of the state dict; may be switched at any time."""
        return self.final_layer.fused

    @fused.setter
    def fused(self, enabled: bool) -> None:
        for module in (*self.blocks, self.final_layer):
            module.fused = enabled

    @property
    def null_label(self) -> int:
        """Label index of the unconditional embedding (requires class dropout > 0 at construction)."""
        if self.args.class_dropout_prob <= 0:
            raise ValueError("model.class_dropout_prob is 0, so the label table has no null row for guidance")
        return self.args.num_classes

    def initialize_weights(self) -> None:
        """The release's initialisation (docs/method.md §4.6): Xavier linears, zeroed adaLN and output layers."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        grid = self.args.input_size // self.args.patch_size
        self.pos_embed.data.copy_(sincos_pos_embed(self.args.hidden_size, grid).float().unsqueeze(0))
        proj = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        embedders = [self.t_embedder_sem, self.t_embedder_tex] if self.args.semantic_first else [self.t_embedder]
        for embedder in embedders:
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        zeroed = [block.adaLN_modulation[-1] for block in self.blocks]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def embed_time(self, t_tex: torch.Tensor, t_sem: torch.Tensor) -> torch.Tensor:
        if self.args.semantic_first:
            # Semantic half first although the call order is (t_tex, t_sem): quirk 2 of docs/method.md §9.2.
            return torch.cat([self.t_embedder_sem(t_sem), self.t_embedder_tex(t_tex)], dim=1)
        return self.t_embedder(t_tex)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, T, p·p·C] with c fastest -> [B, C, H, W] in row-major token order."""
        p, chans = self.args.patch_size, self.args.out_chans
        side = self.args.input_size // p
        x = tokens.reshape(tokens.shape[0], side, side, p, p, chans)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(tokens.shape[0], chans, side * p, side * p)

    def forward(
        self, x: torch.Tensor, t_tex: torch.Tensor, t_sem: torch.Tensor, y: torch.Tensor, *, repa: bool = True
    ) -> ModelOutput:
        """Velocity for latents ``x`` at times (t_tex, t_sem) [B] and labels ``y`` [B] (``null_label`` =
        unconditional). ``repa=False`` skips the projector (samplers do not need it)."""
        h = self.x_embedder(x) + self.pos_embed
        c = self.embed_time(t_tex, t_sem) + self.y_embedder(y)
        repa_out = None
        for depth, block in enumerate(self.blocks, start=1):
            if self.args.use_checkpoint and self.training:
                h = checkpoint(block, h, c, self.feat_rope, use_reentrant=False)
            else:
                h = block(h, c, self.feat_rope)
            if repa and self.repa_projector is not None and depth == self.args.repa_feat_depth:
                repa_out = self.repa_projector(h)
        velocity = self.unpatchify(self.final_layer(h, c))
        if self.args.learn_sigma:
            velocity = velocity[:, : self.args.in_chans]
        return ModelOutput(velocity=velocity, repa=repa_out)


class PatchEmbed(nn.Module):
    """timm ``PatchEmbed`` layout: a strided conv named ``proj``, tokens flattened row-major."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)
