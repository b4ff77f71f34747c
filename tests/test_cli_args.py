"""Command lines of the scripts that take a config (scripts/train.py, sample.py, train_semvae.py, sweep.py,
tools/export_pretrained.py): options and section.key=value overrides in any order, through sfd.cli; and
sfd.torchrun's one-line summary of a failed run."""

from pathlib import Path

import pytest

from sfd.cli import split_overrides
from tests.conftest import load_script

ROOT = Path(__file__).parent.parent


def script(name: str):
    return load_script(f"scripts/{name}.py")


def test_overrides_are_split_out_in_their_order():
    argv = ["a.b=1", "--labels", "1", "2", "model.sub.key=x=y", "--out", "dir/x.y=z.png", "a.b=2", "--seed", "3"]
    assert split_overrides(argv) == (["a.b=1", "model.sub.key=x=y", "a.b=2"],
                                     ["--labels", "1", "2", "--out", "dir/x.y=z.png", "--seed", "3"])
    assert split_overrides(["1.5=2", "=x", "a=1", ".a.b=1", "a..b=1"]) == ([], ["1.5=2", "=x", "a=1", ".a.b=1",
                                                                                 "a..b=1"])


@pytest.mark.parametrize("argv", [["--config", "C", "--dry-run", "train.max_steps=5", "train.exp_name=e"],
                                  ["--config", "C", "train.max_steps=5", "--dry-run", "train.exp_name=e"],
                                  ["train.max_steps=5", "--dry-run", "train.exp_name=e", "--config", "C"]])
def test_train_takes_options_and_overrides_in_any_order(argv):
    args = script("train").parse_args(argv)
    assert args.config == "C" and args.dry_run and args.overrides == ["train.max_steps=5", "train.exp_name=e"]


def test_sample_never_takes_an_override_as_a_flag_value():
    parse_args = script("sample").parse_args
    args = parse_args(["--config", "C", "--labels", "1", "2", "sample.cfg_scale=1.5", "--cfg_scale", "2",
                       "sample.fid_num=8", "--ckpt", "X"])
    assert args.labels == [1, 2] and args.cfg_scale == [2.0] and args.ckpt == "X"
    assert args.overrides == ["sample.cfg_scale=1.5", "sample.fid_num=8"]
    args = parse_args(["--config", "C", "--ckpt", "X", "sample.fid_num=8"])
    assert args.ckpt == "X" and args.overrides == ["sample.fid_num=8"]


@pytest.mark.parametrize("argv, message", [(["--config", "C", "stray"], "not a section.key=value override: 'stray'"),
                                           (["--config", "C", "--outp", "dir"], "unrecognized arguments: --outp")])
def test_sample_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        script("sample").parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_every_script_with_a_config_takes_overrides_anywhere():
    semvae = script("train_semvae").parse_args(["training.seed=1", "C", "--device", "cpu", "data.batch_size=2"])
    assert semvae.config == "C" and semvae.device == "cpu"
    assert semvae.overrides == ["training.seed=1", "data.batch_size=2"]
    sweep = script("sweep").parse_args(["--config", "C", "--delta-t", "0", "0.3", "sample.cfg_scale=1.0",
                                        "--latents", "L", "train.max_steps=5"])
    assert sweep.delta_t == [0.0, 0.3] and sweep.latents == "L"  # an option with nargs="+" takes no override
    assert sweep.overrides == ["sample.cfg_scale=1.0", "train.max_steps=5"]
    export = load_script("tools/export_pretrained.py").parse_args(["C", "sample.cfg_scale=1.5", "OUT", "--ckpt", "K"])
    assert (export.config, export.out, export.ckpt, export.overrides) == ("C", "OUT", "K", ["sample.cfg_scale=1.5"])


@pytest.mark.parametrize("argv, message", [(["C", "stray"], "not a section.key=value override: 'stray'"),
                                           (["C", "--device", "cpu", "stray"], "unrecognized arguments: stray")])
def test_a_stray_positional_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        script("train_semvae").parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_sweep_overrides_need_a_config(capsys):
    with pytest.raises(SystemExit) as exit_:
        script("sweep").parse_args(["--delta-t", "0", "sample.cfg_scale=1.0"])
    assert exit_.value.code == 2 and "config overrides need --config" in capsys.readouterr().err


def test_failed_run_summary_and_exit_code():
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from sfd.torchrun import exit_code, failure_line

    def failure(rank: int, code: int) -> ProcessFailure:
        return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file="<N/A>")

    one = ChildFailedError("scripts/train.py", {0: failure(0, 2)})
    assert failure_line(one) == "error: worker rank 0 failed (exit code 2)"
    killed = ChildFailedError("scripts/train.py", {1: failure(1, -9), 0: failure(0, -15)})
    killed.failures[0].timestamp = killed.failures[1].timestamp + 1  # rank 1 failed first
    assert failure_line(killed) == "error: 2 workers failed, first rank 1 (signal SIGKILL)"
    assert exit_code(-9) == 137 and exit_code(2) == 2
