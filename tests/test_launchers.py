"""The shell launchers as command-line tools: help without side effects, CONFIG and path flags relative to the
caller's folder, options and overrides in any order, a failing worker's own message as the last word, the torchrun
topology for one node and for many, no restarts for failures a restart would repeat, and the SLURM scripts."""

import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sfd.data.synthetic import write_synthetic_shards

ROOT = Path(__file__).parent.parent
# The variables the launchers read for their topology; a test's environment starts without any of them.
TOPOLOGY = ("NNODES", "WORLD_SIZE", "NODE_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT", "GPUS_PER_NODE",
            "MAX_RESTARTS", "RDZV_ID", "SLURM_JOB_ID")
LOCAL_PROCESSES = str(torch.accelerator.device_count() or 1)  # the launchers' default GPUS_PER_NODE here


def launch(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """A launcher run from ``cwd`` (not the repository) with this interpreter, one CPU thread and ``env``."""
    inherited = {key: value for key, value in os.environ.items() if key not in TOPOLOGY}
    environment = {**inherited, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=120)


def printed_commands(stdout: str) -> list[list[str]]:
    """The torchrun commands --dry-run printed ("# torchrun: ..." lines), split as the shell would."""
    prefix = "# torchrun: "
    return [shlex.split(line[len(prefix):]) for line in stdout.splitlines() if line.startswith(prefix)]


def option(command: list[str], name: str) -> str | None:
    """The value after ``name`` in ``command``, or None without it."""
    return command[command.index(name) + 1] if name in command else None


@pytest.mark.parametrize("launcher", sorted(path.name for path in ROOT.glob("run_*.sh")))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_launchers_print_their_help_without_starting_anything(launcher, flag):
    env = {**os.environ, "PYTHON": "/bin/false"}  # any Python the launcher started would fail the call
    result = subprocess.run(["bash", str(ROOT / launcher), flag], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == ""
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"Usage: ./{launcher} ") and "set -euo" not in result.stdout  # as the Python scripts'


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


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """8 latents in the layout of configs/tiny/sfd_tiny.yaml."""
    return write_synthetic_shards(tmp_path_factory.mktemp("launcher_data"), num_items=8, dino_dim=768, shard_size=8)


def test_a_failing_worker_has_the_last_word_and_is_not_restarted(small_data, tmp_path):
    # a batch larger than the dataset: scripts/train.py's TrainingError (exit 3) in the worker, which no restart mends
    result = launch(["bash", str(ROOT / "run_train.sh"), str(ROOT / "configs/tiny/sfd_tiny.yaml"),
                     f"data.data_path={small_data}", f"train.output_dir={tmp_path}", "train.global_batch_size=16",
                     "--no-progress"], tmp_path, PRECISION="fp32", MAX_RESTARTS="2")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 3, result.stderr  # the worker's code, not torchrun's 1
    assert [line for line in lines if "larger than the dataset" in line] == [
        "error: train.global_batch_size=16 is larger than the dataset (8 latents); lower it or add data"], result.stderr
    assert lines[-1] == "error: worker rank 0 failed (exit code 3)", result.stderr


def test_a_bad_config_fails_once_before_torchrun(tmp_path):
    result = launch(["bash", str(ROOT / "run_train.sh"), "missing.yaml"], tmp_path, MAX_RESTARTS="2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.yaml'}: config file not found"]


@pytest.mark.parametrize("code, attempts", [(2, 1), (3, 1), (1, 3)])
def test_only_failures_a_restart_could_mend_are_restarted(tmp_path, code, attempts):
    (tmp_path / "worker.py").write_text("import os, sys\n"
                                        "print('attempt', os.environ['TORCHELASTIC_RESTART_COUNT'], file=sys.stderr)\n"
                                        f"sys.exit({code})\n")
    result = launch([sys.executable, "-m", "sfd.torchrun", "--standalone", "--nproc-per-node", "1",
                     "--max-restarts", "2", "worker.py"], tmp_path, PYTHONPATH=str(ROOT))
    assert result.returncode == code
    assert result.stderr.count("attempt") == attempts, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: worker rank 0 failed (exit code {code})"


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


LAUNCHERS = ["run_train.sh", "run_inference.sh"]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_dry_run_on_one_node_is_standalone(launcher, tmp_path):
    config = str(ROOT / "configs/tiny/sfd_tiny.yaml")
    result = launch(["bash", str(ROOT / launcher), config, "--dry-run"], tmp_path, PRECISION="fp32")
    assert result.returncode == 0, result.stderr
    [command] = printed_commands(result.stdout)
    assert command[1:3] == ["-m", "sfd.torchrun"] and "--standalone" in command
    assert option(command, "--nproc-per-node") == LOCAL_PROCESSES and option(command, "--max-restarts") == "0"
    assert not {"--master-port", "--rdzv-endpoint", "--dry-run"} & set(command)
    assert command[command.index(config) - 1] == "--config"

    pinned = launch(["bash", str(ROOT / launcher), config, "--dry-run"], tmp_path, MASTER_PORT="29571",
                    MAX_RESTARTS="1")
    [command] = printed_commands(pinned.stdout)
    assert "--standalone" not in command and option(command, "--rdzv-endpoint") == "127.0.0.1:29571"
    assert option(command, "--nnodes") == "1" and option(command, "--max-restarts") == "1"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_dry_run_on_two_nodes_joins_a_c10d_rendezvous(launcher, tmp_path):
    result = launch(["bash", str(ROOT / launcher), str(ROOT / "configs/tiny/sfd_tiny.yaml"), "--dry-run"], tmp_path,
                    NNODES="2", MASTER_ADDR="10.1.2.3", GPUS_PER_NODE="4", NODE_RANK="1", SLURM_JOB_ID="777")
    assert result.returncode == 0, result.stderr
    [command] = printed_commands(result.stdout)
    assert "--standalone" not in command and option(command, "--nnodes") == "2"
    assert option(command, "--rdzv-backend") == "c10d" and option(command, "--rdzv-endpoint") == "10.1.2.3:29500"
    assert option(command, "--rdzv-id") == "777" and option(command, "--rdzv-conf") == "is_host=false"
    assert option(command, "--nproc-per-node") == "4" and option(command, "--max-restarts") == "3"

    # the release's names, an id and a restart count of one's own; no NODE_RANK leaves the host to torch
    result = launch(["bash", str(ROOT / launcher), str(ROOT / "configs/tiny/sfd_tiny.yaml"), "--dry-run"], tmp_path,
                    WORLD_SIZE="2", MASTER_ADDR="node0", MASTER_PORT="1235", RDZV_ID="mine", MAX_RESTARTS="0")
    [command] = printed_commands(result.stdout)
    assert option(command, "--rdzv-endpoint") == "node0:1235" and option(command, "--rdzv-id") == "mine"
    assert option(command, "--max-restarts") == "0" and "--rdzv-conf" not in command


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("nodes", ["NNODES", "WORLD_SIZE"])
def test_several_nodes_without_master_addr_is_one_line_before_anything_starts(launcher, nodes, tmp_path):
    result = launch(["bash", str(ROOT / launcher), "run.yaml", "--dry-run"], tmp_path, PYTHON="/bin/false",
                    **{nodes: "2"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: NNODES=2 needs MASTER_ADDR, the address of the node hosting the rendezvous (node 0)"]


SBATCH = ["train.sbatch", "sample.sbatch"]


def fake_slurm(folder: Path) -> dict[str, str]:
    """srun and scontrol stand-ins on PATH: scontrol lists two hosts and logs requeues; srun runs its command once
    per node, as SLURM_NODEID 0 and 1, or, with SRUN_STARTED set, touches that file and sleeps 2 s."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    scripts = {
        "scontrol": 'case $1 in\n'
                    '  show) printf "node-a\\nnode-b\\n" ;;\n'
                    '  requeue) echo "requeue $2" >> "$SLURM_LOG" ;;\n'
                    'esac\n',
        "srun": 'while [[ $1 == --* ]]; do shift; done  # srun\'s own options\n'
                'if [[ -n ${SRUN_STARTED:-} ]]; then touch "$SRUN_STARTED"; sleep 2; exit 0; fi\n'
                'for node in 0 1; do SLURM_NODEID=$node "$@" || exit; done\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_LOG": str(folder / "slurm.log"),
            "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_JOB_ID": "4242",
            "SLURM_GPUS_ON_NODE": "4", "SLURM_SUBMIT_DIR": str(ROOT)}


@pytest.mark.parametrize("sbatch", SBATCH)
def test_sbatch_scripts_parse_and_ask_for_requeue(sbatch):
    path = ROOT / "scripts/slurm" / sbatch
    for script in (path, ROOT / "scripts/slurm/common.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    options = [line.split()[1] for line in path.read_text().splitlines() if line.startswith("#SBATCH")]
    assert {"--requeue", "--ntasks-per-node=1", "--signal=B:USR1@120"} <= set(options)
    assert path.stat().st_mode & stat.S_IXUSR


@pytest.mark.parametrize("sbatch", SBATCH)
def test_sbatch_runs_its_launcher_on_every_node_with_the_allocations_topology(sbatch, tmp_path):
    result = launch(["bash", str(ROOT / "scripts/slurm" / sbatch), str(ROOT / "configs/tiny/sfd_tiny.yaml"),
                     "--dry-run"], tmp_path, **fake_slurm(tmp_path), MASTER_ADDR="stale", PRECISION="fp32")
    assert result.returncode == 0, result.stderr
    commands = printed_commands(result.stdout)
    assert len(commands) == 2
    script = "scripts/train.py" if sbatch == "train.sbatch" else "scripts/sample.py"
    for command, is_host in zip(commands, ("true", "false")):
        assert script in command and option(command, "--rdzv-endpoint") == "node-a:24242"
        assert option(command, "--rdzv-id") == "4242" and option(command, "--rdzv-conf") == f"is_host={is_host}"
        assert option(command, "--nnodes") == "2" and option(command, "--nproc-per-node") == "4"


def test_sbatch_requeues_itself_on_slurms_warning_and_waits_for_its_step(tmp_path):
    started = tmp_path / "started"
    environment = {**os.environ, **fake_slurm(tmp_path), "SRUN_STARTED": str(started)}
    job = subprocess.Popen(["bash", str(ROOT / "scripts/slurm/train.sbatch"), "configs/tiny/sfd_tiny.yaml"],
                           cwd=tmp_path, env=environment, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends before the time limit
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 0, stderr  # the step's status, not the interrupted wait's 138
    assert (tmp_path / "slurm.log").read_text() == "requeue 4242\n"
    assert "job 4242 is near its time limit, requeueing it" in stderr
