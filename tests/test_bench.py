"""scripts/bench.py on CPU with the tiny golden config (no timing thresholds), and the shared benchmark helpers
(sfd/bench.py)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from sfd.bench import MemoryMeter, markdown_table, relative_error, time_calls, timing_summary
from tests.conftest import DATA, load_script

ROOT = Path(__file__).parent.parent
TINY = str(DATA / "sfd_tiny.yaml")
SUBCOMMANDS = ("forward", "step", "loop", "sample", "device")


@pytest.fixture(scope="module")
def bench():
    return load_script("scripts/bench.py")


def test_forward_and_step_rows_in_json(bench, tmp_path, capsys):
    for command in ("forward", "step"):
        out = tmp_path / f"{command}.json"
        assert bench.main([command, "--config", TINY, "--device", "cpu", "--batch", "2", "--iters", "1",
                           "--warmup", "0", "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        [row] = result["rows"]
        assert row["mode"] == command and row["batch"] == 2
        assert row["ms_per_iter"] > 0 and row["images_per_s"] > 0 and row["peak_mem_mib"] >= 0
        assert len(row["times_ms"]) == 1 and row["mfu"] is None  # no known peak FLOP/s for a CPU
        assert result["flops_per_image"] > 0 and result["precision"] == "fp32"
        printed = capsys.readouterr().out
        assert "| mode | batch | ms/iter | img/s | MFU | peak mem (MiB) |" in printed
        assert printed.startswith("# CPU ")
    assert json.loads((tmp_path / "step.json").read_text())["flops_per_image"] == pytest.approx(
        3 * json.loads((tmp_path / "forward.json").read_text())["flops_per_image"])
    assert not list(tmp_path.glob("*.tmp"))  # the atomic writes left no temporary file


def test_overrides_go_anywhere_and_a_bad_one_is_one_line(bench, tmp_path, capsys):
    assert bench.main(["model.depth=2", "forward", "--config", TINY, "--batch", "1", "--iters", "1",
                       "--device", "cpu"]) == 0
    assert "sfd_tiny.yaml model.depth=2 |" in capsys.readouterr().out.splitlines()[0]
    status = bench.main(["step", "--config", TINY, "--device", "cpu", "model.depth=x", "--json",
                         str(tmp_path / "bench.json")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "model.depth" in err and "\n" not in err
    assert not (tmp_path / "bench.json").exists()


def test_there_is_no_override_option(bench, capsys):
    with pytest.raises(SystemExit) as done:
        bench.main(["forward", "--config", TINY, "--override", "model.depth=1"])
    assert done.value.code == 2 and "unrecognized arguments: --override" in capsys.readouterr().err


def test_the_loop_times_both_data_paths(bench, capsys):
    assert bench.main(["loop", "--config", TINY, "--batch", "4", "--steps", "1", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "| 4 | shards |" in table and "| 4 | memory |" in table and "speed-up vs shards" in table


def test_sampler_rows_count_evaluations(bench, capsys):
    assert bench.main(["sample", "--config", str(ROOT / "configs/tiny/sfd_tiny.yaml"), "--samplers", "euler-3",
                       "heun-3", "--batch", "1", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "| euler-3 | cfg | 2 |" in table and "| heun-3 | none | 4 |" in table


def test_an_unknown_sampler_name_is_refused_before_any_work(bench, capsys):
    assert bench.main(["sample", "--config", TINY, "--samplers", "euler-x", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("error: sampler 'euler-x': expected euler-N")


def test_the_device_suite_runs_its_cpu_variant(bench, tmp_path, capsys):
    """Without an accelerator `device` runs the suite on the tiny network in fp32: golden numerics within the CPU
    tolerances of docs/goldens.md §5, forward and step throughput, and each sampler with and without guidance."""
    out = tmp_path / "suite"
    assert bench.main(["device", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads((out / "device.json").read_text())
    numerics = result["numerics"]
    assert list(numerics) == ["fp32"]
    assert numerics["fp32"]["forward"] <= 1e-5 and numerics["fp32"]["euler (sample − z)"] <= 1e-4
    assert numerics["fp32"]["dopri5 NFE (golden 26)"] == 26
    assert [(row["precision"], row["mode"]) for row in result["throughput"]] == [("fp32", "forward"),
                                                                                  ("fp32", "step")]
    assert len(result["sampling"]) == 2 * len(bench.CPU_SUITE.samplers)
    assert all(row["nfe"] > 0 and row["s_per_image"] > 0 for row in result["sampling"])
    markdown, printed = (out / "device.md").read_text(), capsys.readouterr().out
    for heading in ("## Numerics against the goldens", "## Throughput (", "## Sampling ("):
        assert heading in markdown and heading in printed


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_each_subcommand_help_starts_with_usage(bench, command, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / "bench.py")])  # argparse names the program after it
    with pytest.raises(SystemExit) as done:
        bench.main([command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(f"Usage: bench.py {command} ")


# -- sfd/bench.py -------------------------------------------------------------------------------------------------

def test_markdown_table_alignment_and_missing_cells():
    table = markdown_table(["name", "ms", "note"], [["a", 1.234, None], ["b", 2, "x"]], align="lrl")
    assert table.splitlines() == ["| name | ms | note |", "|---|---:|---|", "| a | 1.23 | – |", "| b | 2 | x |"]
    with pytest.raises(ValueError, match="3 columns"):
        markdown_table(["a", "b", "c"], [], align="lr")


def test_timing_and_memory_helpers():
    calls = []
    times = time_calls(lambda: calls.append(1), torch.device("cpu"), warmup=2, iters=3)
    assert len(calls) == 5 and len(times) == 3 and all(ms >= 0 for ms in times)
    summary = timing_summary([4.0, 1.0, 2.0], items=8)
    assert summary["ms"] == 2.0 and summary["per_s"] == pytest.approx(4000.0)
    meter = MemoryMeter(torch.device("cpu"))
    meter.start()
    # 64 MiB, touched: above glibc's largest mmap threshold (32 MiB), so fresh pages that raise the RSS, never a
    # free block of the heap that earlier tests left resident
    block = torch.ones(64 * 2**20 // 4)
    assert meter.peak_memory_mib() >= (60.0 if meter.resettable else 0.0)
    del block


def test_relative_error():
    reference = torch.tensor([2.0, -4.0])
    assert relative_error(reference + 0.4, reference) == pytest.approx(0.1)
    assert relative_error(torch.tensor([0.5]), torch.zeros(1)) == 0.5  # absolute where the reference is zero
