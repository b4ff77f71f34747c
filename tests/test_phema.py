"""Post-hoc EMA (sfd/phema.py, docs/ema.md): the width ↔ exponent relation, tracking against the exact discrete
profile, the closed-form inner products against quadrature, reconstruction of tracked, in-between and classic EMAs,
bit-exact resuming, the snapshot files of a small training run and tools/reconstruct_ema.py on them, and the
one-line errors. CPU, tiny tensors, a few seconds in all."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sfd import phema
from sfd.checkpoint import CheckpointError, atomic_save, load_weights, read_file
from sfd.phema import PowerEMA

sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
import reconstruct_ema  # noqa: E402

TRACKED = (0.05, 0.10)


class Tiny(nn.Module):
    """A parameter vector, a floating buffer and an integer buffer: what the tracker averages and what it copies."""

    def __init__(self, size: int = 3, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size, dtype=dtype))
        self.register_buffer("scale", torch.ones(2, dtype=dtype))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def set(self, values: torch.Tensor, step: int) -> None:
        with torch.no_grad():
            self.weight.copy_(values)
            self.scale.fill_(float(step))
            self.count.fill_(step)


def random_walk(steps: int, size: int, seed: int = 0) -> torch.Tensor:
    """[steps + 1, size] float64 weights θ_0 … θ_steps drifting as a random walk, like weights under SGD noise."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(steps + 1, size, generator=generator, dtype=torch.float64).cumsum(0)


def track(weights: torch.Tensor, sigma_rels, snapshot_every: int) -> tuple[PowerEMA, list, torch.Tensor]:
    """Feed θ_1 … θ_T to a PowerEMA; returns it, the snapshots (step, gamma, state dict) of the TRACKED widths every
    ``snapshot_every`` steps, and the classic EMA with decay 0.995 started from θ_0."""
    model = Tiny(weights.shape[1])
    ema = PowerEMA(model, sigma_rels)
    classic = weights[0].clone()
    snapshots = []
    for step in range(1, weights.shape[0]):
        model.set(weights[step], step)
        ema.update(model, step)
        classic = torch.lerp(classic, weights[step], 1 - 0.995)
        if step % snapshot_every == 0:
            snapshots += [(step, phema.std_to_exponent(sigma), state) for sigma, state in ema.snapshot().items()
                          if sigma in TRACKED]
    return ema, snapshots, classic


def trapezoid(values: np.ndarray, grid: np.ndarray) -> float:
    """The trapezoid rule (numpy's own is np.trapz or np.trapezoid, depending on its version)."""
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid)))


def test_sigma_rel_and_exponent_round_trip_and_match_the_paper():
    sigma = np.array([0.001, 0.01, 0.05, 0.075, 0.10, 0.2, phema.MAX_SIGMA_REL])
    gamma = phema.std_to_exponent(sigma)
    np.testing.assert_allclose(phema.exponent_to_std(gamma), sigma, rtol=1e-12)
    np.testing.assert_allclose(phema.std_to_exponent(0.05), 16.97, atol=1e-2)  # the paper's examples
    np.testing.assert_allclose(phema.std_to_exponent(0.10), 6.94, atol=1e-2)
    assert phema.std_to_exponent(phema.MAX_SIGMA_REL) == 0.0 and isinstance(phema.std_to_exponent(0.1), float)
    cubic_roots = [np.roots([1, 7, 16 - s ** -2, 12 - s ** -2]).real.max() for s in sigma[:-1]]  # the cubic itself
    np.testing.assert_allclose(gamma[:-1], cubic_roots, rtol=1e-10)


def test_beta_starts_at_zero_and_follows_the_power_law():
    gamma = phema.std_to_exponent(0.10)
    assert phema.power_function_beta(1, gamma) == 0.0
    assert phema.power_function_beta(10, gamma) == pytest.approx(0.9 ** (gamma + 1), rel=1e-15)
    assert phema.power_function_beta(10, gamma, previous_step=5) == pytest.approx(0.5 ** (gamma + 1), rel=1e-15)


