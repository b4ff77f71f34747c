"""Generation: labels, seeds, folder names; end to end with 2 processes, resume, npz, demo grid."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sfd
from sfd.build import guide_checkpoint_for_iteration
from sfd.generate import LabelPlan, folder_name, initial_noise

ROOT = Path(__file__).parent.parent
DATA = ROOT / "tests" / "data"


def test_balanced_fixed_and_random_labels():
    plan = LabelPlan(50_000, 1000, balanced=True)
    assert plan.labels([0, 49, 50, 49_999]).tolist() == [0, 0, 1, 999]
    remainder = LabelPlan(1005, 1000, balanced=True)  # one per class, then 0, 1, 2, 3, 4
    assert remainder.labels([999, 1000, 1004]).tolist() == [999, 0, 4]
    assert LabelPlan(10, 1000, fixed=1000).labels([3, 4]).tolist() == [1000, 1000]
    random = LabelPlan(10, 1000, seed=3)
    assert random.labels([5, 6]).tolist() == random.labels([5, 6]).tolist()
    assert random.labels([6]).tolist() == random.labels([5, 6])[1:].tolist()  # per-sample, not per-batch
    noise = initial_noise(0, [4, 7], (2, 3, 3), torch.device("cpu"))
    assert torch.equal(noise[1], initial_noise(0, [7], (2, 3, 3), torch.device("cpu"))[0])


def test_release_folder_names():
    config = sfd.load_config(ROOT / "configs/sfd/lightningdit_xl/inference_4m_autoguidance.yaml")
    ckpt = "outputs/train/sfd_xl/checkpoints/4000000.pt"
    assert folder_name(config, ckpt) == "lightningdit-xl-1-ckpt-4000000-dopri5-250-balanced"
    guided = sfd.load_config(ROOT / "configs/sfd/lightningdit_xl/inference_4m_autoguidance.yaml",
                             ["sample.cfg_scale=1.5"])
    assert folder_name(guided, ckpt, "b", 70) == (
        "lightningdit-xl-1-ckpt-4000000-dopri5-250-interval0.00-cfg1.50-shift0.00-balanced-agb70k")
    separate = sfd.load_config(ROOT / "configs/sfd/lightningdit_xl/inference_4m_autoguidance.yaml",
                               ["sample.cfg_scale=1.5", "sample.cfg_scale_sem=2.0"])
    assert folder_name(separate, ckpt, separate_scales=True).endswith("-balanced-cfgsem2.00-cfgtex1.50")
    phased = sfd.load_config(ROOT / "configs/sfd/lightningdit_xl/inference_4m.yaml", ["sample.phase_split=true"])
    assert folder_name(phased, ckpt) == "lightningdit-xl-1-ckpt-4000000-dopri5-250-phases-balanced"
    assert guide_checkpoint_for_iteration("outputs/train/sfd_autoguidance_b/checkpoints/0070000.pt", 120) == Path(
        "outputs/train/sfd_autoguidance_b/checkpoints/0120000.pt")
    with pytest.raises(ValueError, match="does not end"):
        guide_checkpoint_for_iteration("guide.safetensors", 60)


def overrides(stats_dir, output):
    return [f"data.data_path={stats_dir}", f"vae.config={DATA / 'vae_tiny.yaml'}", "sample.sampling_method=euler",
            "sample.num_sampling_steps=4", "sample.fid_num=5", "sample.per_proc_batch_size=2",
            "sample.balanced_sampling=true", "sample.autoguidance=true",
            f"sample.autoguidance_config={DATA / 'sfd_tiny_guide.yaml'}", f"train.output_dir={output}",
            "train.exp_name=run"]


def run(command, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "CFG_SCALE": "1.5", "MASTER_PORT": "29544", **(env_extra or {})}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_resume_npz_and_evaluation(stats_dir, tmp_path, capsys):
    config = str(DATA / "sfd_tiny.yaml")
    run([sys.executable, "scripts/sample.py", "--config", config, "--cfg_scale", "1.5", "--no-progress",
         *overrides(stats_dir, tmp_path / "one")])
    name = "lightningdit-tiny-1-ckpt-sfd_tiny-euler-4-interval0.00-cfg1.50-shift0.00-cfgmodeboth-balanced"
    one = tmp_path / "one" / "run" / name
    files = sorted(p.name for p in one.glob("*.png"))
    assert files == [f"{i:06d}.png" for i in range(5)]
    packed = np.load(tmp_path / "one" / "run" / f"{name}.npz")
    assert packed["arr_0"].shape == (5, 256, 256, 3) and packed["arr_0"].dtype == np.uint8
    assert packed["arr_1"].tolist() == [0, 1, 2, 3, 4]  # 5 // 1000 = 0 per class: remainder labels
    assert np.array_equal(packed["arr_0"][3], np.asarray(Image.open(one / "000003.png")))

    # two processes, with an interrupted folder: images 1 and 4 missing, a stale temporary file present
    two = tmp_path / "two" / "run" / name
    two.mkdir(parents=True)
    for name_of_file in ("000000.png", "000002.png", "000003.png", "settings.json"):
        (two / name_of_file).write_bytes((one / name_of_file).read_bytes())
    stale = two / ".000004.png.otherhost.999.0123abcd.tmp"
    stale.write_bytes(b"half")
    result = run(["bash", "run_inference.sh", config, "--no-progress", *overrides(stats_dir, tmp_path / "two")],
                 {"GPUS_PER_NODE": "2"})
    assert "5 samples" in result.stdout
    for index in range(5):
        assert (two / f"{index:06d}.png").read_bytes() == (one / f"{index:06d}.png").read_bytes(), index
    assert sorted(p.name for p in two.glob("*.png")) == files and not stale.exists()  # the leftover is removed

    # the packed samples go straight into the evaluator (a small random feature network stands in for Inception)
    from sfd.evaluation import adm
    from tests.test_evaluation import RESULT_LINE, TinyFeatures

    np.savez(tmp_path / "ref.npz", np.random.default_rng(0).integers(0, 255, (8, 256, 256, 3), dtype=np.uint8))
    argv = [str(tmp_path / "ref.npz"), str(tmp_path / "two" / "run" / f"{name}.npz"), "--device", "cpu",
            "--no-cache", "--json", str(tmp_path / "scores.json")]
    assert adm.main(argv, network=TinyFeatures(), network_id="tiny") == 0
    lines = capsys.readouterr().out.strip().splitlines()[-5:]
    assert [RESULT_LINE.match(line).group(1) for line in lines] == list(adm.RESULT_LABELS)


def test_sampling_settings_are_decided_once_per_run(sfd_tiny, monkeypatch):
    from sfd.generate import ImageSampler
    from sfd.guidance import Guidance

    model, config = sfd_tiny
    config = sfd.load_config(DATA / "sfd_tiny.yaml", ["sample.sampling_method=euler", "sample.num_sampling_steps=3",
                                                      "sample.cfg_scale=1.5"])
    calls = []
    original = Guidance.from_config.__func__
    counted = classmethod(lambda cls, *args, **kwargs: calls.append(1) or original(cls, *args, **kwargs))
    monkeypatch.setattr(Guidance, "from_config", counted)
    sampler = ImageSampler(model, config, decode=lambda latents: latents.numpy())
    first = sampler.latents(range(2), torch.tensor([0, 1]))
    second = sampler.latents(range(2, 4), torch.tensor([2, 3]))
    assert len(calls) == 1 and sampler.options.guidance.scale_tex == 1.5 and sampler.nfe == [2, 2]
    alone = sfd.sample(model, initial_noise(0, range(2), (48, 16, 16), torch.device("cpu")), torch.tensor([0, 1]),
                       sfd.SamplerOptions.from_config(config))  # the same settings by the library's road
    assert torch.equal(first, alone.x) and not torch.equal(first, second)


def test_demo_grid(stats_dir, tmp_path):
    out = tmp_path / "grid.png"
    run(["bash", "run_fast_inference.sh", str(DATA / "sfd_tiny.yaml"), "--labels", "1", "2", "3", "--out", str(out),
         *overrides(stats_dir, tmp_path)])
    assert Image.open(out).size == (3 * 256, 256)


def test_bad_inputs_are_reported(stats_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "scripts/sample.py", "--config", str(DATA / "sfd_tiny.yaml"),
                             "sample.no_such=1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "sample.no_such" in result.stderr
    result = subprocess.run([sys.executable, "scripts/sample.py", "--config", str(DATA / "sfd_tiny.yaml"),
                             "--ckpt", str(DATA / "baseline_tiny.pt"), *overrides(stats_dir, tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "t_embedder" in result.stderr
    result = subprocess.run([sys.executable, "scripts/sample.py", "--config", str(DATA / "sfd_tiny.yaml"),
                             *overrides(stats_dir, tmp_path), "--demo", "--labels", "5000"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--labels: 5000 is outside [0, 1000]" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("change, key", [("semfirst_delta_t: 0.3", "model.semfirst_delta_t"),
                                         ("semantic_chans: 16", "model.semantic_chans")])
def test_a_guide_on_other_latents_or_times_is_refused(stats_dir, tmp_path, change, key):
    replacement = {"model.semfirst_delta_t": "semfirst_delta_t: 0.1", "model.semantic_chans": "semantic_chans: 8"}[key]
    text = (DATA / "sfd_tiny_guide.yaml").read_text().replace(change, replacement)
    text = text.replace("ckpt_path: 'sfd_tiny_guide.pt'", f"ckpt_path: '{DATA / 'sfd_tiny_guide.pt'}'")
    guide = tmp_path / "guide.yaml"
    guide.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "scripts/sample.py", "--config", str(DATA / "sfd_tiny.yaml"),
               *overrides(stats_dir, tmp_path), "sample.cfg_scale=1.5", f"sample.autoguidance_config={guide}"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and key in last and "guide" in last, result.stderr
    assert not (tmp_path / "run").exists()  # nothing sampled


def test_load_guide_rewrites_the_iteration_and_checks_the_guide(tmp_path):
    config = sfd.load_config(DATA / "sfd_tiny.yaml", ["sample.autoguidance=true",
                                                      f"sample.autoguidance_config={DATA / 'sfd_tiny_guide.yaml'}"])
    assert sfd.load_guide(config, DATA / "sfd_tiny.yaml") is not None
    with pytest.raises(ValueError, match="does not end in /<step>.pt"):
        sfd.load_guide(config, DATA / "sfd_tiny.yaml", iteration_k=70)  # sfd_tiny_guide.pt has no step in its name
    other = sfd.load_config(DATA / "sfd_tiny.yaml", ["model.semfirst_delta_t=0.2", "sample.autoguidance=true",
                                                     f"sample.autoguidance_config={DATA / 'sfd_tiny_guide.yaml'}"])
    with pytest.raises(ValueError, match="model.semfirst_delta_t is 0.3, the main model's is 0.2"):
        sfd.load_guide(other, DATA / "sfd_tiny.yaml")


def folder_sampler(model, config, seed=0):
    """An ImageSampler whose 'decoder' turns three latent channels into a small RGB image (no VAE needed)."""
    from sfd.generate import ImageSampler

    def decode(latents):
        return ((latents[:, :3].clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()

    return ImageSampler(model, config, decode, seed=seed)


def test_a_sample_folder_belongs_to_one_set_of_settings(sfd_tiny, tmp_path):
    from sfd.generate import SampleFolderError, write_fid_set

    model, _ = sfd_tiny
    euler = sfd.load_config(DATA / "sfd_tiny.yaml", ["sample.sampling_method=euler", "sample.num_sampling_steps=2"])
    plan = LabelPlan(4, 1000, seed=0)
    folder = tmp_path / "samples"
    npz = write_fid_set(folder_sampler(model, euler), plan, folder, batch_size=2, provenance={"checkpoint": "a.pt"})
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["seed"] == 0 and settings["checkpoint"] == "a.pt" and "batch_size" not in settings
    packed = np.load(npz)
    assert packed["arr_1"].tolist() == plan.labels(range(4)).tolist()
    assert all(np.array_equal(packed["arr_0"][i], np.asarray(Image.open(folder / f"{i:06d}.png"))) for i in range(4))

    nfe = json.loads((folder / "nfe.json").read_text())  # what each batch cost, beside the images
    assert nfe["batches"] == 2 and list(nfe["nfe_per_batch"]) == ["0", "2"] and nfe["mean_nfe_per_batch"] > 0
    # the same settings: nothing to do; another batch size with a fixed-grid solver: the same images
    write_fid_set(folder_sampler(model, euler), plan, folder, batch_size=3, provenance={"checkpoint": "a.pt"})
    assert json.loads((folder / "nfe.json").read_text())["nfe_per_batch"] == nfe["nfe_per_batch"]
    # the seed-7 rerun into the seed-0 folder refuses, naming the difference, and the npz is left as it was
    with pytest.raises(SampleFolderError, match=r"other settings \(seed: 0 there, 7 now; labels.seed: 0 there, 7 now"):
        write_fid_set(folder_sampler(model, euler, seed=7), LabelPlan(4, 1000, seed=7), folder, batch_size=2,
                      provenance={"checkpoint": "a.pt"})
    with pytest.raises(SampleFolderError, match="checkpoint: 'a.pt' there, 'b.pt' now"):
        write_fid_set(folder_sampler(model, euler), plan, folder, batch_size=2, provenance={"checkpoint": "b.pt"})
    assert np.load(npz)["arr_1"].tolist() == packed["arr_1"].tolist()

    # an adaptive solver shares its step sizes within a batch: its batch size and tolerances are settings
    dopri5 = sfd.load_config(DATA / "sfd_tiny.yaml", ["sample.sampling_method=dopri5"])
    adaptive = tmp_path / "adaptive"
    write_fid_set(folder_sampler(model, dopri5), LabelPlan(2, 1000), adaptive, batch_size=2)
    with pytest.raises(SampleFolderError, match="batch_size: 2 there, 1 now"):
        write_fid_set(folder_sampler(model, dopri5), LabelPlan(2, 1000), adaptive, batch_size=1)

    # PNGs without a manifest have unknown settings; a folder missing an image is not packed short
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "000000.png").write_bytes((folder / "000000.png").read_bytes())
    with pytest.raises(SampleFolderError, match="holds PNGs but no settings.json"):
        write_fid_set(folder_sampler(model, euler), plan, tmp_path / "old", batch_size=2)
    from sfd.generate import pack_folder

    (folder / "000002.png").unlink()
    with pytest.raises(SampleFolderError, match="1 of its 4 images are missing \\(first 000002.png\\)"):
        pack_folder(folder, plan)


def test_sample_py_refuses_a_rerun_with_another_seed(stats_dir, tmp_path):
    config = str(DATA / "sfd_tiny.yaml")
    settings = [*overrides(stats_dir, tmp_path), "sample.fid_num=2", "sample.autoguidance=false"]
    run([sys.executable, "scripts/sample.py", "--config", config, "--no-progress", *settings])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "scripts/sample.py", "--config", config, "--no-progress", "--seed", "7",
                             *settings], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "seed: 0 there, 7 now" in result.stderr
    assert "Traceback" not in result.stderr
