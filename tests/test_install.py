"""The package installs itself: a wheel built from the repository, installed into a fresh virtual environment,
imports from there (not from the source tree), ships its package data, and declares every distribution it needs.

Offline and quick: the dependencies are not downloaded; the fresh environment sees the running interpreter's
installed packages through a .pth file (an environment created with --system-site-packages would see the system's,
not this one's), and the check is that each of the wheel's Requires-Dist is satisfied there."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).parent.parent
# No registry, no version check, no prompt: the test never reaches the network.
PIP_ENV = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}

CHECK = textwrap.dedent('''
    import importlib.metadata as metadata
    import json
    import sys

    from packaging.requirements import Requirement

    import sfd
    from sfd.experiments.fashion import base_model

    missing = []
    for line in metadata.requires("sfd") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an optional extra (test)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{requirement}: not installed")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{requirement}: {version} installed")
    print(json.dumps({"file": sfd.__file__, "requires": metadata.requires("sfd"), "missing": missing,
                      "delta_t": base_model().semfirst_delta_t}))
''')


def dependency_folders() -> list[str]:
    """Where the running interpreter's installed distributions live (its site-packages folders)."""
    return [path for path in sys.path if Path(path).name in ("site-packages", "dist-packages") and Path(path).is_dir()]


def test_the_wheel_installs_into_an_empty_environment_and_imports(tmp_path):
    # Built from a copy: an in-tree build would leave build/ and sfd.egg-info/ in the repository.
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copytree(ROOT / "sfd", source / "sfd", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheels"), str(source)], check=True, env=PIP_ENV, capture_output=True)
    [wheel] = (tmp_path / "wheels").glob("sfd-*.whl")

    environment = tmp_path / "env"
    venv.create(environment, with_pip=False, system_site_packages=False)
    python = environment / "bin" / "python"
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                                str(wheel)], env=PIP_ENV, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    [site_packages] = (environment / "lib").glob("python3*/site-packages")
    (site_packages / "running_interpreter_packages.pth").write_text("\n".join(dependency_folders()) + "\n")

    bare = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([str(python), "-c", CHECK], cwd=tmp_path, env={**bare, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).is_relative_to(site_packages), report["file"]  # the wheel's copy, not the source's
    names = {Requirement(line).name.lower() for line in report["requires"]}
    assert {"torch", "omegaconf", "safetensors", "numpy", "pyyaml"} <= names
    assert report["missing"] == []
    assert report["delta_t"] == 0.3  # the demo config, read from the installed package's data