def test_tracking_equals_the_direct_power_function_average():
    """θ_τ's weight in the tracked average is (τ^(γ+1) − (τ−1)^(γ+1)) / T^(γ+1), within a factor (1 − 1/τ)^γ of the
    continuous (γ+1) τ^γ / T^(γ+1); the average matches Σ w_τ θ_τ in float64."""
    steps = 60
    weights = random_walk(steps, 3, seed=1)
    ema, _, _ = track(weights, TRACKED, snapshot_every=steps)
    for sigma, average in zip(ema.sigma_rels, ema.averages):
        gamma = phema.std_to_exponent(sigma)
        tau = np.arange(1, steps + 1, dtype=np.float64)
        exact = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / steps ** (gamma + 1)
        np.testing.assert_allclose(phema.power_function_weights(steps, gamma), exact, rtol=1e-12, atol=1e-300)
        ratio = exact / ((gamma + 1) * tau ** gamma / steps ** (gamma + 1))
        assert np.all(ratio <= 1 + 1e-12) and np.all(ratio >= (1 - 1 / tau) ** gamma - 1e-12)
        direct = (torch.from_numpy(exact)[:, None] * weights[1:]).sum(0)
        torch.testing.assert_close(average["weight"], direct, rtol=1e-12, atol=1e-12)


def test_the_discrete_profile_has_the_asked_width():
    steps = 100_000
    tau = np.arange(1, steps + 1)
    for sigma in (0.05, 0.10):
        weights = phema.power_function_weights(steps, phema.std_to_exponent(sigma))
        mean = (weights * tau).sum()
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.sqrt((weights * (tau - mean) ** 2).sum()) / steps == pytest.approx(sigma, rel=1e-4)


def test_inner_products_match_quadrature():
    def profile(grid, t, gamma):
        return np.where(grid <= t, (gamma + 1) * (grid / t) ** gamma / t, 0.0)

    grid = np.linspace(0.0, 300.0, 600_001)
    for (ta, ga), (tb, gb) in [((100, 5.0), (300, 10.0)), ((300, 17.0), (300, 7.0)), ((250, 0.5), (120, 2.0))]:
        expected = trapezoid(profile(grid, ta, ga) * profile(grid, tb, gb), grid)
        assert phema.profile_inner_products([ta], [ga], [tb], [gb])[0, 0] == pytest.approx(expected, rel=1e-4)
    rate = -np.log(0.99)
    for t, gamma in [(100, 5.0), (300, 17.0), (200, 0.0)]:
        grid = np.linspace(0.0, t, 600_001)  # the profile's support: no jump for the trapezoids to straddle
        expected = trapezoid(profile(grid, t, gamma) * rate * np.exp(-rate * (300 - grid)), grid)
        assert phema.exponential_inner_products([t], [gamma], 300, 0.99)[0] == pytest.approx(expected, rel=1e-6)


def test_reconstructing_a_tracked_width_recovers_it():
    weights = random_walk(400, 8, seed=2).float()
    _, snapshots, _ = track(weights, TRACKED, snapshot_every=50)
    for target_step, sigma in [(400, 0.05), (400, 0.10), (200, 0.10)]:
        rebuilt = phema.reconstruct(snapshots, sigma, target_step)
        original = next(state for step, gamma, state in snapshots
                        if step == target_step and gamma == phema.std_to_exponent(sigma))
        assert rebuilt.keys() == original.keys()
        for key in original:
            assert rebuilt[key].dtype == original[key].dtype
            torch.testing.assert_close(rebuilt[key], original[key])
        assert rebuilt["count"].item() == target_step  # integer buffers from a snapshot at the target step
    coefficients = phema.solve_reconstruction([100, 100, 200, 200], phema.std_to_exponent([0.05, 0.1, 0.05, 0.1]),
                                              100, phema.std_to_exponent(0.1))
    np.testing.assert_allclose(coefficients, [0, 1, 0, 0], atol=1e-9)


