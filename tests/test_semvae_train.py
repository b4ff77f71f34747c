"""SemVAE trainer: the official lr schedule, the ch16 config layout, sharded feature reading, checkpoints in the
official layout, exact kill-and-resume, warm start from an official checkpoint, and one-line errors."""

import json
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sfd.checkpoint import CheckpointError, latest_checkpoint
from sfd.config import ConfigError
from sfd.runlock import LOCK_NAME, RunFolderBusy
from sfd.tokenizers import semvae_train
from sfd.tokenizers.semvae import load_semvae
from sfd.tokenizers.semvae_train import (
    CHECKPOINT_PATTERN,
    DataError,
    FeatureShards,
    LRSchedule,
    epoch_order,
    evaluate,
    feature_files,
    load_train_config,
    train,
)
from tests.conftest import load_script

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data" / "semvae"
TINY = ROOT / "configs/semvae/tiny.yaml"
OFFICIAL_KEYS = ["iteration", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "loss",
                 "loss_averages", "config", "input_dim", "bottleneck_dim"]


def write_shards(folder: Path, sizes, tokens=16, dim=32, seed=0, labels=True) -> torch.Tensor:
    """Random fp16 feature shards; returns all their tokens in global order (as fp32)."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for index, size in enumerate(sizes):
        data = {"patch_tokens": torch.randn(size, tokens, dim, generator=generator).half()}
        if labels:
            data["labels"] = torch.randint(0, 10, (size,), generator=generator)
        save_file(data, str(folder / f"shard_{index:03d}.safetensors"))
        parts.append(data["patch_tokens"].float())
    return torch.cat(parts)


@pytest.fixture
def features(tmp_path):
    """22 training samples in 3 shards (batch 4: 6 batches an epoch, the last one of 2) and 8 held out."""
    write_shards(tmp_path / "train", [10, 7, 5])
    write_shards(tmp_path / "val", [8], seed=1, labels=False)
    return tmp_path


def tiny_config(root: Path, run: str, *overrides: str):
    return load_train_config(TINY, [f"variables.output_root={root / run}", f"data.feature_dir={root / 'train'}",
                                    f"training.evaluation.feature_dir={root / 'val'}", *overrides])


def train_log(root: Path, run: str) -> list[dict]:
    return [json.loads(line) for line in (root / run / "train_log.jsonl").read_text().splitlines()]


def same_weights(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[key], b[key]) for key in a)


# ------------------------------------------------------------------------------------------------ schedule, config

def test_lr_schedule_matches_the_official_scheduler():
    table = json.loads((DATA / "semvae_lr_schedule_ch16.json").read_text())
    lrs = next(value for key, value in table.items() if key.startswith("lr_at_iteration"))
    schedule = LRSchedule.from_config(load_train_config(ROOT / "configs/semvae/ch16.yaml").training)
    assert (schedule.base_lr, schedule.warmup, schedule.constant, schedule.total) == (
        table["base_lr"], table["warmup_steps"], table["constant_steps"], table["total_iterations"])
    for step, lr in lrs.items():
        assert schedule(int(step)) == pytest.approx(lr, rel=1e-10, abs=0), step


def test_ch16_config_has_the_release_values():
    config = load_train_config(ROOT / "configs/semvae/ch16.yaml")
    training = config.training
    assert (training.optimizer.lr, training.optimizer.weight_decay, training.loss.kl_weight) == (5e-5, 0.01, 1e-7)
    assert training.total_iterations == 1_000_000 and training.scheduler.constant_steps == 800_000
    assert config.data.batch_size == 64
    assert training.loss.cosine_axis == "tokens" and training.mixed_precision == "bf16"
    output_root = "outputs/semantic_vae/dinov2_vitb14_reg/transformer_ch16"
    assert training.checkpointing.checkpoint_dir == f"{output_root}/checkpoints"
    assert training.log.swandb_exp_name == "arch_transformer_ch16"


@pytest.mark.parametrize("override, key", [
    ("model.no_such_key=1", "model.no_such_key"),
    ("training.loss.focal_weight=1", "training.loss.focal_weight"),
    ("training.optimizer.lr=fast", "training.optimizer.lr"),
    ("training.loss.cosine_axis=channels", "training.loss.cosine_axis"),
    ("training.loss.classification_weight=0.1", "training.loss.classification_weight"),
    ("model.arch=mlp", "model.arch"),
    ("model.params.transformer_heads=5", "model.params.hidden_dim"),
    ("training.mixed_precision=fp16", "training.mixed_precision"),
    ("training.optimizer.type=SGD", "training.optimizer.type"),
    ("variables.bottleneck_dim=sixteen", "model.bottleneck_dim"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_train_config(ROOT / "configs/semvae/ch16.yaml", [override])


# ------------------------------------------------------------------------------------------------ features

def test_shards_read_lazily_in_global_order(tmp_path):
    everything = write_shards(tmp_path / "train", [10, 7, 5])
    shards = FeatureShards(feature_files(str(tmp_path / "train"), "any", None, "data.feature_dir"))
    assert (len(shards), shards.tokens_per_sample, shards.dim) == (22, 16, 32)
    indices = [21, 3, 9, 10, 11, 12, 0, 16, 17]  # crosses both shard boundaries, with runs and jumps
    batch = shards[indices]
    assert batch.tokens.dtype == torch.float32 and torch.equal(batch.tokens, everything[indices])
    assert batch.labels.shape == (9,)
    assert len(FeatureShards(shards.files, max_samples=12)) == 12


def test_official_single_file_layout_is_found(tmp_path):
    folder = tmp_path / "feats" / "dinov2_vitb14_reg"
    folder.mkdir(parents=True)
    save_file({"patch_tokens": torch.zeros(3, 4, 8).half(), "cls_tokens": torch.zeros(3, 8).half(),
               "class_indices": torch.arange(3)}, str(folder / "features_3samples.safetensors"))
    files = feature_files(str(tmp_path / "feats"), "dinov2_vitb14_reg", 3, "data.feature_dir")
    assert files == [folder / "features_3samples.safetensors"]
    assert torch.equal(FeatureShards(files)[[2, 0]].labels, torch.tensor([2, 0]))


def test_shard_without_patch_tokens_is_named(tmp_path):
    write_shards(tmp_path / "train", [4])
    save_file({"tokens": torch.zeros(2, 16, 32)}, str(tmp_path / "train" / "shard_zzz.safetensors"))
    with pytest.raises(DataError, match=r"shard_zzz\.safetensors: no 'patch_tokens' tensor \(keys: tokens\)"):
        FeatureShards(feature_files(str(tmp_path / "train"), "x", None, "data.feature_dir"))


def test_shards_with_different_shapes_are_named(tmp_path):
    write_shards(tmp_path / "train", [4])
    save_file({"patch_tokens": torch.zeros(2, 16, 24).half()}, str(tmp_path / "train" / "shard_zzz.safetensors"))
    with pytest.raises(DataError, match=r"shard_zzz\.safetensors: patch_tokens is \[n, 16, 24\] but .*\[n, 16, 32\]"):
        FeatureShards(feature_files(str(tmp_path / "train"), "x", None, "data.feature_dir"))


def test_missing_features_name_the_key(tmp_path):
    with pytest.raises(DataError, match="data.feature_dir: no features in"):
        feature_files(str(tmp_path / "nothing"), "dinov2_vitb14_reg", 10, "data.feature_dir")


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    first, again, second = epoch_order(50, 0, 0, True), epoch_order(50, 0, 0, True), epoch_order(50, 0, 1, True)
    assert torch.equal(first, again) and not torch.equal(first, second)
    assert torch.equal(first.sort().values, torch.arange(50))
    assert torch.equal(epoch_order(5, 0, 3, False), torch.arange(5))


# ------------------------------------------------------------------------------------------------ training

def test_training_writes_checkpoints_and_an_official_final_file(features):
    config = tiny_config(features, "run")
    result = train(config, device="cpu", progress=False)
    checkpoints = features / "run" / "checkpoints"
    assert result.step == 12 and result.final == checkpoints / "semantic_ae_final.pt"
    assert sorted(p.name for p in checkpoints.glob("semantic_ae_checkpoint_step_*.pt")) == [
        "semantic_ae_checkpoint_step_12.pt", "semantic_ae_checkpoint_step_6.pt"]
    assert latest_checkpoint(checkpoints, CHECKPOINT_PATTERN).name == "semantic_ae_checkpoint_step_12.pt"
    final = torch.load(result.final, weights_only=True)
    assert list(final) == OFFICIAL_KEYS
    assert (final["iteration"], final["input_dim"], final["bottleneck_dim"]) == (12, 32, 4)
    assert isinstance(final["config"], str) and final["loss"] == result.averages["total"]
    model = load_semvae(result.final)  # the head count comes from the YAML string, as official loaders do
    assert same_weights(model.state_dict(), final["model_state_dict"])
    assert len(train_log(features, "run")) == 12
    evals = [json.loads(line) for line in (features / "run" / "eval" / "eval_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in evals] == [0, 6, 12] and evals[-1]["samples"] == 8
    assert (features / "run" / "config.yaml").is_file()


def test_a_finished_run_reruns_as_a_no_op(features):
    config = tiny_config(features, "run", "training.total_iterations=3", "training.evaluation.feature_dir=null")
    train(config, device="cpu", progress=False)
    before = torch.load(features / "run" / "checkpoints" / "semantic_ae_final.pt", weights_only=True)
    result = train(config, device="cpu", progress=False)
    after = torch.load(result.final, weights_only=True)
    assert result.step == 3 and same_weights(before["model_state_dict"], after["model_state_dict"])
    assert len(train_log(features, "run")) == 3


def test_kill_and_resume_is_exact(features, monkeypatch):
    """Train 12 steps straight; elsewhere, crash in step 9 (last checkpoint at 6), rerun: same weights, same
    per-step losses, same loss averages. The 12 steps cross an epoch boundary (6 batches an epoch)."""
    straight = train(tiny_config(features, "straight"), device="cpu", progress=False)

    calls = {"n": 0}
    real_call = semvae_train.SemVAELoss.__call__

    def crash_in_step_9(self, *args):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt("simulated kill")
        return real_call(self, *args)

    monkeypatch.setattr(semvae_train.SemVAELoss, "__call__", crash_in_step_9)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(features, "resumed"), device="cpu", progress=False)
    monkeypatch.setattr(semvae_train.SemVAELoss, "__call__", real_call)
    newest = latest_checkpoint(features / "resumed" / "checkpoints", CHECKPOINT_PATTERN)
    assert newest.name == "semantic_ae_checkpoint_step_6.pt"
    resumed = train(tiny_config(features, "resumed"), device="cpu", progress=False)

    ours, reference = torch.load(resumed.final, weights_only=True), torch.load(straight.final, weights_only=True)
    assert same_weights(ours["model_state_dict"], reference["model_state_dict"])
    assert resumed.averages == straight.averages
    log = {record["step"]: record for record in train_log(features, "resumed")}
    assert [log[step] for step in range(7, 13)] == train_log(features, "straight")[6:12]
    assert resumed.evaluation == straight.evaluation


def test_stop_after_and_rerun_is_exact(features):
    straight = train(tiny_config(features, "straight", "training.evaluation.feature_dir=null"), device="cpu",
                     progress=False)
    config = tiny_config(features, "split", "training.evaluation.feature_dir=null")
    first = train(config, device="cpu", stop_after=4, progress=False)
    assert first.step == 4 and first.final is None and first.checkpoint.name == "semantic_ae_checkpoint_step_4.pt"
    second = train(config, device="cpu", progress=False)
    assert second.step == 12
    ours, reference = torch.load(second.final, weights_only=True), torch.load(straight.final, weights_only=True)
    assert same_weights(ours["model_state_dict"], reference["model_state_dict"])
    assert same_weights(ours["optimizer_state_dict"]["state"][0], reference["optimizer_state_dict"]["state"][0])
    assert train_log(features, "split") == train_log(features, "straight")


def test_warm_start_from_an_official_checkpoint(tmp_path):
    """The golden official file (iteration 2) seeds weights and AdamW state; training continues at step 3."""
    write_shards(tmp_path / "train", [6], tokens=256, dim=64)
    config = load_train_config(TINY, [
        f"variables.output_root={tmp_path / 'run'}", f"data.feature_dir={tmp_path / 'train'}",
        "training.evaluation.feature_dir=null", "model.input_dim=64", "variables.bottleneck_dim=16",
        "model.params.hidden_dim=64", "model.params.transformer_heads=4", "model.params.transformer_blocks=2",
        f"training.checkpoint_path={DATA / 'semvae_visible_semantic_ae_final.pt'}", "training.total_iterations=4",
        "data.batch_size=2"])
    result = train(config, device="cpu", progress=False)
    assert result.step == 4 and len(train_log(tmp_path, "run")) == 1
    final = torch.load(result.final, weights_only=True)
    assert final["optimizer_state_dict"]["state"][0]["step"].item() == 3  # 2 official steps + 1 here


def test_warm_start_with_the_wrong_size_names_the_keys(features):
    config = tiny_config(features, "run", f"training.checkpoint_path={DATA / 'semvae_visible_semantic_ae_final.pt'}")
    with pytest.raises(CheckpointError, match=r"encoder\.0\.weight: checkpoint \(64, 64\), model \(16, 32\)"):
        train(config, device="cpu", progress=False)


def test_features_of_the_wrong_width_are_named(features):
    with pytest.raises(DataError, match=r"shard_000\.safetensors: features have D=32, but the config implies "
                                        r"input_dim=768"):
        train(tiny_config(features, "run", "model.input_dim=null", "data.model_name=dinov2_vitb14_reg"),
              device="cpu", progress=False)


def test_evaluation_uses_the_posterior_mean(features):
    config = tiny_config(features, "run")
    data = FeatureShards(feature_files(str(features / "val"), "tiny", None, "training.evaluation.feature_dir"))
    model = semvae_train.SemVAEStep(config, 32, torch.device("cpu")).model
    first, second = (evaluate(model, data, 3, torch.device("cpu")) for _ in range(2))
    assert first == second and first.samples == 8
    with torch.no_grad():
        tokens = data[range(8)].tokens
        recon = model.decode(model.encode(tokens, sample=False))
    assert first.mse == pytest.approx((recon - tokens).pow(2).mean().item(), rel=1e-6)
    assert first.cosine_per_token == pytest.approx(semvae_train.token_cosine(recon, tokens).mean().item(), rel=1e-5)


def test_cli_runs_and_reports_errors_in_one_line(features, capsys):
    cli = load_script("scripts/train_semvae.py")
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0 and "key=value" in capsys.readouterr().out
    paths = [f"variables.output_root={features / 'cli'}", f"data.feature_dir={features / 'train'}",
             "training.evaluation.feature_dir=null", "training.total_iterations=2"]
    assert cli.main([str(TINY), *paths, "--no-progress", "--device", "cpu"]) == 0
    assert "step 2/2" in capsys.readouterr().out
    assert cli.main([str(TINY), *paths, "training.loss.nope=1"]) == 2
    assert capsys.readouterr().err.strip().endswith("training.loss.nope: Key 'nope' not in 'LossSection'")


def test_worker_processes_read_the_same_batches(tmp_path):
    everything = write_shards(tmp_path / "train", [5, 6])
    shards = FeatureShards(feature_files(str(tmp_path / "train"), "x", None, "data.feature_dir"))
    plan = [[10, 0, 4], [5, 6, 7, 8]]
    loader = torch.utils.data.DataLoader(shards, batch_size=None, sampler=plan, num_workers=1)
    for indices, batch in zip(plan, loader):
        assert torch.equal(batch.tokens, everything[indices])


def test_tensorboard_without_the_package_is_a_clear_error(features, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name == "tensorboard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match="training.log.tensorboard: true, but the tensorboard package is not"):
        train(tiny_config(features, "run", "training.log.tensorboard=true"), device="cpu", progress=False)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(features, capsys):
    """A kill during the write of step 12's checkpoint can leave it cut short (a copied folder, a full disk): the rerun
    reports it, resumes from step 6 and ends with the uninterrupted run's weights and log."""
    straight = train(tiny_config(features, "straight", "training.evaluation.feature_dir=null"), device="cpu",
                     progress=False)
    config = tiny_config(features, "cut", "training.evaluation.feature_dir=null")
    train(config, device="cpu", progress=False)
    checkpoints = features / "cut" / "checkpoints"
    newest = checkpoints / "semantic_ae_checkpoint_step_12.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    (checkpoints / "semantic_ae_final.pt").unlink()
    capsys.readouterr()
    resumed = train(config, device="cpu", progress=False)
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "semantic_ae_checkpoint_step_12.pt" in err
    assert "resuming from the older checkpoint" in err and "semantic_ae_checkpoint_step_6.pt" in err
    ours, reference = torch.load(resumed.final, weights_only=True), torch.load(straight.final, weights_only=True)
    assert same_weights(ours["model_state_dict"], reference["model_state_dict"])
    assert train_log(features, "cut") == train_log(features, "straight")  # steps 7-12 logged once


def test_a_second_trainer_on_a_locked_run_folder_refuses(features):
    run = features / "run"
    owner = subprocess.Popen(["sleep", "60"])
    try:
        run.mkdir()
        (run / LOCK_NAME).write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname(), "started": 0}))
        with pytest.raises(RunFolderBusy, match=f"in use by pid {owner.pid}"):
            train(tiny_config(features, "run", "training.total_iterations=3"), device="cpu", progress=False)
        assert sorted(path.name for path in run.iterdir()) == [LOCK_NAME]  # refused before writing anything
    finally:
        owner.kill()
        owner.wait()
    result = train(tiny_config(features, "run", "training.total_iterations=3"), device="cpu", progress=False)
    assert result.step == 3 and not (run / LOCK_NAME).exists()  # the owner is gone: its lock was stale
