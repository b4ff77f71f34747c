"""Smoke tests of scripts/bench_model.py and scripts/bench_train.py on the tiny golden config (no timing thresholds)."""

import json

import pytest

from tests.conftest import DATA, load_script



@pytest.fixture(scope="module")
def bench_model():
    return load_script("scripts/bench_model.py")


def test_forward_and_train_rows_in_json(bench_model, tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = bench_model.main(["--config", str(DATA / "sfd_tiny.yaml"), "--device", "cpu", "--batch", "2",
                               "--iters", "1", "--warmup", "0", "--mode", "both", "--json", str(out)])
    assert status == 0
    result = json.loads(out.read_text())
    rows = {row["mode"]: row for row in result["rows"]}
    assert set(rows) == {"forward", "train"} and len(result["rows"]) == 2
    for row in rows.values():
        assert row["batch"] == 2
        assert row["ms_per_iter"] > 0 and row["images_per_s"] > 0
        assert row["peak_mem_mib"] >= 0
        assert len(row["times_ms"]) == 1
    assert result["params_m"] > 0 and result["dtype"] == "fp32"
    printed = capsys.readouterr().out
    assert "| mode | batch | ms/iter | img/s | peak mem (MiB) |" in printed
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file


def test_config_error_is_one_line_and_exit_2(bench_model, tmp_path, capsys):
    status = bench_model.main(["--config", str(DATA / "sfd_tiny.yaml"), "--device", "cpu",
                               "--override", "model.depth=x", "--json", str(tmp_path / "bench.json")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "model.depth" in err and "\n" not in err
    assert not (tmp_path / "bench.json").exists()


def test_train_benchmark_times_both_data_paths(capsys):
    """scripts/bench_train.py prints one row per data path with the fast path's ratio (no timing thresholds)."""
    module = load_script("scripts/bench_train.py")
    assert module.main(["--config", str(DATA / "sfd_tiny.yaml"), "--batch", "4", "--steps", "1"]) == 0
    table = capsys.readouterr().out
    assert "| 4 | shards |" in table and "| 4 | memory |" in table and "speed-up vs shards" in table