def test_an_in_between_width_and_a_classic_ema_land_near_their_tracked_averages():
    """σ_rel 0.075 and the classic EMA with decay 0.995 (σ_rel ≈ 0.1 at step 2000) rebuilt from snapshots of 0.05
    and 0.10 every 100 steps: closer to the directly tracked averages than either tracked width, and their profiles
    within 1 % (L1) of the targets'."""
    steps, every = 2000, 100
    weights = random_walk(steps, 64, seed=3)
    ema, snapshots, classic = track(weights, (0.05, 0.075, 0.10), snapshot_every=every)
    tracked = {sigma: average["weight"] for sigma, average in zip(ema.sigma_rels, ema.averages)}
    for rebuilt, truth in [(phema.reconstruct(snapshots, 0.075)["weight"], tracked[0.075]),
                           (phema.reconstruct_exponential(snapshots, 0.995)["weight"], classic)]:
        error = torch.dist(rebuilt, truth)
        assert error < 0.05 * min(torch.dist(tracked[0.05], truth), torch.dist(tracked[0.10], truth))

    snapshot_steps = [step for step, _, _ in snapshots]
    snapshot_gammas = [gamma for _, gamma, _ in snapshots]

    def profile_of(coefficients):
        padded = [np.pad(phema.power_function_weights(s, g), (0, steps - s)) for s, g in zip(snapshot_steps,
                                                                                            snapshot_gammas)]
        return np.sum([c * w for c, w in zip(coefficients, padded)], axis=0)

    middle = phema.solve_reconstruction(snapshot_steps, snapshot_gammas, steps, phema.std_to_exponent(0.075))
    target = phema.power_function_weights(steps, phema.std_to_exponent(0.075))
    assert np.abs(profile_of(middle) - target).sum() < 0.01
    exponential = phema.solve_exponential_reconstruction(snapshot_steps, snapshot_gammas, steps, 0.995)
    target = 0.005 * 0.995 ** (steps - np.arange(1, steps + 1))
    assert np.abs(profile_of(exponential) - target).sum() < 0.01


def test_state_dict_round_trip_resumes_bit_for_bit():
    weights = random_walk(30, 5, seed=4).float()
    model = Tiny(5, torch.float32)
    uninterrupted, first = PowerEMA(model, TRACKED), PowerEMA(model, TRACKED)
    for step in range(1, 31):
        model.set(weights[step], step)
        uninterrupted.update(model, step)
        if step <= 12:
            first.update(model, step)
        if step == 12:
            buffer = io.BytesIO()
            torch.save(first.state_dict(), buffer)
            resumed = PowerEMA(Tiny(5, torch.float32), TRACKED)
            resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
        if step > 12:
            resumed.update(model, step)
    assert resumed.step == uninterrupted.step == 30
    for expected, got in zip(uninterrupted.snapshot().values(), resumed.snapshot().values()):
        assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_buffers_are_copied_and_snapshots_are_independent_copies():
    model = Tiny(3)
    ema = PowerEMA(model, TRACKED)
    model.set(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 1)
    ema.update(model, 1)
    snapshot = ema.snapshot()
    model.set(torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64), 2)
    ema.update(model, 2)
    assert snapshot[0.05]["weight"].tolist() == [1.0, 2.0, 3.0] and snapshot[0.05]["count"].item() == 1
    after = ema.snapshot()[0.10]
    assert after["count"].item() == 2 and after["scale"].tolist() == [2.0, 2.0]  # copied, not averaged
    assert 1.0 < after["weight"][0].item() < 5.0


STEPS, EVERY = 60, 4  # the small run: its length and snapshot interval, in optimizer steps
CONFIG = {"train": {"global_batch_size": 32}}


