"""Model FLOPs and MFU (sfd/throughput.py)."""

from __future__ import annotations

import pytest

from sfd.config import load_config
from sfd.throughput import forward_flops_per_image, model_flop_utilisation, peak_flops, training_flops_per_image


def test_xl_flops_match_dit_xl2_at_the_same_token_count():
    # LightningDiT-XL/1 on 16×16 latents has DiT-XL/2's width, depth and 256 tokens: the DiT paper's 118.6 GFLOPs
    # (multiply-adds, as fvcore counts them) are 237 GFLOPs of 2 per multiply-add; SwiGLU keeps the MLP's FLOPs and
    # REPA's projector adds ~1 %.
    config = load_config("configs/sfd/lightningdit_xl/train.yaml")
    forward = forward_flops_per_image(config)
    assert forward == pytest.approx(2 * 118.6e9, rel=0.05)
    assert training_flops_per_image(config) == 3 * forward


def test_peaks_and_utilisation(monkeypatch):
    monkeypatch.delenv("SFD_PEAK_TFLOPS", raising=False)
    assert peak_flops("NVIDIA H200", "bf16") == 989e12 and peak_flops("NVIDIA A100-SXM4-80GB", "tf32") == 156e12
    assert peak_flops("cpu", "fp32") is None and model_flop_utilisation(100.0, 1e9, None) is None
    assert model_flop_utilisation(1000.0, 7.2e11, 989e12) == pytest.approx(0.728, abs=1e-3)
    monkeypatch.setenv("SFD_PEAK_TFLOPS", "2.5")
    assert peak_flops("cpu", "fp32") == 2.5e12
