"""Every Python script in scripts/ and tools/ answers -h/--help with a first line ``Usage: <script> ...``, as the
shell launchers do (tests/test_launchers.py): one command-line convention.

The scripts run in this process (each main() as `python <script> --help` would call it), so torch is imported once,
not once per script."""

import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).parent.parent
SCRIPTS = sorted(str(path.relative_to(ROOT)) for folder in ("scripts", "tools")
                 for path in (ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_help_of_every_script_starts_with_a_usage_line(script, monkeypatch, capsys):
    help_of(script, "--help", monkeypatch, capsys)


def test_the_short_flag_is_the_same_help(monkeypatch, capsys):
    assert help_of("scripts/train.py", "-h", monkeypatch, capsys) == help_of("scripts/train.py", "--help",
                                                                              monkeypatch, capsys)


def help_of(script: str, flag: str, monkeypatch, capsys) -> str:
    """What ``python <script> <flag>`` prints, checked to start with its Usage: line."""
    main = load_script(script).main
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), flag])  # main() reads sys.argv as on the command line
    with pytest.raises(SystemExit) as done:
        main()
    output = capsys.readouterr()
    assert done.value.code == 0, output.err
    assert output.out.splitlines()[0].startswith(f"Usage: {Path(script).name} "), output.out[:300]
    return output.out


def test_the_scripts_are_found():
    assert {"scripts/train.py", "scripts/train_semvae.py", "scripts/sweep.py", "tools/export_pretrained.py"} <= set(
        SCRIPTS)
