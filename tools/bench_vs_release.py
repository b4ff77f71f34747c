#!/usr/bin/env python
"""This project and the official SFD release side by side, in one process, on identical weights.

PATH is a local checkout of the official code (github.com/yuemingPAN/SFD; it needs timm and einops). Both networks
are built from one config (default: the AutoGuidance B/1 training config), the release's is given this project's
weights (strictly: the state-dict keys are the same), and every weight is perturbed from its initialisation so that
no output is trivially zero. Before any timing the outputs are compared (max|ours − release| / max|release|, the
measure of docs/goldens.md §5):

* forward: the eval-mode velocity (no REPA projector, as samplers call it);
* train: the train-mode velocity and REPA projection with labels kept, and every parameter's gradient of a fixed
  random projection of both;
* sample: the final latents of the three-phase ODE with Euler on the same grid and noise, unguided.

Then each path is timed with the two sides interleaved (their order alternating every repetition) and the table
reports the median time of each and the median of the per-repetition ratios (ours / release: below 1 is faster).
The train step is each side's training step as its trainer runs it: the release's ``Transport.training_losses``
summed as its train.py sums them, backward, its default AdamW and its train.py's EMA update; this project's step
object (``sfd.train.DiffusionStep``, the one the trainer drives: ``FlowMatchingLoss`` with per-row generators,
backward, AdamW fused where torch has the kernel, EMA). ``--reference-path`` times this project's network on its
reference path instead of the CPU-eager fused variants (``LightningDiT.fused``, sfd/fused.py).

Compilation: by default both sides run eagerly (the release's ``@torch.compile`` decorators are switched off with
``torch._dynamo.config.disable``). ``--compiled`` adds the compiled comparison: the release as shipped (its
decorated blocks, embedders and final layer) against this project's regional compilation
(``sfd.device.compile_module``), with the first call's time, compilation included, reported for each (inductor's
on-disk caches are switched off so that both compile cold), and the first forward of this project's network compiled
whole for comparison.

Example (run on an otherwise idle machine; two jobs at once make every ratio meaningless):
    git clone https://github.com/yuemingPAN/SFD ../SFD-release
    python tools/bench_vs_release.py --release ../SFD-release --compiled --json vs_release.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch._dynamo
import torch._inductor.config

from sfd.bench import elapsed_ms, markdown_table, perturb_weights, relative_error, write_json
from sfd.cli import add_overrides_argument, make_parser, parse_with_overrides
from sfd.config import SFDConfig, load_config, model_args
from sfd.device import Accelerator, compile_module
from sfd.samplers import SamplerOptions, sample
from sfd.schedule import TimeSplit
from sfd.train import DiffusionStep

CPU = torch.device("cpu")  # both sides run on the CPU, in one process

PATHS = ("forward", "train", "sample")
# Output agreement required before timing (docs/goldens.md §5: forward passes 1e-5, Euler samplers 1e-4); gradients
# accumulate more rounding than a forward, so they get the sampler bound.
TOLERANCES = {"forward": 1e-5, "train": 1e-5, "gradients": 1e-4, "sample": 1e-4}
RELEASE_FILES = ("models/lightningdit.py", "transport/__init__.py")


class ReleaseError(RuntimeError):
    """The release checkout is missing, incomplete or cannot be imported."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = make_parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--release", type=Path, required=True, metavar="PATH",
                        help="local checkout of the official SFD code (its models/ and transport/ are imported)")
    parser.add_argument("--config", default="configs/sfd/autoguidance_b/train.yaml",
                        help="config both networks are built from (default: %(default)s, LightningDiT-B/1)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="what to compare")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions per side (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side (default: %(default)s)")
    parser.add_argument("--sample-steps", type=int, default=8,
                        help="Euler grid points of the sample path (default: %(default)s)")
    parser.add_argument("--compiled", action="store_true",
                        help="also compare compiled: the release as shipped against sfd's regional compilation")
    parser.add_argument("--reference-path", action="store_true",
                        help="time sfd's reference path instead of its CPU-eager fused variants (LightningDiT.fused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    add_overrides_argument(parser)
    args = parse_with_overrides(parser, argv)
    for name in ("batch", "repeats", "sample_steps"):
        if getattr(args, name) < (2 if name == "sample_steps" else 1):
            parser.error(f"--{name.replace('_', '-')} must be at least {2 if name == 'sample_steps' else 1}")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


# -- the release --------------------------------------------------------------------------------------------------

@dataclass
class Release:
    models: object  # the release's models.lightningdit module
    transport: object  # the release's transport package


def import_release(path: Path) -> Release:
    """Import the release's network and transport modules from the checkout at ``path``."""
    missing = [name for name in RELEASE_FILES if not (path / name).is_file()]
    if missing:
        raise ReleaseError(f"{path}: not a checkout of the SFD release (missing {', '.join(missing)})")
    for name in [name for name in sys.modules if name.split(".")[0] in ("models", "transport")]:
        del sys.modules[name]  # another package of the same name must not answer for the release
    sys.path.insert(0, str(path.resolve()))
    try:
        return Release(importlib.import_module("models.lightningdit"), importlib.import_module("transport"))
    except ImportError as error:
        raise ReleaseError(f"{path}: importing the release failed ({error}); it needs timm and einops "
                           "(pip install timm einops)") from None
    finally:
        sys.path.remove(str(path.resolve()))


def release_network(release: Release, config: SFDConfig) -> torch.nn.Module:
    """The release's LightningDiT for ``config``, with the arguments its train.py passes."""
    model, args = config.model, model_args(config)
    return release.models.LightningDiT_models[model.model_type](
        input_size=args.input_size, class_dropout_prob=model.class_dropout_prob, num_classes=config.data.num_classes,
        use_qknorm=model.use_qknorm, use_swiglu=model.use_swiglu, use_rope=model.use_rope,
        use_rmsnorm=model.use_rmsnorm, wo_shift=model.wo_shift, in_channels=model.in_chans, use_checkpoint=False,
        use_repa=model.use_repa, repa_dino_version=model.repa_dino_version if model.use_repa else None,
        repa_depth=model.repa_feat_depth if model.use_repa else None, semantic_chans=model.semantic_chans,
        semfirst_delta_t=model.semfirst_delta_t)


def release_transport(release: Release, config: SFDConfig):
    """The release's Transport with the arguments its train.py passes."""
    transport, model = config.transport, config.model
    return release.transport.create_transport(
        transport.path_type, transport.prediction, transport.loss_weight, transport.train_eps, transport.sample_eps,
        use_cosine_loss=transport.use_cosine_loss, use_lognorm=transport.use_lognorm,
        semantic_weight=model.semantic_weight, semantic_chans=model.semantic_chans,
        semfirst_delta_t=model.semfirst_delta_t, repa_weight=model.repa_weight, repa_mode=model.repa_mode)


# -- inputs and agreement ------------------------------------------------------------------------------------------

@dataclass
class Inputs:
    x: torch.Tensor  # latents [B, C, H, W]
    tau: torch.Tensor  # global times [B]
    y: torch.Tensor  # labels [B]
    dino: Optional[torch.Tensor]  # REPA target map [B, D, h, w]


def make_inputs(config: SFDConfig, batch: int, seed: int) -> Inputs:
    args = model_args(config)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, args.in_chans, args.input_size, args.input_size, generator=generator)
    tau = torch.rand(batch, generator=generator) * TimeSplit.from_config(config).tau_max
    y = torch.randint(0, args.num_classes, (batch,), generator=generator)
    dino = None
    if args.repa_target_dim is not None:
        side = args.input_size // args.patch_size
        dino = torch.randn(batch, args.repa_target_dim, side, side, generator=generator)
    return Inputs(x, tau, y, dino)


