"""Corrupt or inconsistent files, full disks and refused writes give one-line errors that name the file; temporary
files of killed writers are recognised and removed, and nothing else is."""

import errno
import os
import pickle
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from sfd.checkpoint import CheckpointError, atomic_save, read_file
from sfd.data.latents import LatentShardDataset, load_stats
from sfd.data.shards import STATS_FILES, ShardError, compute_stats, shard_name
from sfd.data.synthetic import write_synthetic_shards
from sfd.files import WriteError, atomic_path, remove_stale_temporaries, temporary_path, write_text_atomic

TEXTURE, SEMANTIC = 4, 2


def tiny_shards(folder: Path, texture_chans: int = TEXTURE) -> Path:
    """Two shards of 4 items: texture, semantic and DINOv2 keys on a 4×4 grid, with statistics files."""
    return write_synthetic_shards(folder, num_items=8, num_classes=2, texture_chans=texture_chans,
                                  semantic_chans=SEMANTIC, grid=4, dino_dim=8, shard_size=4)


def open_latents(folder: Path, **changes) -> LatentShardDataset:
    settings = dict(latent_norm=True, latent_sv_norm=True, latent_multiplier=1.0, semantic=True, with_dino=True,
                    flip_prob=0.5, seed=0)
    return LatentShardDataset(folder, **{**settings, **changes})


def one_line_naming(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert str(path) in message, message
    assert "\n" not in message, message
    return message


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- checkpoints ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "random"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_damaged_checkpoints_are_one_line(tmp_path, damage, suffix):
    path = tmp_path / f"ckpt{suffix}"
    atomic_save({"weight": torch.ones(64, 64)}, path)
    if damage == "truncated":
        truncate(path)
    else:
        path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as error:
        read_file(path)
    one_line_naming(error, path)


def test_checkpoint_missing_entries_and_wrong_payload(tmp_path):
    path = tmp_path / "step.pt"
    torch.save({"model": {}, "ema": {}}, path)
    with pytest.raises(CheckpointError, match=r"missing 'opt', 'step' \(has model, ema\)") as error:
        read_file(path, required=("model", "ema", "opt", "step"))
    one_line_naming(error, path)
    assert set(read_file(path, required=("model",))) == {"model", "ema"}
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="holds a list") as error:
        read_file(path)
    one_line_naming(error, path)


# -- latent shards ----------------------------------------------------------------------------------------------


def test_good_folder_opens_with_channels_from_headers(tmp_path):
    dataset = open_latents(tiny_shards(tmp_path))
    assert len(dataset) == 8 and dataset.with_dino
    assert (dataset.texture_chans, dataset.semantic_chans, dataset.channels) == (TEXTURE, SEMANTIC, TEXTURE + SEMANTIC)
    assert dataset[0].latent.shape == (dataset.channels, 4, 4)
    assert open_latents(tmp_path, semantic=False).channels == TEXTURE


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_damaged_shard_fails_when_the_folder_is_opened(tmp_path, damage):
    folder = tiny_shards(tmp_path)
    shard = folder / shard_name(1)
    if damage == "truncated":
        truncate(shard)
    else:
        shard.write_bytes(os.urandom(2048))
    with pytest.raises(ShardError, match="cannot be read as a safetensors shard") as error:
        open_latents(folder)
    one_line_naming(error, shard)
    with pytest.raises(ShardError) as error:  # the statistics writer reads the same headers
        (folder / STATS_FILES["latents"]).unlink()
        compute_stats(folder)
    one_line_naming(error, shard)


def rewrite_shard(path: Path, change) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def test_shard_missing_key(tmp_path):
    folder = tiny_shards(tmp_path)
    shard = folder / shard_name(1)
    rewrite_shard(shard, lambda tensors: tensors.pop("latents_sv_flip"))
    with pytest.raises(ShardError, match="shard has no 'latents_sv_flip'") as error:
        open_latents(folder)
    one_line_naming(error, shard)
    assert len(open_latents(folder, semantic=False)) == 8  # a texture-only run does not need the semantic keys


