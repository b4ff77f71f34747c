"""The CPU-eager fast path of LightningDiT's blocks, used while ``LightningDiT.fused`` is on (the default).

``sfd/lightningdit.py`` writes each block once, as the reference path. The functions here are drop-in replacements for
the forward of a block (:func:`block_forward`) and of the final layer (:func:`final_layer_forward`): the same
computation in fewer passes over memory, which is what bounds eager execution on a CPU at the small widths the
studies train (``torch.compile`` fuses such element-wise work on either path by itself). Each variant
falls back to the reference module where its trick does not apply (another norm, another dtype), and each equals the
reference path within rounding, values and gradients (tests/test_lightningdit.py switches ``LightningDiT.fused`` and
compares; docs/goldens.md §5 bounds the rounding).

The tricks:

* modulation and gated residuals as one ``torch.addcmul`` each (:func:`add_product`);
* a float32 RMSNorm's weight folded into the per-sample modulation scale, its mean square from one reading pass
  (:func:`norm_modulate`);
* q and k normalised and rotated together, RoPE as one complex multiplication, the q/k norm weights' gradient summed
  over contiguous rows first (:func:`normalize_rotate`, :class:`ScaleQK`);
* without autograd, the SwiGLU product written over SiLU's output (:func:`mlp`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# sfd.lightningdit imports this module for its blocks' forward; only its classes are read from it here, at call time.
from sfd import lightningdit


def block_forward(block: lightningdit.LightningDiTBlock, x: torch.Tensor, c: torch.Tensor,
                  rope: Optional[lightningdit.RotaryEmbedding2D]) -> torch.Tensor:
    """``LightningDiTBlock.forward`` built from the variants below."""
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.modulation(c)
    x = gated_residual(x, gate_msa, attention(block.attn, norm_modulate(block.norm1, x, shift_msa, scale_msa), rope))
    return gated_residual(x, gate_mlp, mlp(block.mlp, norm_modulate(block.norm2, x, shift_mlp, scale_mlp)))


def final_layer_forward(layer: lightningdit.FinalLayer, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``FinalLayer.forward`` with :func:`norm_modulate`."""
    shift, scale = layer.adaLN_modulation(c).chunk(2, dim=1)
    return layer.linear(norm_modulate(layer.norm_final, x, shift, scale))