@contextlib.contextmanager
def dynamo_disabled(disabled: bool):
    """Run the release's ``@torch.compile``-decorated functions eagerly while ``disabled``."""
    previous = torch._dynamo.config.disable
    torch._dynamo.config.disable = disabled
    try:
        yield
    finally:
        torch._dynamo.config.disable = previous


# -- the compared calls -------------------------------------------------------------------------------------------

@dataclass
class Side:
    name: str
    step: Callable[[], object]  # one timed call


class Pair:
    """Both networks with identical weights and everything each path needs."""

    def __init__(self, release: Release, config: SFDConfig, args: argparse.Namespace) -> None:
        torch.manual_seed(args.seed)
        self.config = config
        # This project's side is the trainer's step object (network, EMA, AdamW, loss); train.compile's auto
        # setting leaves it eager on the CPU, and --compiled compiles its network in place.
        self.step = DiffusionStep(config, CPU)
        self.ours = self.step.model
        self.ours.fused = not args.reference_path
        perturb_weights(self.ours, args.seed + 1)
        self.theirs = release_network(release, config)
        self.theirs.load_state_dict(self.ours.state_dict(), strict=True)
        # The release's train.py: a default AdamW (β1 0.9, no weight decay) and an EMA copy updated every step.
        self.release_optimizer = torch.optim.AdamW(self.theirs.parameters(), lr=config.optimizer.lr,
                                                   betas=(0.9, config.optimizer.beta2), weight_decay=0)
        self.release_ema = copy.deepcopy(self.theirs).requires_grad_(False)
        self.transport = release_transport(release, config)
        self.sampler = release.transport.Sampler(self.transport)
        self.split = TimeSplit.from_config(config)
        self.inputs = make_inputs(config, args.batch, args.seed + 2)
        self.sample_options = SamplerOptions(split=self.split, sampling_method="euler",
                                             num_sampling_steps=args.sample_steps)

    # agreement
    def check(self, path: str) -> dict[str, float]:
        inputs, t_tex, t_sem = self.inputs, *self.split.times(self.inputs.tau)
        if path == "forward":
            self.ours.eval(), self.theirs.eval()
            with torch.no_grad():
                ours = self.ours(inputs.x, t_tex, t_sem, inputs.y, repa=False).velocity
                theirs = self.release_call(inputs.x, t_tex, t_sem, inputs.y)
            return {"velocity": relative_error(ours, theirs)}
        if path == "train":
            return self.check_train(t_tex, t_sem)
        ours = self.sample_ours()
        theirs = self.sample_release()
        return {"latents − noise": relative_error(ours - inputs.x, theirs - inputs.x)}

    def release_call(self, x, t_tex, t_sem, y):
        t = (t_tex, t_sem) if self.split.semantic_first else t_tex
        return self.theirs(x, t, y)

    def check_train(self, t_tex: torch.Tensor, t_sem: torch.Tensor) -> dict[str, float]:
        """Train-mode outputs and gradients of one fixed random projection; the release's label dropout is held off
        for the comparison (it draws from the global RNG, ours from an explicit generator)."""
        inputs = self.inputs
        self.ours.train(), self.theirs.train()
        dropout = self.theirs.y_embedder.dropout_prob
        self.theirs.y_embedder.dropout_prob = 0.0
        try:
            ours = self.ours(inputs.x, t_tex, t_sem, inputs.y)
            theirs = self.release_call(inputs.x, t_tex, t_sem, inputs.y)
        finally:
            self.theirs.y_embedder.dropout_prob = dropout
        ours_out = (ours.velocity, ours.repa) if ours.repa is not None else (ours.velocity,)
        theirs_out = theirs if isinstance(theirs, tuple) else (theirs,)
        generator = torch.Generator().manual_seed(7)
        weights = [torch.randn(out.shape, generator=generator) for out in ours_out]
        for outputs, model in ((ours_out, self.ours), (theirs_out, self.theirs)):
            model.zero_grad(set_to_none=True)
            sum((out * weight).sum() for out, weight in zip(outputs, weights)).backward()
        errors = {"velocity": relative_error(ours_out[0].detach(), theirs_out[0].detach())}
        if len(ours_out) > 1:
            errors["repa"] = relative_error(ours_out[1].detach(), theirs_out[1].detach())
        theirs_grads = dict(self.theirs.named_parameters())
        errors["gradients"] = max(relative_error(p.grad, theirs_grads[name].grad)
                                  for name, p in self.ours.named_parameters() if p.grad is not None)
        self.ours.zero_grad(set_to_none=True), self.theirs.zero_grad(set_to_none=True)
        return errors

    # timed calls
    def sample_ours(self) -> torch.Tensor:
        self.ours.eval()
        return sample(self.ours, self.inputs.x, self.inputs.y, self.sample_options).x

    def sample_release(self) -> torch.Tensor:
        self.theirs.eval()
        if self.split.semantic_first:
            solve = self.sampler.sample_ode_semantic_first(
                sampling_method="euler", num_steps=self.sample_options.num_sampling_steps,
                semfirst_delta_t=self.split.delta_t,
                semantic_chans=self.split.semantic_chans)
        else:
            solve = self.sampler.sample_ode(sampling_method="euler",
                                            num_steps=self.sample_options.num_sampling_steps)
        with torch.no_grad():
            return solve(self.inputs.x, self.theirs.forward, y=self.inputs.y)[-1]

    def train_ours(self) -> None:
        self.step(self.inputs.x, self.inputs.y, self.inputs.dino, rows=range(len(self.inputs.x)))

    def train_release(self) -> None:
        self.theirs.train()
        inputs, optimizer = self.inputs, self.release_optimizer
        use_repa = self.config.model.use_repa
        terms = self.transport.training_losses(self.theirs, inputs.x, dict(y=inputs.y), use_repa=use_repa,
                                               feature_dino=inputs.dino)
        total = terms["loss"].mean()  # the release's train.py: mse + cos (+ REPA when the cosine loss is on)
        if "cos_loss" in terms:
            total = total + terms["cos_loss"].mean() + (terms["repa_loss"].mean() if "repa_loss" in terms else 0)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        release_update_ema(self.release_ema, self.theirs, self.config.train.ema_decay)

    def forward_ours(self) -> None:
        self.ours.eval()
        t_tex, t_sem = self.split.times(self.inputs.tau)
        with torch.no_grad():
            self.ours(self.inputs.x, t_tex, t_sem, self.inputs.y, repa=False)

    def forward_release(self) -> None:
        self.theirs.eval()
        t_tex, t_sem = self.split.times(self.inputs.tau)
        with torch.no_grad():
            self.release_call(self.inputs.x, t_tex, t_sem, self.inputs.y)

    @contextlib.contextmanager
    def weights_kept(self):
        """Restore both networks to the common weights afterwards (timed train steps update each side's own copy
        with its own random times and noise)."""
        saved = copy.deepcopy(self.ours.state_dict())
        try:
            yield
        finally:
            self.ours.load_state_dict(saved)
            self.theirs.load_state_dict(saved)

    def sides(self, path: str) -> tuple[Side, Side]:
        ours = {"forward": self.forward_ours, "train": self.train_ours, "sample": self.sample_ours}[path]
        theirs = {"forward": self.forward_release, "train": self.train_release, "sample": self.sample_release}[path]
        return Side("release", theirs), Side("sfd", ours)


