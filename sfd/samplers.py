"""Samplers: the probability-flow ODE over the global time τ ∈ [0, τ_max] and an Euler–Maruyama SDE.

The drift at (x, τ) is the (guided) velocity at (t_tex, t_sem) = split(τ), multiplied by the phase mask, so the
texture channels stay at their initial noise while τ < Δt and the semantic channels freeze once τ > 1 (paper §3,
three-phase sampling; docs/method.md §5). For the synchronous model the split is the identity and there is no mask.

Fixed-step Euler and Heun are explicit loops over the grid; every other method name (dopri5 for the released
numbers, rk4, ...) goes to torchdiffeq with the tolerances passed as one-element lists, as the release does
(that makes torchdiffeq compute the error norm in float64 and reproduces the official step sequence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torchdiffeq import odeint

from sfd.config import SFDConfig
from sfd.device import has_float64
from sfd.guidance import Guidance, guided_velocity
from sfd.schedule import TimeSplit

FIXED_GRID_METHODS = ("euler", "heun")  # this module's explicit loops; every other method is torchdiffeq's
# torchdiffeq's adaptive solvers keep step sizes, tolerances and the error norm in float64 on the state's device.
FLOAT64_METHODS = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")
# torchdiffeq methods whose steps do not depend on the output times asked for, so that asking only for the end time
# gives the same final state bit for bit (tests/test_samplers.py): the adaptive Runge–Kutta solvers choose every step
# from their error estimate alone and interpolate the outputs (torchdiffeq/_impl/rk_common.py, `_advance`); the
# fixed-grid ones step on the grid returned by their `grid_constructor` option, which we set to the full grid
# (torchdiffeq/_impl/solvers.py, `FixedGridODESolver.integrate`). Any other method gets every grid time.
ADAPTIVE_RK_METHODS = FLOAT64_METHODS
TORCHDIFFEQ_FIXED_GRID_METHODS = ("midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams",
                                  "fixed_adams")

Drift = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (τ [B], x) -> dx/dτ

# SDE diffusion coefficients w(t) on the linear path (the release's `compute_diffusion`). "SBDM" (w = (1−t)/t) is
# left out: it is infinite at t = 0, which the first step of the synchronous sampler and the texture group of the
# semantic-first sampler (at τ = Δt) both hit.
DIFFUSION_FORMS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "constant": lambda t, norm: torch.full_like(t, norm),
    "sigma": lambda t, norm: norm * (1 - t),
    "linear": lambda t, norm: norm * (1 - t),
    "decreasing": lambda t, norm: 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2,
    "increasing-decreasing": lambda t, norm: norm * torch.sin(math.pi * t) ** 2,
}


@dataclass
class SampleResult:
    x: torch.Tensor  # final state at τ_max, [B, C, H, W]
    nfe: int  # number of drift evaluations (a guided evaluation counts once)
    trajectory: Optional[torch.Tensor] = None  # [grid points, B, C, H, W], only with keep_trajectory=True


def make_drift(model: nn.Module, split: TimeSplit, y: torch.Tensor, guidance: Optional[Guidance] = None,
               phase: Optional[int] = None) -> Drift:
    """dx/dτ: the guided velocity at split(τ), masked to the channel groups that move at τ, or, with ``phase``,
    to the groups that move inside that phase (see :meth:`TimeSplit.phase_mask`)."""

    def drift(tau: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t_tex, t_sem = split.times(tau)
        # Under bf16/fp16 autocast the network returns half-precision velocities; the state stays in its dtype.
        velocity = guided_velocity(model, x, t_tex, t_sem, y, guidance, split.semantic_chans).to(x.dtype)
        mask = split.active_mask(tau, x.shape[1]) if phase is None else split.phase_mask(phase, x)
        return velocity if mask is None else velocity * mask

    return drift


def record(states: list[torch.Tensor], x: torch.Tensor, keep_trajectory: bool) -> None:
    """Append the new state ``x``, or, when the trajectory is not wanted, let it replace the previous one so that a
    sampler holds a single state and earlier ones can be freed."""
    if keep_trajectory:
        states.append(x)
    else:
        states[-1] = x


def euler(drift: Drift, x: torch.Tensor, grid: torch.Tensor, keep_trajectory: bool = True) -> list[torch.Tensor]:
    """x_{k+1} = x_k + (τ_{k+1} − τ_k)·f(τ_k, x_k); returns every grid state, or only the final one."""
    states = [x]
    for tau, tau_next in zip(grid[:-1], grid[1:]):
        x = x + (tau_next - tau) * drift(tau.expand(x.shape[0]), x)
        record(states, x, keep_trajectory)
    return states


def heun(drift: Drift, x: torch.Tensor, grid: torch.Tensor, keep_trajectory: bool = True) -> list[torch.Tensor]:
    """Second-order Heun (trapezoidal predictor-corrector), two evaluations per step; every grid state or only the
    final one."""
    states = [x]
    for tau, tau_next in zip(grid[:-1], grid[1:]):
        step = tau_next - tau
        slope = drift(tau.expand(x.shape[0]), x)
        predicted = x + step * slope
        x = x + step * 0.5 * (slope + drift(tau_next.expand(x.shape[0]), predicted))
        record(states, x, keep_trajectory)
    return states


def check_method_device(method: str, device: torch.device) -> None:
    """A one-line ValueError when ODE ``method`` cannot run on ``device`` (the adaptive solvers need float64)."""
    if method in FLOAT64_METHODS and not has_float64(device):
        raise ValueError(f"{method} needs float64, which {device.type.upper()} lacks; use "
                         f"sample.sampling_method=euler/heun or SFD_DEVICE=cpu")


def solve_ode(drift: Drift, x: torch.Tensor, grid: torch.Tensor, method: str, atol: float, rtol: float,
              keep_trajectory: bool = True) -> list[torch.Tensor]:
    """torchdiffeq ``odeint`` (dopri5 by default in configs). Adaptive methods use the grid only as output points.
    Returns the state at every grid point, or, without ``keep_trajectory``, only the final one; then torchdiffeq is
    asked for the two end times alone where that leaves every step unchanged (see ADAPTIVE_RK_METHODS), instead of
    holding all grid states (250 in the released setting) at once."""
    check_method_device(method, x.device)

    def func(tau: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return drift(torch.ones(state.shape[0], device=state.device) * tau, state)

    grid = grid.to(x.device)
    times, options = grid, None
    only_end_time = not keep_trajectory and len(grid) > 2
    if only_end_time and method in ADAPTIVE_RK_METHODS:
        times = grid[[0, -1]]
    elif only_end_time and method in TORCHDIFFEQ_FIXED_GRID_METHODS:
        times, options = grid[[0, -1]], {"grid_constructor": lambda _func, _y0, _t: grid}
    solution = odeint(func, x, times, method=method, atol=[atol], rtol=[rtol], options=options)
    # clone: a view would keep the whole solution tensor (every requested time) alive and be saved with it.
    return list(solution) if keep_trajectory else [solution[-1].clone()]


def euler_maruyama(
    velocity: Drift,
    x: torch.Tensor,
    grid: torch.Tensor,
    split: TimeSplit,
    diffusion: Callable[[torch.Tensor], torch.Tensor],
    generator: Optional[torch.Generator],
    eps: float = 1e-3,
    keep_trajectory: bool = True,
) -> list[torch.Tensor]:
    """SDE sampler with the same marginals as the ODE: dx = [v + w(t)·s(x, t)] dτ + sqrt(2 w(t)) dW, with the
    score of the linear path s = (t·v − x)/(1 − t) and each channel group at its own time. Noise enters only the
    groups that move at τ. The last step is the noise-free mean step (the release's default last step). Returns
    every grid state, or only the final one."""
    states = [x]
    num_chans = x.shape[1]
    for index, (tau, tau_next) in enumerate(zip(grid[:-1], grid[1:])):
        tau_b = tau.expand(x.shape[0])
        step = tau_next - tau
        t = split.per_channel(*split.times(tau_b), num_chans).clamp(0.0, 1.0)
        v = velocity(tau_b, x)
        w = diffusion(t)
        score = (t * v - x) / (1 - t).clamp(min=eps)
        mask = split.active_mask(tau_b, num_chans)
        mask = torch.ones_like(t) if mask is None else mask
        x = x + step * mask * (v + w * score)
        if index < len(grid) - 2:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + mask * torch.sqrt(2 * w * step) * noise
        record(states, x, keep_trajectory)
    return states


def sample(
    model: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    split: TimeSplit,
    *,
    method: str = "dopri5",
    num_steps: int = 250,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    shift: float = 0.0,
    guidance: Optional[Guidance] = None,
    sde: bool = False,
    diffusion_form: str = "sigma",
    diffusion_norm: float = 1.0,
    generator: Optional[torch.Generator] = None,
    keep_trajectory: bool = False,
    phase_split: bool = False,
) -> SampleResult:
    """Integrate from noise ``z`` [B, C, H, W] at τ = 0 to τ_max with labels ``y`` [B].

    ``method``: ``euler`` | ``heun`` | any torchdiffeq method (ODE); with ``sde=True`` Euler–Maruyama is used and
    ``generator`` supplies its noise. Returns the final state and the number of drift evaluations, and the state at
    every grid point only with ``keep_trajectory`` (otherwise no earlier state is kept). ``phase_split`` (ODE,
    semantic-first models) solves the three phases one after the other, each with its own fixed channel mask, so
    that no step straddles the jumps of the drift at τ = Δt and τ = 1: adaptive solvers restart at both
    boundaries, fixed grids get points on them (:meth:`TimeSplit.phase_grid`; no timestep shift)."""
    calls = 0

    def counted(fn: Drift) -> Drift:
        def wrapped(tau: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += 1
            return fn(tau, x)

        return wrapped

    grid = split.grid(num_steps, shift).to(z.device)
    with torch.no_grad():
        if sde:
            if diffusion_form not in DIFFUSION_FORMS:
                raise ValueError(f"sample.diffusion_form: unknown {diffusion_form!r}; "
                                 f"known: {', '.join(DIFFUSION_FORMS)}")
            form = DIFFUSION_FORMS[diffusion_form]
            velocity = counted(lambda tau, x: guided_velocity(model, x, *split.times(tau), y, guidance,
                                                              split.semantic_chans))
            states = euler_maruyama(velocity, z, grid, split, lambda t: form(t, diffusion_norm), generator,
                                    keep_trajectory=keep_trajectory)
        elif phase_split and split.semantic_first:
            if shift > 0 and method in FIXED_GRID_METHODS:
                raise ValueError("sample.phase_split: a fixed grid with phase boundaries has no timestep shift "
                                 "(set sample.timestep_shift=0)")
            if method in FIXED_GRID_METHODS:
                grid = split.phase_grid(num_steps).to(z.device)
            states, x = [z], z
            for phase, times in enumerate(phase_segments(grid, split)):
                drift = counted(make_drift(model, split, y, guidance, phase=phase))
                segment = integrate(drift, x, times, method, atol, rtol, keep_trajectory)
                x = segment[-1]
                if keep_trajectory:  # grid points only (a boundary that is not a grid point is left out)
                    states += [state for time, state in zip(times[1:], segment[1:]) if bool((grid == time).any())]
                else:
                    states = [x]
        else:
            drift = counted(make_drift(model, split, y, guidance))
            states = integrate(drift, z, grid, method, atol, rtol, keep_trajectory)
    trajectory = torch.stack(states) if keep_trajectory else None
    return SampleResult(x=states[-1], nfe=calls, trajectory=trajectory)


def integrate(drift: Drift, x: torch.Tensor, grid: torch.Tensor, method: str, atol: float, rtol: float,
              keep_trajectory: bool) -> list[torch.Tensor]:
    """One ODE solve over ``grid`` with the named method (see :func:`sample`)."""
    if method == "euler":
        return euler(drift, x, grid, keep_trajectory)
    if method == "heun":
        return heun(drift, x, grid, keep_trajectory)
    return solve_ode(drift, x, grid, method, atol, rtol, keep_trajectory)


def phase_segments(grid: torch.Tensor, split: TimeSplit) -> list[torch.Tensor]:
    """The grid cut at the phase boundaries: three time tensors, each from one boundary (or end) to the next, with
    the grid points strictly between them."""
    edges = torch.tensor([0.0, *split.phase_boundaries, split.tau_max], dtype=grid.dtype, device=grid.device)
    edges[0], edges[-1] = grid[0], grid[-1]
    segments = []
    for start, end in zip(edges[:-1], edges[1:]):
        inside = grid[(grid > start) & (grid < end)]
        segments.append(torch.cat([start[None], inside, end[None]]))
    return segments


def sampler_overrides(name: str) -> list[str]:
    """Config overrides of a named sampler setting: ``dopri5`` (the release's; any torchdiffeq method name),
    ``euler-N`` / ``heun-N`` (N grid points), each with an optional ``-phases`` suffix for phase-aware integration,
    e.g. ``heun-9-phases`` (16 evaluations) or ``dopri5-phases``. ValueError names the accepted forms."""
    base, phases = (name[: -len("-phases")], True) if name.endswith("-phases") else (name, False)
    method, _, steps = base.partition("-")
    overrides = [f"sample.sampling_method={method}", f"sample.phase_split={str(phases).lower()}"]
    if method in FIXED_GRID_METHODS and steps.isdigit() and int(steps) >= 2:
        return overrides + [f"sample.num_sampling_steps={int(steps)}"]
    if method and method not in FIXED_GRID_METHODS and not steps:
        return overrides
    raise ValueError(f"sampler {name!r}: expected euler-N, heun-N (N >= 2 grid points) or an adaptive method such as "
                     "dopri5, optionally followed by -phases")


@dataclass(frozen=True)
class SamplingPlan:
    """Every sampling setting of a run, decided once from a config (the release's rules, guidance included) and
    then applied to any number of batches. The fields are the arguments of :func:`sample`; their defaults are the
    config's (``SampleConfig``), so the plan has none of its own."""

    split: TimeSplit
    method: str
    num_steps: int
    atol: float
    rtol: float
    shift: float
    guidance: Optional[Guidance]
    sde: bool
    diffusion_form: str
    diffusion_norm: float
    phase_split: bool

    @property
    def batch_coupled(self) -> bool:
        """Whether a sample depends on its batch-mates: an adaptive solver (dopri5, ...) picks one step size for the
        whole batch; the fixed grids (Euler, Heun, Euler–Maruyama) step every row alike."""
        return not self.sde and self.method not in FIXED_GRID_METHODS

    def check_device(self, device: torch.device) -> None:
        """Refuse, before any work, a plan whose solver cannot run on ``device`` (see :func:`check_method_device`)."""
        if not self.sde:
            check_method_device(self.method, device)

    @classmethod
    def from_config(cls, config: SFDConfig, guide: Optional[nn.Module] = None) -> "SamplingPlan":
        """The plan of ``config.sample`` and ``config.model``, guided by ``guide`` (AutoGuidance) when given."""
        settings = config.sample
        return cls(TimeSplit.from_config(config), method=settings.sampling_method,
                   num_steps=settings.num_sampling_steps, atol=settings.atol, rtol=settings.rtol,
                   shift=settings.timestep_shift, guidance=Guidance.from_config(config, guide),
                   sde=settings.mode == "SDE", diffusion_form=settings.diffusion_form,
                   diffusion_norm=settings.diffusion_norm, phase_split=settings.phase_split)

    def __call__(self, model: nn.Module, z: torch.Tensor, y: torch.Tensor,
                 generator: Optional[torch.Generator] = None, keep_trajectory: bool = False) -> SampleResult:
        return sample(model, z, y, self.split, method=self.method, num_steps=self.num_steps, atol=self.atol,
                      rtol=self.rtol, shift=self.shift, guidance=self.guidance, sde=self.sde,
                      diffusion_form=self.diffusion_form, diffusion_norm=self.diffusion_norm, generator=generator,
                      keep_trajectory=keep_trajectory, phase_split=self.phase_split)


def sample_from_config(
    model: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    config: SFDConfig,
    guide: Optional[nn.Module] = None,
    generator: Optional[torch.Generator] = None,
) -> SampleResult:
    """``sample`` with every setting taken from ``config.sample`` and ``config.model`` (see :class:`SamplingPlan`;
    build the plan once when sampling many batches)."""
    return SamplingPlan.from_config(config, guide)(model, z, y, generator)
