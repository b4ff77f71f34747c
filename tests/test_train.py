"""The trainer on CPU: process-count independence, exact resume, learning, NaN stop, the launcher."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sfd.checkpoint import latest_checkpoint
from sfd.config import load_config
from sfd.data.synthetic import write_synthetic_shards
from sfd.train import Trainer, TrainingError

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    write_synthetic_shards(root / "sfd", num_items=32, num_classes=4, dino_dim=768, shard_size=16)
    write_synthetic_shards(root / "valid", num_items=8, num_classes=4, dino_dim=768, seed=1)
    return root


def tiny_config(data, run_dir, *overrides, config="configs/tiny/sfd_tiny.yaml"):
    return load_config(ROOT / config, [
        f"data.data_path={data / 'sfd'}", f"train.output_dir={run_dir}", "train.exp_name=run",
        "train.global_batch_size=8", "train.log_every=1", "train.ckpt_every=3", "train.max_steps=6",
        "optimizer.lr=1e-3", "train.ema_decay=0.9", "train.tensorboard=false", *overrides])


def final_state(run_dir):
    return torch.load(latest_checkpoint(Path(run_dir) / "run" / "checkpoints"), weights_only=True)


def test_resume_after_a_kill_is_exact(data, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    Trainer(tiny_config(data, straight)).run(progress=False)

    interrupted = tmp_path / "interrupted"
    original = Trainer.train_step

    def killed_after_step_4(self, *args):
        if self.step == 4:
            raise KeyboardInterrupt  # the process dies between checkpoints 3 and 6
        return original(self, *args)

    monkeypatch.setattr(Trainer, "train_step", killed_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(data, interrupted)).run(progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert latest_checkpoint(interrupted / "run" / "checkpoints").name == "0000003.pt"
    resumed = Trainer(tiny_config(data, interrupted))
    assert resumed.step == 3 and resumed.images_seen == 24
    resumed.run(progress=False)

    a, b = final_state(straight), final_state(interrupted)
    assert a["step"] == b["step"] == 6 and a["data_position"] == b["data_position"]
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for index, state in a["opt"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["opt"]["state"][index][name]), (index, name)


def test_resume_false_refuses_a_run_folder_with_checkpoints(data, tmp_path):
    Trainer(tiny_config(data, tmp_path, "train.max_steps=3")).run(progress=False)
    with pytest.raises(TrainingError, match="train.resume is false but .* holds checkpoints"):
        Trainer(tiny_config(data, tmp_path, "train.resume=false"))
    assert Trainer(tiny_config(data, tmp_path, "train.resume=true")).step == 3
    assert Trainer(tiny_config(data, tmp_path / "fresh", "train.resume=false")).step == 0  # nothing to refuse


@pytest.mark.parametrize("config", ["configs/tiny/sfd_tiny.yaml", "configs/tiny/baseline_tiny.yaml"])
def test_loss_decreases(data, tmp_path, config):
    trainer = Trainer(tiny_config(data, tmp_path, "train.max_steps=40", "train.ckpt_every=40", config=config))
    trainer.run(progress=False)
    import json

    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5


def test_validation_loss_is_logged(data, tmp_path):
    Trainer(tiny_config(data, tmp_path, f"data.valid_path={data / 'valid'}", "train.valid_every=3")).run(progress=False)
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert log.count("valid_mse_t0.5") == 2
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    from sfd.data.latents import LatentShardDataset

    original = LatentShardDataset.__getitem__

    def poisoned(self, key):
        item = original(self, key)
        index = key[0] if isinstance(key, tuple) else key
        if index == 5 and self.flip_prob > 0:
            item.latent[0, 0, 0] = float("nan")
        return item

    trainer = Trainer(tiny_config(data, tmp_path, "train.ckpt_every=1", "train.max_steps=8"))
    monkeypatch.setattr(LatentShardDataset, "__getitem__", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite loss.*intact"):
        trainer.run(progress=False)
    last = latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = torch.load(last, weights_only=True)
    assert state["step"] == trainer.step and all(torch.isfinite(v).all() for v in state["model"].values())


def test_bad_batch_sizes_fail_clearly(data, tmp_path):
    with pytest.raises(TrainingError, match="larger than the dataset"):
        Trainer(tiny_config(data, tmp_path, "train.global_batch_size=64")).run(progress=False)
    from sfd.distributed import Topology

    with pytest.raises(TrainingError, match="not divisible by the 3 processes"):
        Trainer(tiny_config(data, tmp_path), Topology(rank=0, world_size=3))


def test_two_processes_match_one_through_run_train_sh(data, tmp_path):
    """run_train.sh with GPUS_PER_NODE=2 (gloo) trains the same weights as one process with the same global batch."""
    overrides = [f"data.data_path={data / 'sfd'}", "train.exp_name=run", "train.global_batch_size=8",
                 "train.max_steps=4", "train.ckpt_every=4", "train.log_every=1", "optimizer.lr=1e-3",
                 "train.tensorboard=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PRECISION": "fp32",
           "MASTER_PORT": "29533", "PYTHON": sys.executable}
    one = subprocess.run([sys.executable, "scripts/train.py", "--config", "configs/tiny/sfd_tiny.yaml",
                          f"train.output_dir={tmp_path / 'one'}", *overrides, "--no-progress"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(["bash", "run_train.sh", "configs/tiny/sfd_tiny.yaml", f"train.output_dir={tmp_path / 'two'}",
                          *overrides, "--no-progress"], cwd=ROOT, env={**env, "GPUS_PER_NODE": "2"},
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 process(es)" in two.stdout
    a, b = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5, rtol=1e-4), key

    dry = subprocess.run(["bash", "run_train.sh", "configs/tiny/sfd_tiny.yaml", "train.max_steps=7", "--dry-run"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "max_steps: 7" in dry.stdout and "precision: fp32" in dry.stdout


def test_ema_export_loads_for_inference(data, tmp_path):
    import sfd

    sys.path.insert(0, str(ROOT / "tools"))
    import export_ema

    trainer = Trainer(tiny_config(data, tmp_path, "train.max_steps=2", "train.ckpt_every=2"))
    trainer.run(progress=False)
    for name in ("ema.pt", "ema.safetensors"):
        assert export_ema.main([str(tmp_path / "run"), str(tmp_path / name)]) == 0
        model = sfd.build_model(load_config(ROOT / "configs/tiny/sfd_tiny.yaml"))
        sfd.load_weights(model, tmp_path / name)
        for key, value in trainer.ema.state_dict().items():
            assert torch.equal(model.state_dict()[key], value)
    assert export_ema.main([str(tmp_path / "missing")]) == 2


def test_in_memory_data_path_trains_identically(data, tmp_path):
    """data.in_memory gives the same batches (flips included, over an epoch boundary) and so the same weights."""
    from sfd.data.latents import InMemoryLatents

    runs = {}
    for in_memory in (False, True):
        run_dir = tmp_path / str(in_memory)
        Trainer(tiny_config(data, run_dir, f"data.in_memory={str(in_memory).lower()}", "train.max_steps=9",
                            "train.ckpt_every=9")).run(progress=False)
        runs[in_memory] = final_state(run_dir)
    for part in ("model", "ema"):
        for key, value in runs[False][part].items():
            assert torch.equal(value, runs[True][part][key]), (part, key)

    trainer = Trainer(tiny_config(data, tmp_path / "batches"))
    memory = InMemoryLatents(trainer.dataset)
    keys = [(index, epoch) for epoch in (0, 3) for index in (0, 5, 17, 31)]
    from sfd.data.latents import collate_latents

    expected = collate_latents([trainer.dataset[key] for key in keys])
    for got, want in zip(memory.batch(keys), expected):
        assert torch.equal(got, want)
    with pytest.raises(IndexError, match="out of range for 32 latents"):
        memory.batch([(32, 0)])


class Evil:
    """A pickle that would run a command when loaded by an unsafe reader."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def corrupt(path: Path, kind: str, data) -> None:
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "other model":  # a checkpoint of the texture-only baseline: other keys and shapes
        other = Trainer(tiny_config(data, path.parent / "other", config="configs/tiny/baseline_tiny.yaml"))
        torch.save({"model": other.model.state_dict(), "ema": other.ema.state_dict(),
                    "opt": other.state.optimizer.state_dict(), "step": 6, "images_seen": 48}, path)
    elif kind == "malicious":
        torch.save({"model": Evil()}, path)
    else:
        torch.save({"weights": {}}, path)  # readable, but not a training checkpoint