def small_network() -> nn.Module:
    """Linear layers around a batch norm: averaged weights, copied floating buffers and an integer counter."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A small regression trained for STEPS steps of SGD with power EMAs of TRACKED written to run/power_ema every
    EVERY steps (save_snapshots), and σ_rel 0.075 tracked directly beside them. Returns (run, tracked, direct)."""
    run = tmp_path_factory.mktemp("run")
    model = small_network()
    tracked, direct = PowerEMA(model, TRACKED), PowerEMA(model, (0.075,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(4, 1, generator=generator)
    for step in range(1, STEPS + 1):
        x = torch.randn(32, 4, generator=generator)
        loss = (model(x) - (x @ truth).sin()).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tracked.update(model, step)
        direct.update(model, step)
        if step % EVERY == 0:
            phema.save_snapshots(run / phema.SNAPSHOT_FOLDER, tracked, 32 * step, CONFIG)
    return run, tracked, direct


def test_snapshot_files_round_trip(tmp_path):
    model = Tiny(3)
    ema = PowerEMA(model, (0.10, 1e-5, 0.05))
    with pytest.raises(ValueError, match="step 0"):
        phema.save_snapshots(tmp_path, ema, 0)
    written = []
    for step in (1, 2, 3):
        model.set(torch.full((3,), float(step), dtype=torch.float64), step)
        ema.update(model, step)
        if step >= 2:
            written += phema.save_snapshots(tmp_path, ema, 8 * step, CONFIG if step == 3 else None)
    assert [path.name for path in written[3:]] == ["0000003_sigma0.1.pt", "0000003_sigma1e-05.pt",
                                                   "0000003_sigma0.05.pt"]
    for stray in ("notes.txt", "ema_sigma0.05_0000003.pt", ".0000003_sigma0.05.pt.host.1.0123abcd.tmp"):
        (tmp_path / stray).write_bytes(b"")
    files = phema.snapshot_files(tmp_path)
    assert [(file.step, file.sigma_rel) for file in files] == [(step, sigma) for step in (2, 3)
                                                               for sigma in (1e-5, 0.05, 0.10)]
    for sigma, average in ema.snapshot().items():
        path = next(path for path in written[3:] if path.name.endswith(f"_sigma{sigma:g}.pt"))
        step, gamma, state = phema.load_snapshot(path)
        assert (step, gamma) == (3, phema.std_to_exponent(sigma))
        assert state.keys() == average.keys() and all(torch.equal(state[key], average[key]) for key in state)
        payload = read_file(path)
        assert (payload["images_seen"], payload["sigma_rel"], payload["config"]) == (24, sigma, CONFIG)
    assert "config" not in read_file(written[0])


def test_a_tracked_width_is_rebuilt_from_the_files_at_any_snapshot_step(trained_run):
    run, _, _ = trained_run
    folder = run / phema.SNAPSHOT_FOLDER
    for sigma, step in [(0.05, STEPS), (0.10, STEPS), (0.10, 32)]:
        rebuilt, info = phema.reconstruct_from_folder(folder, sigma_rel=sigma, step=step)
        _, _, snapshot = phema.load_snapshot(folder / f"{step:07d}_sigma{sigma:g}.pt")
        assert rebuilt.keys() == snapshot.keys()
        for key in snapshot:
            assert rebuilt[key].dtype == snapshot[key].dtype
            torch.testing.assert_close(rebuilt[key], snapshot[key])
        assert info["step"] == step and len(info["sources"]) == len(info["coefficients"]) == 2 * step // EVERY
        assert info["sources"][-1].startswith(f"{step:07d}_") and sum(info["coefficients"]) == pytest.approx(1)


def test_an_in_between_width_lands_closer_to_its_direct_average_than_either_tracked_one(trained_run):
    run, tracked, direct = trained_run
    rebuilt, _ = phema.reconstruct_from_folder(run / phema.SNAPSHOT_FOLDER, sigma_rel=0.075)

    def distance(state) -> float:
        return sum(float((state[key].double() - direct.averages[0][key].double()).square().sum())
                   for key in tracked.averaged_keys) ** 0.5

    assert distance(rebuilt) < 0.1 * min(distance(average) for average in tracked.averages)


def test_the_tool_writes_checkpoints_that_load_strictly(trained_run, tmp_path, capsys):
    run, tracked, _ = trained_run
    out = tmp_path / "out"
    assert reconstruct_ema.main([str(run), "--sigma-rel", "0.05", "0.075", "--decay", "0.9", "--out", str(out)]) == 0
    output = capsys.readouterr()
    names = ["ema_sigma0.05_0000060.pt", "ema_sigma0.075_0000060.pt", "ema_decay0.9_0000060.pt"]
    assert sorted(path.name for path in out.iterdir()) == sorted(names) and output.err == ""
    assert [line.split()[1] for line in output.out.splitlines()] == [str(out / name) for name in names]
    for name in names:
        payload = read_file(out / name)
        assert payload["config"] == CONFIG and payload["power_ema"]["step"] == STEPS
        assert len(payload["power_ema"]["sources"]) == len(payload["power_ema"]["coefficients"]) == 2 * STEPS // EVERY
        model = load_weights(small_network(), out / name)  # strict, as sfd.build.load_model loads
        if name.startswith("ema_sigma0.05_"):
            expected = tracked.snapshot()[0.05]
            for key, value in model.state_dict().items():
                torch.testing.assert_close(value, expected[key])

    snapshots = run / phema.SNAPSHOT_FOLDER
    assert reconstruct_ema.main([str(snapshots), "--decay", "0.99", "--step", "32"]) == 0  # default --out
    output = capsys.readouterr()
    assert (run / "power_ema_reconstructed" / "ema_decay0.99_0000032.pt").is_file()
    assert output.err.startswith("warning: decay 0.99 at step 32: ") and output.err.count("\n") == 1
    files = phema.snapshot_files(snapshots)
    assert phema.exponential_caveat(files, 0.9) is None
    assert "two snapshot intervals" in phema.exponential_caveat(files, 0.5)


@pytest.mark.parametrize("arguments, message", [
    (["EMPTY", "--sigma-rel", "0.05"], "holds no power-EMA snapshots"),
    (["RUN", "--sigma-rel", "0.05", "--step", "30"], "target_step=30 is not a snapshot step"),
    (["RUN", "--sigma-rel", "0.05", "0.5"], "sigma_rel must be in"),
    (["RUN", "--sigma-rel", "0.05", "--decay", "1.0"], "decay must be in (0, 1)"),
    (["RUN"], "nothing to rebuild"),
])
def test_tool_errors_are_one_line_and_write_nothing(trained_run, tmp_path, capsys, arguments, message):
    run, _, _ = trained_run
    (tmp_path / "empty").mkdir()
    places = {"EMPTY": str(tmp_path / "empty"), "RUN": str(run)}
    out = tmp_path / "out"
    assert reconstruct_ema.main([places.get(word, word) for word in arguments] + ["--out", str(out)]) == 2
    output = capsys.readouterr()
    assert output.out == "" and output.err.startswith("error: ") and output.err.count("\n") == 1
    assert message in output.err and not out.exists()


def test_files_that_are_not_snapshots_or_not_what_their_names_say_are_refused(trained_run, tmp_path):
    run, _, _ = trained_run
    atomic_save({"ema": {"weight": torch.zeros(2)}, "step": 4, "sigma_rel": 0.05}, tmp_path / "0000004_sigma0.05.pt")
    with pytest.raises(CheckpointError, match="missing 'gamma'") as error:
        phema.load_snapshot(tmp_path / "0000004_sigma0.05.pt")
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "0000004_sigma0.1.pt").write_bytes((run / phema.SNAPSHOT_FOLDER / "0000004_sigma0.05.pt").read_bytes())
    with pytest.raises(CheckpointError, match="not what its name says"):
        phema.reconstruct_from_folder(renamed, sigma_rel=0.1)


def bad_inputs():
    model, snapshot = Tiny(), [(10, 7.0, Tiny().state_dict())]
    ema = PowerEMA(model, TRACKED)
    ema.update(model, 3)
    return {
        "negative sigma_rel": (lambda: phema.std_to_exponent(-0.1), "sigma_rel"),
        "sigma_rel above 1/sqrt(12)": (lambda: phema.std_to_exponent([0.05, 0.3]), "sigma_rel"),
        "negative gamma": (lambda: phema.exponent_to_std(-1.0), "gamma"),
        "step 0": (lambda: phema.power_function_beta(0, 7.0), "step"),
        "empty snapshot list": (lambda: phema.reconstruct([], 0.05), "snapshots"),
        "target step beyond the snapshots": (lambda: phema.reconstruct(snapshot, 0.05, target_step=20), "target_step"),
        "target step between snapshots": (lambda: phema.solve_reconstruction([10, 20], [7, 7], 15, 7), "target_step"),
        "repeated snapshot": (lambda: phema.solve_reconstruction([10, 10], [7, 7], 10, 5), "snapshot_steps"),
        "mismatched lengths": (lambda: phema.solve_reconstruction([10, 20], [7], 20, 5), "steps and gammas"),
        "decay 1": (lambda: phema.solve_exponential_reconstruction([10], [7], 10, 1.0), "decay"),
        "no sigma_rels": (lambda: PowerEMA(model, []), "sigma_rels"),
        "step not increasing": (lambda: ema.update(model, 3), "step"),
        "other widths on resume": (lambda: PowerEMA(model, (0.05,)).load_state_dict(ema.state_dict()), "sigma_rels"),
        "other model": (lambda: ema.update(nn.Linear(2, 2), 4), "model"),
    }


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_inputs_raise_one_line_value_errors(case):
    call, names = bad_inputs()[case]
    with pytest.raises(ValueError) as error:
        call()
    assert names in str(error.value) and "\n" not in str(error.value)
