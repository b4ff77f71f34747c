"""from_pretrained, save_pretrained, tools/export_pretrained.py and SFDPipeline on the tiny golden model: the
exported folder samples exactly what the launcher samples from the run it came from."""

import numpy as np
import pytest
import torch
from PIL import Image

import sfd
from sfd.pipeline import SFDPipeline
from tests.conftest import load_script
from tests.test_generate import DATA, overrides, run


@pytest.fixture(scope="module")
def exported(stats_dir, tmp_path_factory, tools_export):
    """A 'run' of the tiny model (its resolved config with guidance at 1.5) exported by the tool."""
    folder = tmp_path_factory.mktemp("run")
    config = sfd.load_config(DATA / "sfd_tiny.yaml", [*overrides(stats_dir, folder), "sample.cfg_scale=1.5",
                                                      f"ckpt_path={DATA / 'sfd_tiny.pt'}"])
    sfd.save_config(config, folder / "config.yaml")
    out = folder / "exported"
    assert tools_export.main([str(folder / "config.yaml"), str(out)]) == 0
    return folder, out


@pytest.fixture(scope="module")
def tools_export():
    return load_script("tools/export_pretrained.py")


def test_folder_layout_and_card(exported):
    _, out = exported
    names = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    assert names == {"config.yaml", "model.safetensors", "latents_stats.pt", "texture_vae.yaml", "texture_vae.ckpt",
                     "guide/config.yaml", "guide/model.safetensors", "README.md"}
    card = (out / "README.md").read_text()
    assert "library_name: sfd" in card and "AutoGuidance guide in guide/" in card


def test_from_pretrained_samples_what_the_launcher_samples(exported, stats_dir, tmp_path):
    run_folder, out = exported
    grid = tmp_path / "grid.png"
    run(["bash", "run_fast_inference.sh", str(run_folder / "config.yaml"), "--labels", "1", "2", "3",
         "--out", str(grid)], env_extra={"CFG_SCALE": "1.5"})
    launcher = np.asarray(Image.open(grid))
    torch.set_num_threads(1)  # the launcher's OMP_NUM_THREADS=1: the same matmul blocking, the same bits
    pretrained = sfd.from_pretrained(out)
    assert pretrained.guide is not None and pretrained.config.sample.cfg_scale == 1.5
    images = pretrained.sampler().images(range(3), torch.tensor([1, 2, 3]))
    assert np.array_equal(np.concatenate(list(images), axis=1), launcher)
    # the pipeline gives the same images, and a different seed different ones
    pipe = SFDPipeline.from_pretrained(out)
    piped = pipe(class_labels=[1, 2, 3], output_type="np")
    assert np.array_equal(piped.images, images) and piped.nfe == 3
    shorter = pipe(class_labels=[1], num_inference_steps=3, guidance_scale=1.0, output_type="np")
    assert shorter.nfe == 2 and pipe.config.sample.num_sampling_steps == 4  # the pipeline's own config is kept
    pil = pipe(class_labels=[1], seed=5).images
    assert isinstance(pil[0], Image.Image) and not np.array_equal(np.asarray(pil[0]), images[0])
    # save_pretrained round-trips
    again = pipe.save_pretrained(tmp_path / "again")
    assert np.array_equal(SFDPipeline.from_pretrained(again)(class_labels=[1, 2, 3], output_type="np").images, images)


def test_bad_names_and_labels_are_reported(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a release row .*an exported folder or a Hugging Face"):
        sfd.from_pretrained(tmp_path / "nothing-here", download=False)
    with pytest.raises(FileNotFoundError, match="no config.yaml; not a folder written by tools/export_pretrained.py"):
        sfd.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="a bundle of files, not a model"):
        sfd.from_pretrained("eval", download=False)
    pipe = SFDPipeline.from_pretrained(exported[1])
    with pytest.raises(ValueError, match=r"class_labels: 1001 is outside \[0, 1000\]"):
        pipe(class_labels=[1001])


def test_export_names_what_is_missing(tmp_path, tools_export, capsys):
    assert tools_export.main([str(DATA / "sfd_tiny.yaml"), str(tmp_path / "out"), "data.data_path=/no/such",
                              f"vae.config={DATA / 'vae_tiny.yaml'}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: /no/such/latents_stats.pt: latent statistics missing") and error.count("\n") == 1
    assert tools_export.main([str(DATA / "sfd_tiny.yaml"), str(tmp_path / "out2")]) == 2
    assert "texture VAE checkpoint not found" in capsys.readouterr().err


def test_release_row_guidance_becomes_config_overrides():
    assert sfd.pretrained.autoguidance_overrides("b") == [
        "sample.autoguidance=true", "sample.autoguidance_config=configs/sfd/autoguidance_b/inference.yaml"]


def test_a_hub_repository_id_loads_from_the_cache_offline(exported, tmp_path, monkeypatch):
    """A folder uploaded as a model repository: huggingface_hub's cache layout, read with HF_HUB_OFFLINE."""
    import shutil

    import huggingface_hub.constants

    _, out = exported
    repo = tmp_path / "cache" / "models--someone--sfd-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("1" * 40)
    shutil.copytree(out, repo / "snapshots" / ("1" * 40))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    pretrained = sfd.from_pretrained("someone/sfd-tiny")
    local = sfd.from_pretrained(out)
    assert pretrained.guide is not None
    for ours, theirs in zip(pretrained.model.state_dict().values(), local.model.state_dict().values()):
        assert torch.equal(ours, theirs)


def test_a_release_row_gets_its_config_and_guidance(stats_dir, tmp_path, monkeypatch):
    """A row of the table (here a stand-in row on the tiny model whose files are in place) loads its inference
    config with the row's guidance scale, without fetching when download=False."""
    import dataclasses

    from sfd import hub

    config = sfd.load_config(DATA / "sfd_tiny.yaml", [*overrides(stats_dir, tmp_path), "sample.autoguidance=false",
                                                      f"ckpt_path={DATA / 'sfd_tiny.pt'}"])
    sfd.save_config(config, tmp_path / "row.yaml")
    table = hub.ReleaseTable.load()
    row = dataclasses.replace(table.rows["sfd-xl-800ep"], name="tiny-row", config=str(tmp_path / "row.yaml"),
                              env={"CFG_SCALE": "1.5"})
    monkeypatch.setattr(hub.ReleaseTable, "load", classmethod(lambda cls, path=None: hub.ReleaseTable(
        table.files, {**table.rows, "tiny-row": row})))
    pretrained = sfd.from_pretrained("tiny-row", download=False)
    assert pretrained.config.sample.cfg_scale == 1.5 and pretrained.guide is None
    assert pretrained.sampler().images(range(1), torch.tensor([3])).shape == (1, 256, 256, 3)
