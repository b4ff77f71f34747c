"""Sampling: one options object (:class:`SamplerOptions`) and one entry point (:func:`sample`).

The probability-flow ODE runs over the global time τ ∈ [0, τ_max]; an Euler–Maruyama SDE has the same marginals.
The drift at (x, τ) is the (guided) velocity at (t_tex, t_sem) = split(τ), each channel group multiplied by its
rate dt/dτ (:meth:`TimeSplit.rates`). For the release's constant lead the rates are the phase mask, so the texture
channels stay at their initial noise while τ < Δt and the semantic channels freeze once τ > 1 (paper §3,
three-phase sampling; docs/method.md §5); the other shapes of the lead (docs/method.md §3.4) only change the rates
and the phase boundaries. For the synchronous model the split is the identity and there are no rates.

Fixed-step Euler and Heun are explicit loops over the grid; every other method name (dopri5 for the released
numbers, rk4, ...) goes to torchdiffeq with the tolerances passed as one-element lists, as the release does
(that makes torchdiffeq compute the error norm in float64 and reproduces the official step sequence).

A sampler setting is a field of ``SampleConfig`` (sfd/config.py) and a field of the same name in
:class:`SamplerOptions`, which copies it by name and takes its default from there; :func:`sample` reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import partial
from typing import Callable, Optional

import torch
from torch import nn
from torchdiffeq import odeint

from sfd.config import SampleConfig, SFDConfig
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


@dataclass(frozen=True)
class SamplerOptions:
    """Every sampling setting, decided once and applied to any number of batches: from a config
    (:meth:`from_config`: the release's rules, guidance included) or by hand. The fields named like ``SampleConfig``'s
    mean what they mean there and take its defaults, so a new setting is declared in the config and here."""

    split: TimeSplit = TimeSplit()  # the model's time split (Δt, semantic channels); the default is synchronous
    guidance: Optional[Guidance] = None  # None: the plain conditional velocity
    mode: str = SampleConfig.mode  # ODE | SDE (Euler–Maruyama, noise from the generator given to sample())
    sampling_method: str = SampleConfig.sampling_method  # euler | heun | any torchdiffeq method (ODE)
    num_sampling_steps: int = SampleConfig.num_sampling_steps  # grid points (adaptive solvers: output points)
    atol: float = SampleConfig.atol  # torchdiffeq tolerances
    rtol: float = SampleConfig.rtol
    timestep_shift: float = SampleConfig.timestep_shift  # 0 = off (TimeSplit.grid)
    phase_split: bool = SampleConfig.phase_split  # ODE: one solve per phase of a semantic-first model
    diffusion_form: str = SampleConfig.diffusion_form  # SDE: w(t), a key of DIFFUSION_FORMS
    diffusion_norm: float = SampleConfig.diffusion_norm  # SDE: scale of w(t)
    keep_trajectory: bool = False  # return every grid state (otherwise only the final one is held)

    def __post_init__(self) -> None:
        if self.mode not in ("ODE", "SDE"):
            raise ValueError(f"sample.mode: expected ODE or SDE (got {self.mode!r})")
        if self.sde and self.diffusion_form not in DIFFUSION_FORMS:
            raise ValueError(f"sample.diffusion_form: unknown {self.diffusion_form!r}; "
                             f"known: {', '.join(DIFFUSION_FORMS)}")
        if self.phased and self.timestep_shift > 0 and self.sampling_method in FIXED_GRID_METHODS:
            raise ValueError("sample.phase_split: a fixed grid with phase boundaries has no timestep shift "
                             "(set sample.timestep_shift=0)")

    @classmethod
    def from_config(cls, config: SFDConfig, guide: Optional[nn.Module] = None) -> "SamplerOptions":
        """The options of ``config.sample`` (every field of the same name) and ``config.model`` (the time split),
        guided by ``guide`` (AutoGuidance) when given, else by CFG when ``sample.cfg_scale`` > 1."""
        config_keys = {field.name for field in fields(SampleConfig)}
        settings = {field.name: getattr(config.sample, field.name) for field in fields(cls)
                    if field.name in config_keys}
        return cls(split=TimeSplit.from_config(config), guidance=Guidance.from_config(config, guide), **settings)

    @property
    def sde(self) -> bool:
        return self.mode == "SDE"

    @property
    def phased(self) -> bool:
        """Phase-aware ODE integration: asked for and meaningful (a semantic-first model has phases)."""
        return self.phase_split and not self.sde and self.split.semantic_first

    @property
    def batch_coupled(self) -> bool:
        """Whether a sample depends on its batch-mates: an adaptive solver (dopri5, ...) picks one step size for the
        whole batch; the fixed grids (Euler, Heun, Euler–Maruyama) step every row alike."""
        return not self.sde and self.sampling_method not in FIXED_GRID_METHODS

    def check_device(self, device: torch.device) -> None:
        """Refuse, before any work, options whose solver cannot run on ``device`` (see :func:`check_method_device`)."""
        if not self.sde:
            check_method_device(self.sampling_method, device)


@dataclass
class SampleResult:
    x: torch.Tensor  # final state at τ_max, [B, C, H, W]
    nfe: int  # number of drift evaluations (a guided evaluation counts once)
    trajectory: Optional[torch.Tensor] = None  # [grid points, B, C, H, W], only with keep_trajectory=True


def sample(model: nn.Module, z: torch.Tensor, y: torch.Tensor, options: SamplerOptions,
           generator: Optional[torch.Generator] = None) -> SampleResult:
    """Integrate from noise ``z`` [B, C, H, W] at τ = 0 to τ_max with labels ``y`` [B], as ``options`` say: the ODE
    over the (shifted) grid, the ODE phase by phase (``phase_split``: no step straddles the jumps of the drift at
    τ = Δt and τ = 1; adaptive solvers restart at both, fixed grids get points on them, :meth:`TimeSplit.phase_grid`)
    or the SDE, whose noise comes from ``generator``. Returns the final state, the number of drift evaluations and,
    only with ``keep_trajectory``, the state at every grid point (otherwise no earlier state is kept)."""
    drift = Drift(model, options.split, y, options.guidance)
    grid = options.split.grid(options.num_sampling_steps, options.timestep_shift).to(z.device)
    with torch.no_grad():
        if options.sde:
            diffusion = partial(DIFFUSION_FORMS[options.diffusion_form], norm=options.diffusion_norm)
            states = euler_maruyama(drift, z, grid, diffusion, generator, keep_trajectory=options.keep_trajectory)
        elif options.phased:
            states = solve_phases(drift, z, options)
        else:
            states = ode_solver(options)(drift, z, grid, options.keep_trajectory)
    trajectory = torch.stack(states) if options.keep_trajectory else None
    return SampleResult(x=states[-1], nfe=drift.evaluations, trajectory=trajectory)


@dataclass
class Drift:
    """dx/dτ: the guided velocity at split(τ), each channel group times its rate dt/dτ at τ (the constant lead:
    masked to the groups that move), or, with ``phase``, the rates inside that phase (:meth:`TimeSplit.rates`).
    Counts its evaluations (the NFE)."""

    model: nn.Module
    split: TimeSplit
    y: torch.Tensor
    guidance: Optional[Guidance] = None
    phase: Optional[int] = None
    evaluations: int = 0

    def __call__(self, tau: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``tau``: one time for the batch (a solver's scalar) or one per row [B]."""
        velocity, rates = self.velocity(tau, x)
        return velocity if rates is None else velocity * rates

    def velocity(self, tau: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The guided velocity at split(τ) and the groups' rates (None: both 1); one evaluation."""
        self.evaluations += 1
        if tau.dim() == 0:
            tau = tau.expand(x.shape[0])
        t_tex, t_sem = self.split.times(tau)
        # Under bf16/fp16 autocast the network returns half-precision velocities; the state stays in its dtype.
        velocity = guided_velocity(self.model, x, t_tex, t_sem, self.y, self.guidance,
                                   self.split.semantic_chans).to(x.dtype)
        return velocity, self.split.rates(tau, x, self.phase)


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
        x = x + (tau_next - tau) * drift(tau, x)
        record(states, x, keep_trajectory)
    return states


def heun(drift: Drift, x: torch.Tensor, grid: torch.Tensor, keep_trajectory: bool = True) -> list[torch.Tensor]:
    """Second-order Heun (trapezoidal predictor-corrector), two evaluations per step; every grid state or only the
    final one."""
    states = [x]
    for tau, tau_next in zip(grid[:-1], grid[1:]):
        step = tau_next - tau
        slope = drift(tau, x)
        predicted = x + step * slope
        x = x + step * 0.5 * (slope + drift(tau_next, predicted))
        record(states, x, keep_trajectory)
    return states


def check_method_device(method: str, device: torch.device) -> None:
    """A one-line ValueError when ODE ``method`` cannot run on ``device`` (the adaptive solvers need float64)."""
    if method in FLOAT64_METHODS and not has_float64(device):
        raise ValueError(f"{method} needs float64, which {device.type.upper()} lacks; use "
                         f"sample.sampling_method=euler/heun or SFD_DEVICE=cpu")


def solve_ode(drift: Drift, x: torch.Tensor, grid: torch.Tensor, keep_trajectory: bool = True, *,
              method: str = SampleConfig.sampling_method, atol: float = SampleConfig.atol,
              rtol: float = SampleConfig.rtol) -> list[torch.Tensor]:
    """torchdiffeq ``odeint``. Adaptive methods use the grid only as output points. Returns the state at every grid
    point, or, without ``keep_trajectory``, only the final one; then torchdiffeq is asked for the two end times
    alone where that leaves every step unchanged (see ADAPTIVE_RK_METHODS), instead of holding all grid states (250
    in the released setting) at once."""
    check_method_device(method, x.device)
    grid = grid.to(x.device)
    times, options = grid, None
    only_end_time = not keep_trajectory and len(grid) > 2
    if only_end_time and method in ADAPTIVE_RK_METHODS:
        times = grid[[0, -1]]
    elif only_end_time and method in TORCHDIFFEQ_FIXED_GRID_METHODS:
        times, options = grid[[0, -1]], {"grid_constructor": lambda _func, _y0, _t: grid}
    solution = odeint(drift, x, times, method=method, atol=[atol], rtol=[rtol], options=options)
    # clone: a view would keep the whole solution tensor (every requested time) alive and be saved with it.
    return list(solution) if keep_trajectory else [solution[-1].clone()]


def ode_solver(options: SamplerOptions) -> Callable[..., list[torch.Tensor]]:
    """The solver of ``options.sampling_method``, called as ``solver(drift, x, grid, keep_trajectory)``."""
    if options.sampling_method == "euler":
        return euler
    if options.sampling_method == "heun":
        return heun
    return partial(solve_ode, method=options.sampling_method, atol=options.atol, rtol=options.rtol)


def solve_phases(drift: Drift, x: torch.Tensor, options: SamplerOptions) -> list[torch.Tensor]:
    """The ODE solved phase after phase, each with its own fixed channel mask; fixed grids get a point on every
    phase boundary. Returns the grid states (a boundary that is not a grid point is left out) or the final one."""
    split, steps, keep_trajectory = drift.split, options.num_sampling_steps, options.keep_trajectory
    if options.sampling_method in FIXED_GRID_METHODS:
        grid = split.phase_grid(steps)
    else:
        grid = split.grid(steps, options.timestep_shift)
    grid = grid.to(x.device)
    solve = ode_solver(options)
    states = [x]
    for phase, times in enumerate(phase_segments(grid, split)):
        drift.phase = phase
        segment = solve(drift, x, times, keep_trajectory)
        x = segment[-1]
        if keep_trajectory:
            states += [state for time, state in zip(times[1:], segment[1:]) if bool((grid == time).any())]
        else:
            states = [x]
    drift.phase = None
    return states


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


def euler_maruyama(
    drift: Drift,
    x: torch.Tensor,
    grid: torch.Tensor,
    diffusion: Callable[[torch.Tensor], torch.Tensor],
    generator: Optional[torch.Generator],
    eps: float = 1e-3,
    keep_trajectory: bool = True,
) -> list[torch.Tensor]:
    """SDE sampler with the same marginals as the ODE: dx = [v + w(t)·s(x, t)] dτ + sqrt(2 w(t)) dW, with the
    score of the linear path s = (t·v − x)/(1 − t) and each channel group at its own time, advancing by its rate
    dt/dτ (:meth:`TimeSplit.rates`; drift and noise variance both scale with it, so frozen groups get neither).
    The last step is the noise-free mean step (the release's default last step). Returns every grid state, or only
    the final one."""
    split = drift.split
    states = [x]
    num_chans = x.shape[1]
    for index, (tau, tau_next) in enumerate(zip(grid[:-1], grid[1:])):
        tau_b = tau.expand(x.shape[0])
        step = tau_next - tau
        t = split.per_channel(*split.times(tau_b), num_chans).clamp(0.0, 1.0)
        v, rates = drift.velocity(tau_b, x)
        w = diffusion(t)
        score = (t * v - x) / (1 - t).clamp(min=eps)
        rates = torch.ones_like(t) if rates is None else rates
        # each group advances dt = rate·dτ of its own time (the constant lead: 0 or dτ)
        x = x + step * rates * (v + w * score)
        if index < len(grid) - 2:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + torch.sqrt(2 * w * rates * step) * noise
        record(states, x, keep_trajectory)
    return states


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