@pytest.mark.parametrize("kind", ["truncated", "random", "other model", "malicious", "foreign"])
def test_a_bad_latest_checkpoint_falls_back_to_the_previous_one(data, tmp_path, kind, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Trainer(tiny_config(data, tmp_path)).run(progress=False)
    latest = tmp_path / "run" / "checkpoints" / "0000006.pt"
    corrupt(latest, kind, data)
    trainer = Trainer(tiny_config(data, tmp_path))
    assert trainer.step == 3 and trainer.resumed_from.name == "0000003.pt"
    assert len(trainer.skipped_checkpoints) == 1 and str(latest) in trainer.skipped_checkpoints[0]
    assert "\n" not in trainer.skipped_checkpoints[0]
    err = capsys.readouterr().err
    assert f"warning: skipping checkpoint: {latest}" in err and "resuming from the older checkpoint" in err
    assert not (tmp_path / "pwned").exists()
    if kind == "truncated":  # retraining from step 3 ends where the uninterrupted run ended
        straight = tmp_path / "straight"
        Trainer(tiny_config(data, straight)).run(progress=False)
        trainer.run(progress=False)
        a, b = final_state(straight), final_state(tmp_path)
        for part in ("model", "ema"):
            assert all(torch.equal(a[part][key], b[part][key]) for key in a[part]), part


def test_no_usable_checkpoint_stops_with_one_line(data, tmp_path):
    Trainer(tiny_config(data, tmp_path, "train.max_steps=3")).run(progress=False)
    (tmp_path / "run" / "checkpoints" / "0000003.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match=r"none of its 1 checkpoint\(s\) can resume this run \(newest: .*0000003"):
        Trainer(tiny_config(data, tmp_path, "train.max_steps=3"))


def test_a_second_trainer_on_a_locked_run_folder_refuses(data, tmp_path):
    from sfd.runlock import LOCK_NAME, RunFolderBusy

    owner = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / LOCK_NAME).write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname(),
                                                               "started": 0}))
        with pytest.raises(RunFolderBusy, match=f"in use by pid {owner.pid}"):
            Trainer(tiny_config(data, tmp_path)).run(progress=False)
        assert not (tmp_path / "run" / "checkpoints").exists()  # refused before writing anything
    finally:
        owner.kill()
        owner.wait()
    trainer = Trainer(tiny_config(data, tmp_path, "train.max_steps=3"))  # the owner is gone: the lock is stale
    trainer.run(progress=False)
    assert trainer.step == 3 and not (tmp_path / "run" / LOCK_NAME).exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_two_ranks(data, folders, *overrides):
    """scripts/train.py as ranks 0 and 1 of one group, each started in its own folder with a relative
    train.output_dir: rank 1 cannot see the checkpoints rank 0 writes (node-local disks, no shared filesystem)."""
    port = free_port()
    processes = []
    for rank, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "SFD_DEVICE": "cpu"}
        processes.append(subprocess.Popen(
            [sys.executable, str(ROOT / "scripts/train.py"), "--config", str(ROOT / "configs/tiny/sfd_tiny.yaml"),
             f"data.data_path={data / 'sfd'}", "train.output_dir=runs", "train.exp_name=run",
             "train.global_batch_size=8", "train.ckpt_every=3", "train.log_every=1", "optimizer.lr=1e-3",
             "train.tensorboard=false", "train.precision=fp32", *overrides, "--no-progress"],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]


def test_resume_without_a_shared_filesystem_and_a_log_without_repeats(data, tmp_path):
    train_two_ranks(data, [tmp_path / "straight0", tmp_path / "straight1"], "train.max_steps=6")
    split = [tmp_path / "node0", tmp_path / "node1"]
    train_two_ranks(data, split, "train.max_steps=3")
    assert not (split[1] / "runs" / "run" / "checkpoints").exists()  # only rank 0 writes
    log = split[0] / "runs" / "run" / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 4, "loss": 1.0}\n{"step": 5, "lo')  # logged by a run killed at 5
    train_two_ranks(data, split, "train.max_steps=6")  # rank 1 gets the state of step 3 from rank 0
    a, b = final_state(tmp_path / "straight0" / "runs"), final_state(split[0] / "runs")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][key], b[part][key]) for key in a[part]), part
    for index, state in a["opt"]["state"].items():
        assert all(torch.equal(value, b["opt"]["state"][index][name]) for name, value in state.items())
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step once, the killed run's 4 and 5 replaced