@torch.no_grad()
def release_update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """The EMA update of the release's train.py (DiT's): every parameter by name, multiply then add."""
    ema_parameters = dict(ema.named_parameters())
    for name, parameter in model.named_parameters():
        ema_parameters[name].mul_(decay).add_(parameter.data, alpha=1 - decay)


def first_calls(sides: tuple[Side, Side]) -> dict[str, float]:
    """Milliseconds of each side's first call (compilation included when compiling)."""
    return {side.name: elapsed_ms(side.step, CPU) for side in sides}


def compare(sides: tuple[Side, Side], warmup: int, repeats: int) -> dict:
    """Interleaved timing: each repetition times both sides, in alternating order. Returns milliseconds."""
    for _ in range(warmup):
        for side in sides:
            side.step()
    times: dict[str, list[float]] = {side.name: [] for side in sides}
    for repeat in range(repeats):
        for side in (sides if repeat % 2 == 0 else sides[::-1]):
            times[side.name].append(elapsed_ms(side.step, CPU))
    ratios = [ours / theirs for ours, theirs in zip(times["sfd"], times["release"])]
    return {"release_ms": statistics.median(times["release"]), "sfd_ms": statistics.median(times["sfd"]),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "times_ms": times}


def comparison_table(rows: list[dict]) -> str:
    return markdown_table(
        ["path", "mode", "release ms", "sfd ms", "sfd / release (median, range)", "first call ms (release / sfd)",
         "output error"],
        [[row["path"], row["mode"], f"{row['release_ms']:.1f}", f"{row['sfd_ms']:.1f}",
          f"{row['ratio']:.3f} ({row['ratio_min']:.3f}–{row['ratio_max']:.3f})",
          f"{row['first_call_ms']['release']:.0f} / {row['first_call_ms']['sfd']:.0f}",
          ", ".join(f"{name} {value:.1e}" for name, value in row["errors"].items())] for row in rows],
        align="llrrlll")


