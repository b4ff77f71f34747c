#!/usr/bin/env python
"""Reconstruction quality of the tokenizers on an image folder: texture-VAE PSNR/SSIM (through the posterior mean
and the release's uint8 quantisation) and, with a SemVAE, the MSE and per-token cosine of reconstructed DINOv2
features (posterior mean; the diffusion-latent preprocessing). Prints a table and optionally writes JSON.

    python tools/eval_tokenizers.py --images val/ --texture-vae sdvae_f16d32.yaml \\
        --semvae semantic_ae_final.pt --dino-weights dinov2_vitb14_reg4_pretrain.pth --limit 500
"""

from __future__ import annotations

import argparse
import sys

import torch
from tqdm import tqdm

from sfd.cli import make_parser
from sfd.data.images import list_image_folder, load_image
from sfd.device import DeviceError, default_device, float64_device
from sfd.files import write_json_atomic
from sfd.tokenizers.dinov2 import TIMM_NAMES, build_dinov2, extraction_preprocess, tiny_dinov2
from sfd.tokenizers.evaluation import feature_errors, psnr, ssim


def parse_args(argv=None) -> argparse.Namespace:
    parser = make_parser(*__doc__.split("\n\n", 1))
    parser.add_argument("--images", required=True, help="image folder with one subfolder per class")
    parser.add_argument("--texture-vae", help="texture VAE YAML")
    parser.add_argument("--texture-ckpt", help="checkpoint overriding the YAML's ckpt_path")
    parser.add_argument("--semvae", help="SemVAE checkpoint (needs DINOv2)")
    parser.add_argument("--dino-model", default="dinov2_vitb14_reg", choices=[*TIMM_NAMES, "tiny-random"])
    parser.add_argument("--dino-weights", help="local DINOv2 checkpoint")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--device", help="torch device, e.g. cuda, cuda:1, npu, mps, cpu (default: $SFD_DEVICE, "
                                         "else the machine's accelerator, else cpu)")
    args = parser.parse_args(argv)
    if not (args.texture_vae or args.semvae):
        parser.error("give --texture-vae and/or --semvae")
    if args.semvae and args.dino_model != "tiny-random" and not args.dino_weights:
        parser.error("--semvae needs --dino-weights (nothing is downloaded)")
    return args


@torch.no_grad()
def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = default_device(args.device)
        items = list_image_folder(args.images)[0][: args.limit]
        vae = semvae = dino = None
        if args.texture_vae:
            from sfd.tokenizers.texture_vae import load_texture_vae

            vae = load_texture_vae(args.texture_vae, args.texture_ckpt, device=device)
        if args.semvae:
            from sfd.tokenizers.semvae import load_semvae

            semvae = load_semvae(args.semvae, device=device)
            dino = tiny_dinov2().to(device) if args.dino_model == "tiny-random" else build_dinov2(
                args.dino_model, args.dino_weights).to(device)
    except (DeviceError, FileNotFoundError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    scores: dict[str, list[torch.Tensor]] = {"psnr": [], "ssim": [], "feature_mse": [], "feature_cosine": []}
    for start in tqdm(range(0, len(items), args.batch_size), desc="evaluating", unit="batch"):
        batch = items[start: start + args.batch_size]
        images = torch.stack([load_image(item.path, args.image_size) for item in batch]).to(device)
        if vae is not None:
            original = vae.to_uint8(images).permute(0, 3, 1, 2).float()
            recon = vae.to_uint8(vae.decode(vae.encode(images).mode())).permute(0, 3, 1, 2).float()
            original, recon = original.to(float64_device(device)), recon.to(float64_device(device))  # in float64
            scores["psnr"].append(psnr(original, recon).cpu())
            scores["ssim"].append(ssim(original, recon).cpu())
        if semvae is not None:
            tokens = dino(extraction_preprocess(images))
            mse, cosine = feature_errors(tokens, semvae.decode(semvae.encode(tokens, sample=False)))
            scores["feature_mse"].append(mse.cpu())
            scores["feature_cosine"].append(cosine.cpu())
    results = {name: torch.cat(values).mean().item() for name, values in scores.items() if values}
    results["images"] = len(items)
    print("| metric | value |\n|---|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |")
    if args.json:
        write_json_atomic(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