def test_the_log_reports_throughput_per_device_and_mfu(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SFD_PEAK_TFLOPS", "1")  # a CPU has no datasheet peak; give one
    trainer = Trainer(tiny_config(data, tmp_path, "train.max_steps=2"))
    trainer.run(progress=False)
    record = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()][-1]
    from sfd.throughput import training_flops_per_image

    assert record["images_per_s_per_device"] == record["images_per_s"]  # one process
    expected = record["images_per_s_per_device"] * training_flops_per_image(trainer.config) / 1e12
    assert record["mfu"] == pytest.approx(expected)


# Loaded by every Python process of the run below through PYTHONPATH (site imports a sitecustomize module at start):
# the rank-1 worker of the first attempt kills itself with SIGKILL before step 4, after the checkpoint of step 3.
KILL_RANK_1 = '''
import os
if os.environ.get("RANK") == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    import signal
    import sfd.train
    original = sfd.train.Trainer.train_step
    def killed_before_step_4(self, *args):
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args)
    sfd.train.Trainer.train_step = killed_before_step_4
'''


def test_an_elastic_run_survives_a_killed_worker(data, tmp_path):
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(KILL_RANK_1)
    overrides = [f"data.data_path={data / 'sfd'}", "train.exp_name=run", "train.global_batch_size=8",
                 "train.max_steps=6", "train.ckpt_every=3", "train.log_every=1", "optimizer.lr=1e-3",
                 "train.tensorboard=false", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRECISION": "fp32", "PYTHON": sys.executable,
           "GPUS_PER_NODE": "2", "SFD_DEVICE": "cpu"}
    for name, extra in (("straight", {}), ("killed", {"MAX_RESTARTS": "1"})):
        hooks = f"{tmp_path / 'hooks'}:" if name == "killed" else ""
        result = subprocess.run(["bash", "run_train.sh", "configs/tiny/sfd_tiny.yaml",
                                 f"train.output_dir={tmp_path / name}", *overrides], cwd=ROOT,
                                env={**env, **extra, "PYTHONPATH": f"{hooks}{ROOT}"}, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout and "0000003.pt" in result.stdout  # the restart, after the kill
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "killed")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][key], b[part][key]) for key in a[part]), part
    for index, state in a["opt"]["state"].items():
        assert all(torch.equal(value, b["opt"]["state"][index][name]) for name, value in state.items())
    log = (tmp_path / "killed" / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log if "loss" in json.loads(line)] == [1, 2, 3, 4, 5, 6]