def check_agreement(path: str, errors: dict[str, float]) -> Optional[str]:
    """A one-line message when an output differs beyond its tolerance, else None."""
    for name, value in errors.items():
        bound = TOLERANCES["gradients" if name == "gradients" else path]
        if not value <= bound:
            return f"{path}: {name} differs from the release by {value:.2e} (tolerance {bound:.0e})"
    return None


def measure(pair: Pair, path: str, mode: str, args: argparse.Namespace) -> dict:
    """One row: first calls (compilation included), the agreement check, then the interleaved timing; the
    networks get their common weights back after every stage that trains."""
    with pair.weights_kept():
        first = first_calls(pair.sides(path))
    errors = pair.check(path)
    problem = check_agreement(path, errors)
    if problem:
        raise ReleaseError(problem)
    with pair.weights_kept():
        timing = compare(pair.sides(path), args.warmup, args.repeats)
    return {"path": path, "mode": mode, "errors": errors, "first_call_ms": first, **timing}


def run(args: argparse.Namespace) -> dict:
    release = import_release(args.release)
    config = load_config(args.config, args.overrides)
    pair = Pair(release, config, args)
    rows = []
    with dynamo_disabled(True):
        rows += [measure(pair, path, "eager", args) for path in args.paths]
    whole_model_compile_ms = None
    if args.compiled:
        # Cold compilation on both sides: inductor's on-disk caches would otherwise hand one side kernels an
        # earlier run compiled.
        torch._inductor.config.force_disable_caches = True
        eager_network = copy.deepcopy(pair.ours)  # compiled whole below, for comparison
        torch._dynamo.reset()
        compile_module(pair.ours, Accelerator.of(CPU))  # regional, in place: the step object's network too
        with dynamo_disabled(False):
            rows += [measure(pair, path, "compiled", args) for path in args.paths]
            whole_model_compile_ms = whole_model_first_call(eager_network, pair)
    return {"config": str(args.config), "overrides": args.overrides, "batch": args.batch,
            "sfd_path": "reference" if args.reference_path else "fused",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": args.repeats,
            "sample_steps": args.sample_steps, "rows": rows, "whole_model_compile_first_forward_ms":
            whole_model_compile_ms}


