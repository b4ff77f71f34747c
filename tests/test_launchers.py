"""The shell launchers as command-line tools: help without side effects."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("launcher", ["run_train.sh", "run_inference.sh", "run_fast_inference.sh",
                                      "run_eval_via_guided_diffusion.sh"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_launchers_print_their_help_without_starting_anything(launcher, flag):
    env = {**os.environ, "PYTHON": "/bin/false"}  # any Python the launcher started would fail the call
    result = subprocess.run(["bash", str(ROOT / launcher), flag], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == ""
    first = result.stdout.splitlines()[0]
    assert first and not first.startswith(("#", "!")) and "set -euo" not in result.stdout