def test_power_ema_snapshots_survive_kill_and_resume_bit_for_bit(data, tmp_path, monkeypatch):
    """Post-hoc EMA (docs/ema.md): the trackers are part of the checkpoint, so a killed run's snapshots equal an
    uninterrupted run's; they also equal a direct power-function average of the weights after each step."""
    from sfd.phema import PowerEMA, load_snapshot, snapshot_files

    widths = ("train.power_ema_sigma_rels=[0.1,0.2]", "train.power_ema_every=2")
    straight = Trainer(tiny_config(data, tmp_path / "straight", *widths))
    direct = PowerEMA(straight.model, (0.1, 0.2))
    original = Trainer.train_step

    def tracked(self, *args):
        record = original(self, *args)
        if self is straight:
            direct.update(self.model, self.step)
        return record

    monkeypatch.setattr(Trainer, "train_step", tracked)
    straight.run(progress=False)

    def killed_after_step_4(self, *args):
        if self.step == 4:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(Trainer, "train_step", killed_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config(data, tmp_path / "interrupted", *widths)).run(progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    Trainer(tiny_config(data, tmp_path / "interrupted", *widths)).run(progress=False)

    files = {run: snapshot_files(tmp_path / run / "run" / "power_ema") for run in ("straight", "interrupted")}
    assert [(f.step, f.sigma_rel) for f in files["straight"]] == [(s, w) for s in (2, 4, 6) for w in (0.1, 0.2)]
    for a, b in zip(files["straight"], files["interrupted"]):
        step, _, weights = load_snapshot(a.path)
        assert load_snapshot(b.path)[0] == step
        for key, value in weights.items():
            assert torch.equal(value, load_snapshot(b.path)[2][key]), (a.path.name, key)
    for width, average in zip((0.1, 0.2), direct.snapshot().values()):
        final = load_snapshot(next(f.path for f in files["straight"] if f.step == 6 and f.sigma_rel == width))[2]
        for key, value in average.items():
            assert torch.equal(value, final[key]), (width, key)
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "interrupted")
    assert a["power_ema"]["step"] == b["power_ema"]["step"] == 6


def test_tracking_power_emas_changes_no_weight(data, tmp_path):
    """The study scores a tracking run's classic EMA from its non-tracking twin (fashion.scored_name)."""
    Trainer(tiny_config(data, tmp_path / "plain")).run(progress=False)
    Trainer(tiny_config(data, tmp_path / "tracked", "train.power_ema_sigma_rels=[0.1]",
                        "train.power_ema_every=2")).run(progress=False)
    a, b = final_state(tmp_path / "plain"), final_state(tmp_path / "tracked")
    for part in ("model", "ema"):
        assert all(torch.equal(value, b[part][key]) for key, value in a[part].items()), part


def test_power_ema_cannot_be_switched_on_mid_run(data, tmp_path):
    Trainer(tiny_config(data, tmp_path, "train.max_steps=3")).run(progress=False)
    with pytest.raises(TrainingError, match="train.power_ema_sigma_rels is \\[0.1\\] but the checkpoint tracked none"):
        Trainer(tiny_config(data, tmp_path, "train.power_ema_sigma_rels=[0.1]"))


@pytest.mark.parametrize("widths, message", [("[0.1,0.1]", "distinct"), ("[0.5]", "1/sqrt\\(12\\)"),
                                             ("[0.0]", "1/sqrt\\(12\\)")])
def test_power_ema_widths_are_checked_at_load(data, tmp_path, widths, message):
    with pytest.raises(Exception, match=f"train.power_ema_sigma_rels.*{message}"):
        tiny_config(data, tmp_path, f"train.power_ema_sigma_rels={widths}")