def add_product(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """base + a·b in one pass over the tensors (``torch.addcmul``) instead of two (a product, then a sum).

    Where the hardware contracts this into a fused multiply-add (AVX-512 CPUs, CUDA) the result is rounded once instead
    of twice: within 1 ulp of the release's two-step formula, far inside the golden tolerances (docs/goldens.md §5).
    When a·b would be formed in a narrower dtype than ``base`` (bf16 autocast: a bf16 gate times a bf16 branch output
    added to the fp32 residual stream) the release rounds the product to that dtype first, while addcmul would keep it
    in the wider one; the two-step formula is kept there so that bf16 training stays the release's arithmetic
    (docs/method.md §4.4)."""
    product_dtype = torch.promote_types(a.dtype, b.dtype)
    if torch.promote_types(product_dtype, base.dtype) != product_dtype:
        return base + a * b
    return torch.addcmul(base, a, b)


def modulate(x: torch.Tensor, shift: Optional[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
    """:func:`sfd.lightningdit.modulate` with the shift added by :func:`add_product`."""
    if shift is None:
        return x * (1 + scale.unsqueeze(1))
    return add_product(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """The adaLN-Zero residual x + gate·update, the gate [B, D] broadcast over tokens, by :func:`add_product`."""
    return add_product(x, gate.unsqueeze(1), update)


def inverse_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """1/sqrt(mean(x²) + eps) over the last dimension, from one reading pass (``vector_norm``) instead of squaring
    into a new tensor and summing it (the same value within rounding: docs/goldens.md §5)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.rsqrt(norm.square() / x.shape[-1] + eps)


def norm_modulate(norm: nn.Module, x: torch.Tensor, shift: Optional[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
    """modulate(norm(x), shift, scale). For float32 RMSNorm in three passes instead of six: the norm's weight is
    folded into the per-sample scale (w·(1 + scale) is [B, D], not [B, T, D]) and the mean square comes from one
    reading pass (:func:`inverse_rms`). Other norms and dtypes keep the release's order of roundings
    (docs/method.md §4.4)."""
    if not isinstance(norm, lightningdit.RMSNorm) or x.dtype != torch.float32:
        return modulate(norm(x), shift, scale)
    normalized = x * inverse_rms(x, norm.eps)
    factor = norm.weight * (1 + scale.unsqueeze(1))
    return normalized * factor if shift is None else torch.addcmul(shift.unsqueeze(1), normalized, factor)


class ScaleQK(torch.autograd.Function):
    """x·w for x [B, T, 2, H, hd] and the q/k norm weights w [2, 1, hd]. Autograd would reduce w's gradient over the
    dims (B, T, H) in one strided pass, the slowest reduction of a training step; here it is summed over the
    contiguous B·T rows first, then over the heads (the same sum in another order)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return x * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        x, weight = ctx.saved_tensors
        grad_x = grad * weight if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            rows = (grad * x).reshape(-1, *x.shape[-3:])  # [B·T, 2, H, hd]
            grad_weight = rows.sum(0).sum(1, keepdim=True)
        return grad_x, grad_weight


def complex_rotation(rope: lightningdit.RotaryEmbedding2D) -> torch.Tensor:
    """The RoPE rotation as one complex factor per pair, cos + i·sin ([T, hd/2] complex64; both members of a pair
    share an angle): rotating (x0, x1) is multiplying x0 + i·x1 by it. Made per call from the tables (a few KB)
    rather than kept as a buffer, so that no complex tensor is among the buffers DDP broadcasts or ``.to(dtype)``
    converts."""
    return torch.complex(rope.freqs_cos[:, 0::2].float(), rope.freqs_sin[:, 0::2].float())


def normalize_rotate(attn: lightningdit.Attention, qk: torch.Tensor,
                     rope: lightningdit.RotaryEmbedding2D) -> torch.Tensor:
    """rope(q_norm(q)) and rope(k_norm(k)) for q and k together ([B, T, 2, H, hd]) in three passes (and one reading
    pass for the mean square) instead of sixteen: both RMSNorm weights are applied at once, and RoPE is one complex
    multiplication, (x0 + i·x1)·(cos + i·sin) = (x0·cos − x1·sin) + i·(x0·sin + x1·cos), the release's formula
    without building the rotated copy."""
    weight = torch.stack([attn.q_norm.weight, attn.k_norm.weight])[:, None, :]  # [2, 1, hd]
    weighted = ScaleQK.apply(qk * inverse_rms(qk, attn.q_norm.eps), weight)
    rotated = torch.view_as_complex(weighted.unflatten(-1, (-1, 2))) * complex_rotation(rope)[:, None, None, :]
    return torch.view_as_real(rotated).flatten(-2)


def attention(attn: lightningdit.Attention, x: torch.Tensor,
              rope: Optional[lightningdit.RotaryEmbedding2D]) -> torch.Tensor:
    """``Attention.forward`` with :func:`normalize_rotate` where it applies (float32, RMSNorm q/k norms, RoPE)."""
    if rope is None or not isinstance(attn.q_norm, lightningdit.RMSNorm) or x.dtype != torch.float32:
        return attn(x, rope)
    batch, tokens, dim = x.shape
    # split/unbind rather than indexing: their gradients are concatenations, where indexing would zero-fill a
    # [B, T, 3, H, hd] gradient and copy each slice into it.
    qk, v = attn.qkv(x).unflatten(-1, (3, attn.num_heads, attn.head_dim)).split([2, 1], dim=2)  # [B, T, ·, H, hd]
    q, k = (part.transpose(1, 2) for part in normalize_rotate(attn, qk, rope).unbind(2))
    out = F.scaled_dot_product_attention(q, k, v.squeeze(2).transpose(1, 2))
    return attn.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


def mlp(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's MLP; a SwiGLU without autograd overwrites SiLU's output with the product instead of allocating a
    third [B, T, hidden] tensor."""
    if not isinstance(module, lightningdit.SwiGLU) or torch.is_grad_enabled():
        return module(x)
    gate, value = module.w12(x).chunk(2, dim=-1)
    return module.w3(F.silu(gate).mul_(value))
