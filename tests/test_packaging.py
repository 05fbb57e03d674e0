"""Packaging: a wheel builds from the checkout and installs into a fresh venv with a working `rctmon`."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile

import pytest

from support import REPO

from rctmon import __version__


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), REPO],
                   check=True, timeout=300)
    wheels = list(dist.glob("rctmon-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as wheel:
        top = {name.split("/")[0] for name in wheel.namelist()}
    assert top == {"rctmon", f"rctmon-{__version__}.dist-info"}, top  # no tests or benchmarks shipped

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheels[0])]
    subprocess.run(pip, check=True, timeout=300)
    rctmon = str(env_dir / "bin" / "rctmon")
    version = subprocess.run([rctmon, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"rctmon {__version__}"
    example = os.path.join(REPO, "config.example.yml")
    check = subprocess.run([rctmon, "-c", example, "check-config"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "bind_port: 9831" in check.stdout