def test_shard_with_float_labels(tmp_path):
    folder = tiny_shards(tmp_path)
    shard = folder / shard_name(0)
    rewrite_shard(shard, lambda tensors: tensors.update(labels=tensors["labels"].float()))
    with pytest.raises(ShardError, match=r"labels F32 \[4\] is not integer \[N\]") as error:
        open_latents(folder)
    one_line_naming(error, shard)


def test_shards_of_two_kinds_in_one_folder(tmp_path):
    folder = tiny_shards(tmp_path / "a")
    other = tiny_shards(tmp_path / "b", texture_chans=7)
    shutil.copy(other / shard_name(1), folder / shard_name(1))
    with pytest.raises(ShardError, match=r"latents F32 \[4, 7, 4, 4\] does not match latents F32 \[4, 4, 4, 4\]"
                       ) as error:
        open_latents(folder)
    one_line_naming(error, folder / shard_name(1))


def test_stats_of_another_channel_count(tmp_path):
    train = tiny_shards(tmp_path / "train")
    valid = tiny_shards(tmp_path / "valid", texture_chans=7)
    stats = train / STATS_FILES["latents"]
    # validation shards normalised with the training statistics (the trainer passes stats_dir=data.data_path)
    with pytest.raises(ShardError, match="statistics of 4 channels, but 'latents' of .* has 7") as error:
        open_latents(valid, stats_dir=train)
    one_line_naming(error, stats)
    assert "latents_shard000000.safetensors" in str(error.value)
    # statistics copied from another folder
    shutil.copy(valid / STATS_FILES["latents"], stats)
    with pytest.raises(ShardError) as error:
        open_latents(train)
    one_line_naming(error, stats)
    with pytest.raises(ShardError, match="statistics of 7 channels, but 4 are expected"):
        load_stats(train, "latents", channels=4)


@pytest.mark.parametrize("content", ["random", "truncated", "no_std", "wrong_shape", "nan", "zero_std", "pickle"])
def test_bad_statistics_files(tmp_path, content):
    folder = tiny_shards(tmp_path)
    stats = folder / STATS_FILES["latents_sv"]
    mean, std = torch.zeros(1, SEMANTIC, 1, 1), torch.ones(1, SEMANTIC, 1, 1)
    if content == "random":
        stats.write_bytes(os.urandom(512))
    elif content == "truncated":
        truncate(stats)
    else:
        payload = {"no_std": {"mean": mean},
                   "wrong_shape": {"mean": mean.flatten(), "std": std.flatten()},
                   "nan": {"mean": mean, "std": std * float("nan")},
                   "zero_std": {"mean": mean, "std": std * 0},
                   "pickle": {"mean": mean, "std": std, "note": Path("arbitrary object")}}[content]
        torch.save(payload, stats)
    with pytest.raises(ShardError) as error:
        open_latents(folder)
    message = one_line_naming(error, stats)
    assert isinstance(error.value, ValueError)  # scripts print ValueErrors as "error: <message>"
    if content == "pickle":
        assert "cannot be read as a statistics file" in message  # weights-only: no arbitrary objects


# -- writes ---------------------------------------------------------------------------------------------------


def test_full_disk_during_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    write_text_atomic(target, "old")
    with pytest.raises(WriteError) as error:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a write() on a full disk raises
    assert str(error.value) == f"{target}: cannot write: No space left on device"
    assert error.value.errno == errno.ENOSPC and isinstance(error.value, OSError)
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    restored = pickle.loads(pickle.dumps(error.value))  # crosses process boundaries intact (DataLoader workers)
    assert type(restored) is WriteError and str(restored) == str(error.value)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_refused_rename_and_folder(tmp_path, monkeypatch, code):
    target = tmp_path / "config.yaml"
    write_text_atomic(target, "old")

    def refuse(source, destination):
        raise OSError(code, os.strerror(code), str(source), None, str(destination))

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", refuse)
        with pytest.raises(WriteError) as error:
            write_text_atomic(target, "new")
    assert str(error.value) == f"{target}: cannot write: {os.strerror(code)}"
    assert target.read_text() == "old" and leftovers(tmp_path) == []

    def refuse_mkdir(self, *args, **kwargs):
        raise PermissionError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "mkdir", refuse_mkdir)
    nested = tmp_path / "new" / "a.json"
    with pytest.raises(WriteError, match=f"^{nested}: cannot write: "):
        write_text_atomic(nested, "{}")


