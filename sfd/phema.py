"""Post-hoc EMA: power-function averages of the weights, tracked during training and recombined afterwards.

Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion Models" (EDM2, arXiv 2312.02696, paper §3
and its Appendix C) replace the classic EMA, whose length must be fixed before training, by averages whose weight on
the parameters of time τ grows as τ^γ. Two such averages of different widths, saved at a fixed interval, span enough
profiles that the average of almost any other width — chosen after training, by measuring it — is recovered as a
linear combination of the saved ones. This module is the mathematics and the tracker (docs/ema.md):

* :func:`std_to_exponent` / :func:`exponent_to_std`: the width σ_rel ↔ the exponent γ (docs/ema.md §2);
* :func:`power_function_beta`, :func:`power_function_weights` and :class:`PowerEMA`: tracking (docs/ema.md §3);
* :func:`profile_inner_products`, :func:`solve_reconstruction`, :func:`reconstruct` and their exponential
  counterparts: the least-squares reconstruction (docs/ema.md §5);
* :func:`save_snapshots`, :func:`snapshot_files`, :func:`load_snapshot` and :func:`write_reconstruction`: a run's
  snapshot files and the checkpoints rebuilt from them, one file in memory at a time (docs/ema.md §6, §7).

Time is counted in optimizer steps: step t is the t-th optimizer step, θ_t the weights right after it, and the
average "at step t" has seen θ_1 … θ_t. With a constant batch this is the paper's image count divided by the batch
size, which changes none of the formulas (they depend on ratios of times only).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from sfd.checkpoint import CheckpointError, atomic_save, extract_state_dict, read_file

ArrayLike = float | Sequence[float] | np.ndarray
StateDict = dict[str, torch.Tensor]
Snapshot = tuple[int, float, Mapping[str, torch.Tensor]]  # (step, gamma, state dict)

MAX_SIGMA_REL = 1.0 / math.sqrt(12.0)  # γ = 0: the uniform average over all of training
POISSON_TAIL = 12.0  # standard deviations of the Poisson series kept in exponential_inner_products


def _key_difference(a: Mapping[str, object], b: Mapping[str, object]) -> str:
    """The first few keys in one mapping but not the other, for an error message."""
    different = sorted(set(a.keys()) ^ set(b.keys()))
    return ", ".join(different[:3]) + (f" and {len(different) - 3} more" if len(different) > 3 else "")


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def _scalar_or_array(values: np.ndarray, like: ArrayLike) -> np.ndarray | float:
    return float(values) if np.ndim(like) == 0 else values


def exponent_to_std(gamma: ArrayLike) -> np.ndarray | float:
    """σ_rel of the power-function profile with exponent γ ≥ 0 (paper App. C.2).

    The profile at time t is the density (γ+1) τ^γ / t^(γ+1) on [0, t]: τ/t is Beta(γ+1, 1)-distributed, so the
    standard deviation relative to t is sqrt((γ+1) / ((γ+2)² (γ+3))). γ = 0 gives the widest, 1/√12."""
    values = np.asarray(gamma, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"gamma must be finite and >= 0 (got {gamma})")
    return _scalar_or_array(np.sqrt((values + 1) / ((values + 2) ** 2 * (values + 3))), gamma)


def std_to_exponent(sigma_rel: ArrayLike) -> np.ndarray | float:
    """The exponent γ ≥ 0 whose profile has relative standard deviation σ_rel ∈ (0, 1/√12] (paper App. C.2).

    Squaring exponent_to_std and clearing denominators gives the cubic γ³ + 7γ² + (16 − s)γ + (12 − s) = 0 with
    s = σ_rel⁻²; it has three real roots (s ≥ 12) and the wanted one is the largest. The paper solves it numerically;
    here the trigonometric closed form of the largest root of the depressed cubic y³ + py + q (γ = y − 7/3) is used,
    vectorised: y = 2 √(−p/3) cos(⅓ arccos(3q/(2p) √(−3/p)))."""
    values = np.asarray(sigma_rel, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values <= 0) or np.any(values > MAX_SIGMA_REL * (1 + 1e-12)):
        raise ValueError(f"sigma_rel must be in (0, 1/sqrt(12) = {MAX_SIGMA_REL:.6f}] (got {sigma_rel})")
    s = values ** -2.0
    p, q = -1.0 / 3.0 - s, 2.0 / 27.0 + 4.0 * s / 3.0
    angle = np.arccos(np.clip(3.0 * q / (2.0 * p) * np.sqrt(-3.0 / p), -1.0, 1.0)) / 3.0
    gamma = np.maximum(2.0 * np.sqrt(-p / 3.0) * np.cos(angle) - 7.0 / 3.0, 0.0)  # γ = 0 exactly at σ_rel = 1/√12
    return _scalar_or_array(gamma, sigma_rel)


def power_function_beta(step: int, gamma: float, previous_step: int | None = None) -> float:
    """The decay β of the tracking update average ← β·average + (1 − β)·θ_step (paper §3, App. C.2).

    β_t = (1 − 1/t)^(γ+1) after the step-th optimizer step, counting from 1: the first update has β = 0 and sets the
    average to θ_1. The product of the later β's telescopes, so θ_τ ends up with weight (τ^(γ+1) − (τ−1)^(γ+1)) /
    t^(γ+1) — exactly the profile (γ+1) τ^γ / t^(γ+1) integrated over the step's interval (τ−1, τ], ≈ ∝ τ^γ
    (power_function_weights). When updates skip steps, ``previous_step`` is the step of the last one and
    β = (1 − (step − previous_step)/step)^(γ+1): the weights are held constant over the skipped steps."""
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an integer >= 1 (got {step})")
    previous = step - 1 if previous_step is None else previous_step
    if not 0 <= previous < step:
        raise ValueError(f"previous_step must be in [0, step={step}) (got {previous_step})")
    if not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be finite and >= 0 (got {gamma})")
    return (1.0 - (step - previous) / step) ** (gamma + 1.0)


def power_function_weights(step: int, gamma: float) -> np.ndarray:
    """The weights [w_1 … w_step] (summing to 1) that per-step tracking with power_function_beta puts on θ_1 … θ_step:
    w_τ = (τ^(γ+1) − (τ−1)^(γ+1)) / step^(γ+1), computed as differences of (τ/step)^(γ+1) so large γ cannot
    overflow."""
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an integer >= 1 (got {step})")
    exponent_to_std(gamma)  # validates gamma
    cumulative = (np.arange(step + 1, dtype=np.float64) / step) ** (gamma + 1.0)
    return np.diff(cumulative)


def _validated_profiles(steps: ArrayLike, gammas: ArrayLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    steps_array = np.atleast_1d(np.asarray(steps, dtype=np.float64))
    gammas_array = np.atleast_1d(np.asarray(gammas, dtype=np.float64))
    if steps_array.shape != gammas_array.shape or steps_array.ndim != 1:
        raise ValueError(f"{what}: steps and gammas must be 1-D and of one length (got {steps_array.shape} and "
                         f"{gammas_array.shape})")
    if not np.all(np.isfinite(steps_array)) or np.any(steps_array <= 0):
        raise ValueError(f"{what}: steps must be positive (got {steps_array.tolist()})")
    exponent_to_std(gammas_array)
    return steps_array, gammas_array


def profile_inner_products(steps_a: ArrayLike, gammas_a: ArrayLike, steps_b: ArrayLike,
                           gammas_b: ArrayLike) -> np.ndarray:
    """The matrix ⟨p_a, p_b⟩ = ∫₀^∞ p_a(τ) p_b(τ) dτ of power-function profiles p(τ) = (γ+1) τ^γ / t^(γ+1) on [0, t]
    (paper App. C.3).

    The product is (γa+1)(γb+1) τ^(γa+γb) / (ta^(γa+1) tb^(γb+1)) up to m = min(ta, tb), whose integral is
    (γa+1)(γb+1) / (γa+γb+1) · (m/ta)^(γa+1) (m/tb)^(γb+1) / m — written with ratios ≤ 1 so that no power of a
    training length overflows."""
    ta, ga = (x[:, None] for x in _validated_profiles(steps_a, gammas_a, "profile_inner_products"))
    tb, gb = (x[None, :] for x in _validated_profiles(steps_b, gammas_b, "profile_inner_products"))
    m = np.minimum(ta, tb)
    return (ga + 1) * (gb + 1) / (ga + gb + 1) * (m / ta) ** (ga + 1) * (m / tb) ** (gb + 1) / m


def exponential_inner_products(steps: ArrayLike, gammas: ArrayLike, target_step: int, decay: float) -> np.ndarray:
    """⟨p_i, q⟩ between power-function profiles p_i (steps t_i ≤ T) and the classic EMA's profile at step T,
    q(τ) = λ e^(−λ(T−τ)) on [0, T] with λ = −ln β (β = ``decay``).

    q integrated over a step's interval is (1 − β) β^(T−τ), the classic EMA's weight on θ_τ, so this is the same
    piecewise-constant picture as for the power functions. With τ = t_i s and c = λ t_i the integral is
    (γ+1) λ e^(−λ(T−t_i)) ∫₀¹ s^γ e^(−c(1−s)) ds, and expanding e^(cs) turns the last integral into
    Σ_n Poisson(n; c) / (γ+n+1): a mean of bounded terms, summed over the Poisson's bulk, with no overflow."""
    t, gamma = _validated_profiles(steps, gammas, "exponential_inner_products")
    if not 0 < decay < 1:
        raise ValueError(f"decay must be in (0, 1) (got {decay})")
    if np.any(t > target_step):
        raise ValueError(f"steps must be <= target_step={target_step} (got {t.max():.0f})")
    rate = -math.log(decay)
    products = np.empty_like(t)
    for index, (t_i, gamma_i) in enumerate(zip(t, gamma)):
        c = rate * t_i
        spread = POISSON_TAIL * math.sqrt(c) + 30.0
        n = np.arange(max(0, math.floor(c - spread)), math.ceil(c + spread) + 1, dtype=np.float64)
        log_factorial = np.array([math.lgamma(k + 1.0) for k in n])
        log_poisson = n * math.log(c) - c - log_factorial
        series = np.sum(np.exp(log_poisson) / (gamma_i + n + 1.0))
        products[index] = (gamma_i + 1.0) * rate * math.exp(-rate * (target_step - t_i)) * series
    return products


