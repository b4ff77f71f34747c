"""The 2015-12-05 TensorFlow Inception-v3 (the FID network of ADM's evaluator) in PyTorch, with its feed path.

docs/evaluator.md §4: uint8 RGB images of any size → TF1 bilinear resize to 299×299 (legacy coordinates, no
antialiasing) → (x − 128)/128 → the TF-patched Inception-v3 → three taps:

* ``pool`` — ``pool_3:0`` [N, 2048] (FID, Precision, Recall);
* ``spatial`` — ``mixed_6/conv:0`` = ``Mixed_6d.branch1x1`` after BN and ReLU, first 7 channels, flattened in TF's
  (h, w, c) order → [N, 2023] (sFID, docs/evaluator.md §6);
* ``logits`` — pool_3 · W_fcᵀ **without** the bias [N, 1008] (the IS softmax input, docs/evaluator.md §4.3).

The module and parameter names are torchvision's, i.e. those of torch-fidelity's ``inception-v3-compat`` extractor
and pytorch-fid (docs/evaluator.md §9.2), so the standard weights file ``weights-inception-2015-12-05-6726825d.pth``
loads strictly. Weights are read only from a local path; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sfd.checkpoint import CheckpointError, explain_mismatch, extract_state_dict, read_file
from sfd.files import file_sha256, local_file

INPUT_SIZE = 299  # the graph's ResizeBilinear target (docs/evaluator.md §4.1)
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7] (docs/evaluator.md §4.3)
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
# docs/evaluator.md §9.2: SHA-256 of the torch-fidelity / pytorch-fid port of the 2015-12-05 graph (95,628,359 bytes).
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHTS_URLS = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
)
WEIGHTS_ENV = "INCEPTION_WEIGHTS"


@dataclass
class InceptionFeatures:
    """The three taps of one batch, float32. Any feature network used by the evaluator returns this."""

    pool: torch.Tensor  # [N, 2048] pool_3
    spatial: torch.Tensor  # [N, 2023] mixed_6/conv[..., :7] in (h, w, c) order
    logits: torch.Tensor  # [N, 1008] pool_3 · W_fcᵀ, no bias


def check_images(images: torch.Tensor, network: str = "Inception") -> None:
    """Reject anything but uint8 RGB images [N, 3, H, W] (a float or NHWC batch would be silently mis-read)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{network} input: expected uint8 images [N, 3, H, W], got {images.dtype} "
                         f"{list(images.shape)} (convert NHWC uint8 with .permute(0, 3, 1, 2))")