def whole_model_first_call(network: torch.nn.Module, pair: Pair) -> float:
    """Milliseconds of the first eval forward of ``network`` (an uncompiled copy of this project's) compiled whole
    (``torch.compile(model)``), for comparison with the regional compilation's first call."""
    torch._dynamo.reset()
    whole = torch.compile(network.eval())
    t_tex, t_sem = pair.split.times(pair.inputs.tau)

    def forward() -> None:
        with torch.no_grad():
            whole(pair.inputs.x, t_tex, t_sem, pair.inputs.y, repa=False)

    return elapsed_ms(forward, CPU)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (ReleaseError, FileNotFoundError, ValueError) as error:
        print(f"bench_vs_release: {error}", file=sys.stderr)
        return 2
    print(f"# {result['config']} batch {result['batch']}, {result['threads']} threads, torch {result['torch']}, "
          f"{result['repeats']} interleaved repetitions, sfd's {result['sfd_path']} path")
    print(comparison_table(result["rows"]))
    if result["whole_model_compile_first_forward_ms"] is not None:
        regional = next(row for row in result["rows"] if row["mode"] == "compiled")
        print(f"\nfirst compiled {regional['path']} (compilation included): sfd regional "
              f"{regional['first_call_ms']['sfd'] / 1e3:.1f} s, release as shipped "
              f"{regional['first_call_ms']['release'] / 1e3:.1f} s; first eval forward of sfd compiled whole "
              f"{result['whole_model_compile_first_forward_ms'] / 1e3:.1f} s (inductor caches off)")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
