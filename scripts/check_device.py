#!/usr/bin/env python
"""Check the SFD core on an accelerator against the official goldens (tests/data), in fp32, bf16 and compiled.

The CPU test suite pins float32 CPU numerics; this script is for a GPU machine: it reports, for each precision
mode, the error of the forward pass, CFG, AutoGuidance, the training loss and the Euler/dopri5 samplers relative to
the official tensors (max|Δ| / max|golden|), and the dopri5 NFE. Reduced precision is expected to deviate; the
table shows by how much.

    python scripts/check_device.py --device cuda     (or npu, xpu, mps; default: $SFD_DEVICE, else the accelerator)
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from safetensors.torch import load_file

import sfd
from sfd.device import Accelerator, compile_module, default_device, set_matmul_precision
from sfd.guidance import Guidance, guided_velocity
from sfd.samplers import sample
from sfd.schedule import TimeSplit

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def rel_error(ours: torch.Tensor, golden: torch.Tensor) -> float:
    golden = golden.float().cpu()
    return ((ours.float().cpu() - golden).abs().max() / golden.abs().max()).item()


def golden(name: str, device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in load_file(str(DATA / f"{name}.safetensors")).items()}


def check(device: torch.device, dtype: torch.dtype, compile_model: bool) -> dict[str, str]:
    """Errors of every golden case for one precision mode."""
    model, config = sfd.load_model(DATA / "sfd_tiny.yaml", device=device)
    guide, _ = sfd.load_model(DATA / "sfd_tiny_guide.yaml", device=device)
    if compile_model:
        accelerator = Accelerator.of(device)
        model, guide = compile_module(model, accelerator), compile_module(guide, accelerator)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    split = TimeSplit.from_config(config)  # Δt 0.3, 16 semantic channels
    results = {}
    with torch.no_grad(), autocast:
        case = golden("forward_sfd_tiny", device)
        out = model(case["x"], case["t_tex"], case["t_sem"], case["y"])
        results["forward"] = rel_error(out.velocity, case["out"])
        results["repa"] = rel_error(out.repa, case["repa_proj"])
        results["cfg"] = rel_error(guided_velocity(model, case["x"], case["t_tex"], case["t_sem"], case["y"],
                                                   Guidance(1.5, 1.5), 16), case["cfg_out"][:2])
        results["autoguidance"] = rel_error(guided_velocity(model, case["x"], case["t_tex"], case["t_sem"],
                                                            case["y"], Guidance(1.5, 1.5, guide=guide), 16),
                                            case["ag_out"])
        euler = golden("sample_euler_sfd_tiny", device)
        result = sample(model, euler["z"], euler["y"], split, method="euler", num_steps=20)
        results["euler (sample - z)"] = rel_error(result.x - euler["z"], euler["sample"] - euler["z"])
        dopri = golden("sample_dopri5_cfg_sfd_tiny", device)
        result = sample(model, dopri["z"][:2], dopri["y"][:2], split, method="dopri5", guidance=Guidance(1.5, 1.5))
        results["dopri5+cfg (sample - z)"] = rel_error(result.x - dopri["z"][:2], dopri["sample"][:2] - dopri["z"][:2])
        results["dopri5 NFE (golden 26)"] = result.nfe
    case = golden("loss_sfd_tiny", device)
    trainable = copy.deepcopy(model).train()
    with autocast:
        terms = sfd.FlowMatchingLoss.from_config(config, class_dropout_prob=0.0)(
            trainable, case["x1"], case["y"], case["feature_dino"], t=case["t"], noise=case["x0"])
    results["loss mse"] = rel_error(terms.mse, case["loss"])
    results["loss repa"] = rel_error(terms.repa, case["repa_loss"])
    return {key: value if isinstance(value, int) else f"{value:.2e}" for key, value in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", help="torch device (default: $SFD_DEVICE, else the machine's accelerator, "
                                         "else cpu)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = parser.parse_args()
    device = default_device(args.device)
    # Golden numerics are full fp32; TF32 (HF32 on NPUs) would hide real differences behind its own rounding.
    set_matmul_precision("fp32")
    modes = {"fp32": (torch.float32, False), "bf16": (torch.bfloat16, False)}
    if not args.no_compile:
        modes["bf16+compile"] = (torch.bfloat16, True)
    columns = {name: check(device, dtype, compiled) for name, (dtype, compiled) in modes.items()}
    name = Accelerator.of(device).device_name(device)
    print(f"# {name} | torch {torch.__version__} | error = max|ours - golden| / max|golden|\n")
    print("| case | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for key in next(iter(columns.values())):
        print(f"| {key} | " + " | ".join(str(column[key]) for column in columns.values()) + " |")


if __name__ == "__main__":
    main()
