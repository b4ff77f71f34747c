"""The shell launchers as command-line tools: help without side effects, CONFIG and path flags relative to the
caller's folder, options and overrides in any order, and a failing worker's own message as the last word."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def launch(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """A launcher run from ``cwd`` (not the repository) with this interpreter, one CPU thread and ``env``."""
    environment = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("launcher", ["run_train.sh", "run_inference.sh", "run_fast_inference.sh",
                                      "run_eval_via_guided_diffusion.sh"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_launchers_print_their_help_without_starting_anything(launcher, flag):
    env = {**os.environ, "PYTHON": "/bin/false"}  # any Python the launcher started would fail the call
    result = subprocess.run(["bash", str(ROOT / launcher), flag], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == ""
    first = result.stdout.splitlines()[0]
    assert first and not first.startswith(("#", "!")) and "set -euo" not in result.stdout


def test_a_relative_config_from_another_folder_with_overrides_after_the_options(tmp_path):
    (tmp_path / "mine").mkdir()
    shutil.copy(ROOT / "configs/tiny/sfd_tiny.yaml", tmp_path / "mine" / "run.yaml")
    result = launch(["bash", str(ROOT / "run_train.sh"), "mine/run.yaml", "--dry-run", "train.max_steps=5",
                     "train.exp_name=from_my_folder"], tmp_path, PRECISION="fp32")
    assert result.returncode == 0, result.stderr
    assert "max_steps: 5" in result.stdout and "exp_name: from_my_folder" in result.stdout
    # a path inside the config still means the repository's file, as in the release
    assert "autoguidance_config: configs/tiny/sfd_tiny_guide.yaml" in result.stdout


def test_an_option_in_place_of_config_is_a_usage_error(tmp_path):
    result = launch(["bash", str(ROOT / "run_train.sh"), "--dry-run", "run.yaml"], tmp_path, PYTHON="/bin/false")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: the first argument is the CONFIG file, options come after it (got --dry-run)")


def test_a_failing_worker_has_the_last_word_through_torchrun(tmp_path):
    result = launch(["bash", str(ROOT / "run_train.sh"), "missing.yaml"], tmp_path, GPUS_PER_NODE="1",
                    MASTER_PORT="29571")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr  # the worker's code (train.py's for a config error), not torchrun's 1
    assert lines == [f"error: {tmp_path / 'missing.yaml'}: config file not found",
                     "error: worker rank 0 failed (exit code 2)"], result.stderr


def test_a_worker_bug_keeps_its_traceback(tmp_path):
    (tmp_path / "buggy.py").write_text("raise RuntimeError('a real bug')\n")
    result = launch([sys.executable, "-m", "sfd.torchrun", "--standalone", "--nproc_per_node", "1", "buggy.py"],
                    tmp_path, PYTHONPATH=str(ROOT))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: a real bug" in result.stderr
    assert "ChildFailedError" not in result.stderr and "Root Cause" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: worker rank 0 failed (exit code 1)"


def test_sample_path_flags_become_absolute_and_the_rest_passes_unchanged(tmp_path):
    script = ('source "$1/scripts/launch_common.sh"; shift; absolute_sample_paths "$@"; '
              'printf "%s\\n" "${sample_arguments[@]}"')
    arguments = ["--ckpt", "run/0000020.pt", "--labels", "1", "2", "sample.cfg_scale=1.5", "--out=grid.png",
                 "--output-dir", "/already/absolute", "--out", "sample.fid_num=8", "--seed", "3"]
    result = launch(["bash", "-c", script, "bash", str(ROOT), *arguments], tmp_path, PYTHON="/bin/false")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "--ckpt", f"{tmp_path}/run/0000020.pt", "--labels", "1", "2", "sample.cfg_scale=1.5",
        f"--out={tmp_path}/grid.png", "--output-dir", "/already/absolute", "--out", "sample.fid_num=8", "--seed", "3"]