def _tf1_axis(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights along one axis, TF1 ``ResizeBilinear`` legacy mode (docs/evaluator.md §4.1): src =
    j·(n_in/n_out) in float32, lo = floor(src), hi = min(lo + 1, n_in − 1), w = src − lo."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    src = torch.arange(n_out, dtype=torch.float32, device=device) * scale.to(device)
    lo = src.floor()
    weight = src - lo
    lo_index = lo.long()
    return lo_index, (lo_index + 1).clamp(max=n_in - 1), weight


def tf1_resize_bilinear(images: torch.Tensor, size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> torch.Tensor:
    """Bilinear resize of float images [N, C, H, W] exactly as TF1 ``ResizeBilinear`` with align_corners=False and
    no antialiasing (docs/evaluator.md §4.1): interpolate along x first, then along y. Differs from PyTorch's half-pixel
    ``interpolate``; [0, 100] → 4 gives [0, 50, 100, 100]."""
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"tf1_resize_bilinear: expected float images [N, C, H, W], got {images.dtype} "
                         f"{list(images.shape)}")
    y_lo, y_hi, wy = _tf1_axis(images.shape[2], size[0], images.device)
    x_lo, x_hi, wx = _tf1_axis(images.shape[3], size[1], images.device)
    wx, wy = wx.to(images.dtype), wy.to(images.dtype)
    rows_lo, rows_hi = images.index_select(2, y_lo), images.index_select(2, y_hi)
    top_left, top_right = rows_lo.index_select(3, x_lo), rows_lo.index_select(3, x_hi)
    bottom_left, bottom_right = rows_hi.index_select(3, x_lo), rows_hi.index_select(3, x_hi)
    top = top_left + (top_right - top_left) * wx
    bottom = bottom_left + (bottom_right - bottom_left) * wx
    return top + (bottom - top) * wy[:, None]


def spatial_features(tap: torch.Tensor, channels: int = SPATIAL_CHANNELS) -> torch.Tensor:
    """sFID vector from the NCHW ``mixed_6/conv`` output (docs/evaluator.md §6): first ``channels`` channels, flattened
    in TF's NHWC order, i.e. element (h·W + w)·channels + c. NCHW flattening gives a vector incompatible with ADM's
    ``mu_s``."""
    return tap[:, :channels].permute(0, 2, 3, 1).reshape(tap.shape[0], -1)


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    """TF's 3×3/1 SAME average pool excludes the padded zeros from the mean (docs/evaluator.md §4.2 pooling quirks)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class BasicConv2d(nn.Module):
    """conv (no bias) → BatchNorm (eps 1e-3, TF's value) → ReLU: the graph's only conv unit (docs/evaluator.md §4.2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    """35×35 block (Mixed_5b/5c/5d)."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """35→17 reduction block (Mixed_6a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (Mixed_6b..6e)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor, branch1x1: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``branch1x1`` may be passed in when the caller already computed it (the sFID tap of Mixed_6d)."""
        branch1x1 = self.branch1x1(x) if branch1x1 is None else branch1x1
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """17→8 reduction block (Mixed_7a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8×8 block with expanded filter banks (Mixed_7b, 7c). ``pool``: TF's Mixed_7b averages (padding excluded),
    Mixed_7c max-pools (docs/evaluator.md §4.2) — the 2015 graph's quirk that torchvision's block does not have."""

    def __init__(self, in_channels: int, pool: Literal["avg", "max"]):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = _avg_pool_tf(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """The FID Inception-v3 (docs/evaluator.md §4.2): 94 conv units, global average pool to pool_3, a 2048 → 1008
    classifier.

    ``forward`` takes uint8 images [N, 3, H, W] of any size and returns :class:`InceptionFeatures`. Keep it in
    float32 (docs/evaluator.md §9.3); build with random weights for tests, or with :func:`load_inception` for real
    numbers.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        check_images(images)
        x = tf1_resize_bilinear(images.float())
        x = (x - 128) / 128  # the graph multiplies by 0.0078125 = 1/128 exactly (docs/evaluator.md §4.1)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        tap = self.Mixed_6d.branch1x1(x)  # TF's mixed_6/conv:0 (third 17×17 block, 1×1 branch, post-ReLU)
        x = self.Mixed_6d(x, branch1x1=tap)
        for block in (self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)  # pool_3: the 8×8 average
        return InceptionFeatures(pool=pool, spatial=spatial_features(tap), logits=pool @ self.fc.weight.T)


class InceptionWeightsError(CheckpointError):
    """The Inception weights are missing, not the known file, or do not fit; the message says what to do."""


def _missing_weights_message(detail: str) -> str:
    return (f"Inception weights not found ({detail}): pass --inception-weights PATH or set {WEIGHTS_ENV} to a local "
            f"copy of {WEIGHTS_FILE} (sha256 {WEIGHTS_SHA256}), downloaded by you from {WEIGHTS_URLS[0]} "
            f"or {WEIGHTS_URLS[1]}; this project never downloads it")


def resolve_weights_path(path: Optional[str | Path] = None) -> Path:
    """The weights file: the explicit ``path``, else ``$INCEPTION_WEIGHTS`` (docs/evaluator.md §9.2 offline rule); must
    exist."""
    return local_file(path, WEIGHTS_ENV, lambda detail: InceptionWeightsError(_missing_weights_message(detail)))


def load_inception(path: Optional[str | Path] = None, allowed_sha256: Iterable[str] = (WEIGHTS_SHA256,),
                   device: str | torch.device = "cpu") -> tuple[InceptionV3, str]:
    """Build :class:`InceptionV3` from a local weights file whose SHA-256 is in ``allowed_sha256``
    (docs/evaluator.md §9.2: pin the hash, verify on every load) and return it in eval mode with the file's hash (the
    network's identity)."""
    chosen = resolve_weights_path(path)
    digest = file_sha256(chosen)
    allowed = {h.lower() for h in allowed_sha256}
    if digest not in allowed:
        raise InceptionWeightsError(f"{chosen}: sha256 {digest} is not an allowed Inception weights hash "
                                    f"({', '.join(sorted(allowed))}); expected {WEIGHTS_FILE} from {WEIGHTS_URLS[0]}")
    model = InceptionV3()
    state = extract_state_dict(read_file(chosen), chosen)
    # Converted files may omit BatchNorm's num_batches_tracked (472 vs 566 tensors, docs/evaluator.md §9.2); it is
    # unused in eval.
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    problems = explain_mismatch(model, state)
    if problems:
        raise InceptionWeightsError(f"{chosen}: does not fit the FID Inception-v3: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False), digest