def _validated_target(steps: np.ndarray, gammas: np.ndarray, target_step: int) -> np.ndarray:
    """The mask of the snapshots at or before ``target_step``, which must be one of the snapshot steps: a snapshot
    after it has averaged weights the target never saw, and without one at it the weights between the last snapshot
    and the target are known to no snapshot."""
    if steps.size == 0:
        raise ValueError("snapshot_steps must not be empty")
    if target_step not in set(steps.tolist()):
        raise ValueError(f"target_step={target_step} is not a snapshot step (snapshots from {steps.min():.0f} "
                         f"to {steps.max():.0f})")
    used = steps <= target_step
    pairs = list(zip(steps[used].tolist(), gammas[used].tolist()))
    if len(set(pairs)) != len(pairs):
        raise ValueError("snapshot_steps/snapshot_gammas: a (step, gamma) pair is repeated, so the profiles are "
                         "linearly dependent")
    return used


def _least_squares(gram: np.ndarray, right: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Coefficients from the normal equations, rescaled to sum to 1 (as EDM2 does) so that a parameter constant
    over training is reproduced exactly whatever the residual of the fit; zero for unused snapshots."""
    try:
        solution = np.linalg.solve(gram, right)
    except np.linalg.LinAlgError as error:
        raise ValueError(f"snapshot profiles: the normal equations are singular ({error})") from None
    coefficients = np.zeros(used.shape, dtype=np.float64)
    coefficients[used] = solution / solution.sum()
    return coefficients


def solve_reconstruction(snapshot_steps: ArrayLike, snapshot_gammas: ArrayLike, target_step: int,
                         target_gamma: float) -> np.ndarray:
    """Coefficients x (one per snapshot, summing to 1) such that Σ x_i · snapshot_i best approximates the
    power-function EMA with exponent ``target_gamma`` at ``target_step`` (paper App. C.3).

    Each snapshot i is the average of the weights under a known profile p_i; the combination's profile is Σ x_i p_i,
    and x minimises its L2 distance to the target profile p: the normal equations A x = b with A_ij = ⟨p_i, p_j⟩ and
    b_i = ⟨p_i, p⟩ (profile_inner_products). Snapshots after ``target_step`` get 0; ``target_step`` must be a
    snapshot step. When the target is one of the snapshots the answer is that snapshot alone."""
    steps, gammas = _validated_profiles(snapshot_steps, snapshot_gammas, "solve_reconstruction")
    used = _validated_target(steps, gammas, target_step)
    if not math.isfinite(target_gamma) or target_gamma < 0:
        raise ValueError(f"target_gamma must be finite and >= 0 (got {target_gamma})")
    gram = profile_inner_products(steps[used], gammas[used], steps[used], gammas[used])
    right = profile_inner_products(steps[used], gammas[used], [target_step], [target_gamma])[:, 0]
    return _least_squares(gram, right, used)


def solve_exponential_reconstruction(snapshot_steps: ArrayLike, snapshot_gammas: ArrayLike, target_step: int,
                                     decay: float) -> np.ndarray:
    """Coefficients that best approximate the classic EMA (average ← decay·average + (1 − decay)·θ every step,
    started from the initial weights θ_0) at ``target_step``, as solve_reconstruction does for a power function.

    Well-posed when (a) decay^target_step is negligible — that is the classic EMA's weight on θ_0, which no
    power-function profile carries (the coefficients are rescaled to sum to 1, so it is spread over the rest) — and
    (b) the classic EMA's width, about 1/(1 − decay) steps (σ_rel ≈ 1/((1 − decay)·target_step)), spans at least
    about two snapshot intervals wherever it is narrower than the narrowest tracked profile: a narrower average can
    only be formed from differences of nearby snapshots, with large coefficients of both signs (docs/ema.md §5.3)."""
    steps, gammas = _validated_profiles(snapshot_steps, snapshot_gammas, "solve_exponential_reconstruction")
    used = _validated_target(steps, gammas, target_step)
    gram = profile_inner_products(steps[used], gammas[used], steps[used], gammas[used])
    right = exponential_inner_products(steps[used], gammas[used], target_step, decay)
    return _least_squares(gram, right, used)


def combine_state_dicts(weighted: Iterable[tuple[float, Mapping[str, torch.Tensor]]]) -> StateDict:
    """Σ coefficient · state_dict over floating-point entries, accumulated in float64 on the CPU and cast back to
    each entry's dtype; other entries (integer buffers) are taken from the last state dict. An iterable, so that a
    tool can load one snapshot file at a time."""
    total: dict[str, torch.Tensor] = {}
    last: Mapping[str, torch.Tensor] = {}
    for coefficient, state in weighted:
        if last and state.keys() != last.keys():
            raise ValueError(f"state dicts: keys differ ({_key_difference(state, last)})")
        for key, tensor in state.items():
            if not tensor.is_floating_point():
                continue
            term = tensor.detach().to("cpu", torch.float64) * float(coefficient)
            if key not in total:
                total[key] = term
            elif total[key].shape != term.shape:
                raise ValueError(f"state dicts: {key} has shapes {tuple(total[key].shape)} and {tuple(term.shape)}")
            else:
                total[key] += term
        last = state
    if not last:
        raise ValueError("state dicts: nothing to combine (empty)")
    return {key: total[key].to(tensor.dtype) if tensor.is_floating_point() else tensor.detach().to("cpu", copy=True)
            for key, tensor in last.items()}


def _combine_snapshots(steps: Sequence[int], coefficients: np.ndarray, target_step: int,
                       load: Callable[[int], Mapping[str, torch.Tensor]]) -> StateDict:
    """Σ coefficients[i] · load(i) over the snapshots i up to ``target_step``, oldest first, so that the integer
    entries come from a snapshot at ``target_step``. load(i) is called when snapshot i's turn comes, so a caller
    reading files holds one of them at a time."""
    order = sorted((int(step), index) for index, step in enumerate(steps) if step <= target_step)
    return combine_state_dicts((coefficients[index], load(index)) for _, index in order)


def _snapshot_profiles(snapshots: Sequence[Snapshot], target_step: int | None) -> tuple[list, list, int]:
    if len(snapshots) == 0:
        raise ValueError("snapshots must not be empty")
    steps = [int(step) for step, _, _ in snapshots]
    return steps, [float(gamma) for _, gamma, _ in snapshots], max(steps) if target_step is None else target_step


def reconstruct(snapshots: Sequence[Snapshot], target_sigma_rel: float, target_step: int | None = None) -> StateDict:
    """The power-function EMA of width ``target_sigma_rel`` at ``target_step`` (default: the newest snapshot's step),
    as the least-squares combination (solve_reconstruction) of ``snapshots``, a list of (step, gamma, state_dict) —
    e.g. [(ema.step, std_to_exponent(s), d) for s, d in ema.snapshot().items()] gathered over training. Returns a
    state dict on the CPU with the snapshots' dtypes; integer entries come from a snapshot at ``target_step``."""
    steps, gammas, target = _snapshot_profiles(snapshots, target_step)
    coefficients = solve_reconstruction(steps, gammas, target, float(std_to_exponent(target_sigma_rel)))
    return _combine_snapshots(steps, coefficients, target, lambda index: snapshots[index][2])


def reconstruct_exponential(snapshots: Sequence[Snapshot], decay: float, target_step: int | None = None) -> StateDict:
    """The classic EMA with ``decay`` at ``target_step`` from power-function snapshots (solve_exponential_reconstruction
    says when that is well-posed); otherwise as :func:`reconstruct`."""
    steps, gammas, target = _snapshot_profiles(snapshots, target_step)
    coefficients = solve_exponential_reconstruction(steps, gammas, target, decay)
    return _combine_snapshots(steps, coefficients, target, lambda index: snapshots[index][2])


class PowerEMA:
    """Power-function EMAs of a model's weights for several widths σ_rel, updated after every optimizer step
    (paper §3; docs/ema.md §3).

    Every floating-point ``nn.Parameter`` in ``model.state_dict()`` is averaged, in its own dtype and on its own
    device; every other entry (buffers) is copied as-is at each update, so a snapshot loads into the model with
    ``load_state_dict``. ``step`` is the number of optimizer steps the averages have seen (0 before the first
    update). The model is not held: each update is given the (unwrapped) model, so the keys match a plain
    ``model.state_dict()``. The tracker's whole state is its averages and ``step``; β depends on nothing else, so a
    run resumed with load_state_dict continues bit for bit.
    """

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float] = (0.05, 0.10)) -> None:
        if len(sigma_rels) == 0:
            raise ValueError("sigma_rels must not be empty")
        if len(set(sigma_rels)) != len(sigma_rels):
            raise ValueError(f"sigma_rels must be distinct (got {list(sigma_rels)})")
        self.sigma_rels = tuple(float(sigma) for sigma in sigma_rels)
        self.gammas = tuple(float(std_to_exponent(sigma)) for sigma in self.sigma_rels)
        state = model.state_dict(keep_vars=True)
        self.averaged_keys = tuple(key for key, value in state.items()
                                   if isinstance(value, nn.Parameter) and value.is_floating_point())
        self.copied_keys = tuple(key for key in state if key not in set(self.averaged_keys))
        self.averages = [{key: value.detach().clone() for key, value in state.items()} for _ in self.sigma_rels]
        self.step = 0

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the weights after optimizer step ``step`` (counted from 1; normally self.step + 1, a larger step
        holds the weights constant over the skipped ones — power_function_beta). The first update copies the
        weights (β = 0), so the values the averages were created with never count."""
        if not isinstance(step, (int, np.integer)) or step <= self.step:
            raise ValueError(f"step must be an integer > the last update's step {self.step} (got {step})")
        state = model.state_dict(keep_vars=True)
        if state.keys() != self.averages[0].keys():
            raise ValueError(f"model: its state dict keys differ from the tracked ones "
                             f"({_key_difference(state, self.averages[0])})")
        sources = [state[key].detach() for key in self.averaged_keys]
        for gamma, average in zip(self.gammas, self.averages):
            beta = power_function_beta(int(step), gamma, previous_step=self.step)
            if sources:
                torch._foreach_lerp_([average[key] for key in self.averaged_keys], sources, 1.0 - beta)
            for key in self.copied_keys:
                average[key].copy_(state[key])
        self.step = int(step)

    def snapshot(self) -> dict[float, StateDict]:
        """{σ_rel: a CPU copy of that average's state dict}, to be written at a fixed interval of steps together with
        ``self.step``; reconstruct() takes them as (step, std_to_exponent(σ_rel), state dict)."""
        return {sigma: _cpu_copy(average) for sigma, average in zip(self.sigma_rels, self.averages)}

    def state_dict(self) -> dict:
        """What a training checkpoint holds: the widths, ``step`` and the averages (the live tensors, as
        ``nn.Module.state_dict`` returns them: save before the next update)."""
        return {"sigma_rels": list(self.sigma_rels), "step": self.step,
                "averages": [dict(average) for average in self.averages]}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping) -> None:
        """Restore a state_dict() of a tracker with the same widths over the same model; the values are copied into
        this tracker's tensors (keeping their devices)."""
        if [float(sigma) for sigma in state.get("sigma_rels", [])] != list(self.sigma_rels):
            raise ValueError(f"state: sigma_rels {state.get('sigma_rels')} differ from this tracker's "
                             f"{list(self.sigma_rels)}")
        if len(state["averages"]) != len(self.averages):
            raise ValueError(f"state: {len(state['averages'])} averages for {len(self.averages)} sigma_rels")
        for saved, average in zip(state["averages"], self.averages):
            if saved.keys() != average.keys():
                raise ValueError(f"state: the averages' keys differ ({_key_difference(saved, average)})")
            for key, value in saved.items():
                if value.shape != average[key].shape:
                    raise ValueError(f"state: {key} has shape {tuple(value.shape)}, not {tuple(average[key].shape)}")
        for saved, average in zip(state["averages"], self.averages):
            for key, value in saved.items():
                average[key].copy_(value)
        self.step = int(state["step"])


# -- a run's snapshot files, and the checkpoints rebuilt from them (docs/ema.md §6, §7) -------------------------------

SNAPSHOT_FOLDER = "power_ema"  # the snapshots' folder in a run folder
SNAPSHOT_NAME = re.compile(r"^(\d+)_sigma(\d[\d.]*(?:e-?\d+)?)\.pt$")  # {step:07d}_sigma{σ_rel:g}.pt
SNAPSHOT_KEYS = ("ema", "step", "sigma_rel", "gamma")
NEGLIGIBLE_INITIAL_WEIGHT = 0.01  # decay^step above this: the classic EMA still leans on θ_0 (docs/ema.md §5.3)


@dataclass(frozen=True)
class SnapshotFile:
    """A snapshot file and what its name says: the step and the width σ_rel (to the 6 digits of ``:g``)."""

    path: Path
    step: int
    sigma_rel: float


def save_snapshots(folder: Path, tracker: PowerEMA, images_seen: int, config: Optional[Mapping] = None) -> list[Path]:
    """Write each of ``tracker``'s averages atomically to ``folder/{step:07d}_sigma{σ_rel:g}.pt`` as {"ema": its
    state dict on the CPU, "step", "images_seen", "sigma_rel", "gamma", "config" (when given)}: a checkpoint every
    sampler loads, and an input of the reconstruction. One average is copied to the CPU at a time. A resumed run
    that writes a step again writes the same values."""
    if tracker.step < 1:
        raise ValueError("tracker: no update yet (step 0), so there is no power-function average to save")
    names = [f"{tracker.step:07d}_sigma{sigma:g}.pt" for sigma in tracker.sigma_rels]
    if len(set(names)) != len(names):
        raise ValueError(f"tracker: sigma_rels {list(tracker.sigma_rels)} share a file name ({names})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, sigma, gamma, average in zip(names, tracker.sigma_rels, tracker.gammas, tracker.averages):
        payload = {"ema": _cpu_copy(average), "step": tracker.step, "images_seen": int(images_seen),
                   "sigma_rel": sigma, "gamma": gamma}
        if config is not None:
            payload["config"] = config
        written.append(atomic_save(payload, folder / name))
    return written


def snapshot_files(folder: str | Path) -> list[SnapshotFile]:
    """The snapshot files in ``folder``, by their names, sorted by (step, σ_rel); other files are ignored."""
    found = [SnapshotFile(path, int(match.group(1)), float(match.group(2)))
             for path in Path(folder).glob("*.pt") if (match := SNAPSHOT_NAME.match(path.name))]
    if not found:
        raise ValueError(f"{folder}: holds no power-EMA snapshots (<step>_sigma<sigma_rel>.pt files)")
    return sorted(found, key=lambda file: (file.step, file.sigma_rel))


def load_snapshot(path: str | Path) -> Snapshot:
    """(step, gamma, state dict) of a snapshot file, as reconstruct() takes them. The tensors are memory-mapped
    (sfd.checkpoint.read_file): read when used. A file that is not a snapshot raises CheckpointError naming it."""
    payload = read_file(path, required=SNAPSHOT_KEYS)
    step, gamma = payload["step"], payload["gamma"]
    if not isinstance(step, int) or step < 1 or not isinstance(gamma, float):
        raise CheckpointError(f"{path}: not a power-EMA snapshot (step {step!r}, gamma {gamma!r})")
    return step, gamma, extract_state_dict(payload, path)


def _load_named(file: SnapshotFile) -> Mapping[str, torch.Tensor]:
    """The state dict of ``file``, which must hold what its name says: the coefficients were solved from names."""
    step, gamma, state = load_snapshot(file.path)
    if step != file.step or not math.isclose(exponent_to_std(gamma), file.sigma_rel, rel_tol=1e-5):
        raise CheckpointError(f"{file.path}: holds step {step} and sigma_rel {exponent_to_std(gamma):g}, not what "
                              "its name says")
    return state


def solve_for_files(files: Sequence[SnapshotFile], *, sigma_rel: Optional[float] = None,
                    decay: Optional[float] = None, step: Optional[int] = None) -> tuple[int, np.ndarray]:
    """(the target step, one coefficient per file) for the power EMA of width ``sigma_rel`` or the classic EMA with
    ``decay`` — exactly one — at the snapshot step ``step`` (default: the newest). Reads no file."""
    if (sigma_rel is None) == (decay is None):
        raise ValueError(f"give exactly one of sigma_rel and decay (got sigma_rel={sigma_rel}, decay={decay})")
    steps = [file.step for file in files]
    gammas = std_to_exponent([file.sigma_rel for file in files])
    target = max(steps, default=0) if step is None else step
    if decay is not None:
        return target, solve_exponential_reconstruction(steps, gammas, target, decay)
    return target, solve_reconstruction(steps, gammas, target, float(std_to_exponent(sigma_rel)))


def exponential_caveat(files: Sequence[SnapshotFile], decay: float, step: Optional[int] = None) -> Optional[str]:
    """Why the classic EMA with ``decay`` (in (0, 1)) at ``step`` (default: the newest snapshot step) is not
    well-posed from ``files`` — the conditions of solve_exponential_reconstruction — in one line; None when it is."""
    target = max(file.step for file in files) if step is None else step
    if decay ** target > NEGLIGIBLE_INITIAL_WEIGHT:
        return (f"decay {decay:g} at step {target}: {decay ** target:.2g} of the classic EMA's weight is on the "
                "initial weights, which no snapshot holds")
    width, narrowest = 1.0 / (1.0 - decay), min(file.sigma_rel for file in files) * target
    interval = int(np.diff([0, *sorted({file.step for file in files if file.step <= target})]).max())
    if width < narrowest and width < 2 * interval:
        return (f"decay {decay:g} at step {target}: its width (about {width:.0f} steps) is below the narrowest "
                f"tracked one ({narrowest:.0f} steps) and two snapshot intervals ({interval} steps), so the "
                "coefficients are large and of both signs")
    return None


def reconstruct_from_folder(folder: str | Path, *, sigma_rel: Optional[float] = None, decay: Optional[float] = None,
                            step: Optional[int] = None) -> tuple[StateDict, dict]:
    """:func:`reconstruct` (``sigma_rel``) or :func:`reconstruct_exponential` (``decay``) from the snapshot files in
    ``folder``, holding one file in memory at a time. Returns the state dict and how it was made: {"sigma_rel" or
    "decay", "step", "sources": the names of the files up to the step, oldest first, "coefficients": one each}."""
    files = snapshot_files(folder)
    target, coefficients = solve_for_files(files, sigma_rel=sigma_rel, decay=decay, step=step)
    state = _combine_snapshots([file.step for file in files], coefficients, target,
                               lambda index: _load_named(files[index]))
    used = [index for index, file in enumerate(files) if file.step <= target]
    return state, {**({"sigma_rel": sigma_rel} if decay is None else {"decay": decay}), "step": target,
                   "sources": [files[index].path.name for index in used],
                   "coefficients": [float(coefficients[index]) for index in used]}


def write_reconstruction(folder: str | Path, out: str | Path, *, sigma_rel: Optional[float] = None,
                         decay: Optional[float] = None, step: Optional[int] = None) -> tuple[Path, dict]:
    """reconstruct_from_folder, written atomically to ``out/ema_sigma{σ_rel:g}_{step:07d}.pt`` (or
    ``ema_decay{decay:g}_…``) as {"ema": the weights, "config": the snapshots' (when they hold one), "power_ema":
    how it was made}: a checkpoint every sampler loads (sfd.build.load_model). Returns its path and "power_ema"."""
    state, info = reconstruct_from_folder(folder, sigma_rel=sigma_rel, decay=decay, step=step)
    payload = {"ema": state, "power_ema": info}
    config = read_file(Path(folder) / info["sources"][-1]).get("config")  # the snapshot at the step
    if config is not None:
        payload["config"] = config
    name = f"ema_sigma{sigma_rel:g}" if decay is None else f"ema_decay{decay:g}"
    Path(out).mkdir(parents=True, exist_ok=True)
    return atomic_save(payload, Path(out) / f"{name}_{info['step']:07d}.pt"), info