def test_torch_save_on_a_full_disk(tmp_path, monkeypatch):
    """torch.save reports a full disk as an opaque RuntimeError; with the disk (nearly) full it is a WriteError."""
    target = tmp_path / "0000100.pt"
    atomic_save({"step": 1}, target)

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(RuntimeError) as error:  # plenty of space: a genuine writer bug, passed through
        atomic_save({"step": 2}, target)
    assert not isinstance(error.value, WriteError)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=100, used=100, free=0))
    with pytest.raises(WriteError, match=f"^{target}: cannot write: No space left on device$"):
        atomic_save({"step": 2}, target)
    assert torch.load(target) == {"step": 1} and leftovers(tmp_path) == []


def test_file_size_limit_on_a_real_safetensors_write(tmp_path):
    """A real failing write (RLIMIT_FSIZE: EFBIG, reported by safetensors' Rust writer inside its message)."""
    resource = pytest.importorskip("resource")
    import signal

    target = tmp_path / "latents_shard000000.safetensors"
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # by default exceeding the limit kills the process
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, limits[1]))
        with pytest.raises(WriteError) as error:
            atomic_save({"latents": torch.zeros(64, 1024)}, target)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert str(error.value) == f"{target}: cannot write: {os.strerror(errno.EFBIG)}"
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through(tmp_path):
    target = tmp_path / "a.txt"
    with pytest.raises(ValueError, match="bad value"):
        with atomic_path(target):
            raise ValueError("bad value")
    source = tmp_path / "missing-input.png"
    with pytest.raises(FileNotFoundError):  # about another file: not a failure to write the target
        with atomic_path(target):
            source.read_bytes()
    assert list(tmp_path.iterdir()) == []


# -- stale temporaries ----------------------------------------------------------------------------------------


def test_remove_stale_temporaries(tmp_path):
    ours = temporary_path(tmp_path / "0000100.pt")  # this process: a live writer
    host = ours.name.split(".")[-4]  # .{name}.{host}.{pid}.{token}.tmp
    dead = tmp_path / f".0000200.pt.{host}.999999999.0123abcd.tmp"  # no such process on this machine
    elsewhere = tmp_path / ".0000300.pt.other-node.42.89abcdef.tmp"  # another machine's writer: judged by age
    old_elsewhere = tmp_path / ".0000400.pt.other-node.42.fedcba98.tmp"
    look_alikes = [tmp_path / name for name in (".latents_shard000001.safetensors.999.tmp", "0000100.pt.tmp",
                                                ".000004.999.tmp.png", f".a.pt.{host}.999999999.nothex00.tmp",
                                                "0000100.pt")]
    for path in (ours, dead, elsewhere, old_elsewhere, *look_alikes):
        path.write_bytes(b"half")
    matching_folder = tmp_path / f".b.pt.{host}.999999999.0123abcd.tmp"
    matching_folder.mkdir()
    two_hours_ago = time.time() - 7200
    for path in (old_elsewhere, *look_alikes):
        os.utime(path, (two_hours_ago, two_hours_ago))

    assert remove_stale_temporaries(tmp_path) == sorted([dead, old_elsewhere])
    assert ours.exists() and elsewhere.exists() and matching_folder.is_dir()
    assert all(path.exists() for path in look_alikes)
    assert remove_stale_temporaries(tmp_path, older_than_s=0) == sorted([ours, elsewhere])
    assert all(path.exists() for path in look_alikes)
    assert remove_stale_temporaries(tmp_path / "absent") == []
