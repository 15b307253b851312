"""Installing the server: a wheel built from the checkout goes into a fresh virtual environment and runs there.

The build runs on a copy of the checkout (every top-level directory, as a
clone has them: the layout that used to make setuptools give up with "Multiple
top-level packages discovered"), and the installed server runs from another
directory with nothing of the checkout on its path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from harness import ROOT, get

import server


def checkout_copy(destination: Path) -> Path:
    """The checkout as a fresh clone has it (server/, loadtest/, nginx/, tests/, ... side by side), without
    caches, virtual environments or earlier build output, so setuptools meets the real flat layout."""
    skip = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", "site",
                                  ".pytest_cache", ".hypothesis", ".ruff_cache", "results")
    shutil.copytree(ROOT, destination, ignore=skip)
    assert (destination / "loadtest").is_dir() and (destination / "nginx").is_dir()
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with the wheel installed; returns its bin directory."""
    base = tmp_path_factory.mktemp("install")
    source = checkout_copy(base / "source")
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                    "-w", str(dist), str(source)], check=True, capture_output=True, timeout=180)
    wheels = list(dist.glob("calc_server-*.whl"))
    assert len(wheels) == 1, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    outside = [n for n in names if not n.startswith(("server/", "calc_server-"))]
    assert not outside, f"the wheel holds more than the server package: {outside}"
    assert "server/calculator/app.py" in names and "server/transport/reactor.py" in names
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    subprocess.run([bin_dir / "pip", "install", "--no-index", "--no-deps", "-q", str(wheels[0])], check=True,
                   capture_output=True, timeout=180)
    return bin_dir


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("CALC_", "PYTHON"))}


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_installed_console_script_prints_the_version(installed, tmp_path, flag):
    result = subprocess.run([installed / "calc-server", flag], cwd=tmp_path, env=_clean_env(), capture_output=True,
                            text=True, timeout=30)
    assert (result.returncode, result.stdout.strip()) == (0, f"calc-server {server.__version__}")
    help_text = subprocess.run([installed / "calc-server", "--help"], cwd=tmp_path, env=_clean_env(),
                               capture_output=True, text=True, timeout=30).stdout
    assert help_text.startswith("usage: calc-server")


@pytest.mark.slow
def test_installed_server_runs_from_any_directory(installed, tmp_path, server_factory):
    where = subprocess.run([installed / "python", "-c", "import server; print(server.__file__)"], cwd=tmp_path,
                           env=_clean_env(), capture_output=True, text=True, timeout=30, check=True).stdout
    assert Path(where.strip()).is_relative_to(installed.parent), "the venv's copy, not the checkout's"
    served = server_factory("--no-access-log", command=[str(installed / "calc-server")], cwd=tmp_path,
                            env={"PYTHONPATH": ""})
    client = served.connect()
    status, _, body = client.request(get("/add/2/3"))
    client.close()
    assert (status, body) == (200, b"5")


def test_version_flag_without_installing():
    result = subprocess.run([sys.executable, "-m", "server", "-V"], cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert (result.returncode, result.stdout.strip()) == (0, f"calc-server {server.__version__}")


@pytest.mark.slow
def test_pip_install_of_the_source_directory(tmp_path):
    """`pip install .` (here into --target, with this environment's setuptools) installs the package and script."""
    source = checkout_copy(tmp_path / "source")
    target = tmp_path / "target"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q",
                             "--target", str(target), "."], cwd=source, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert (target / "server" / "cli.py").exists() and (target / "bin" / "calc-server").exists()
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "server"]
    env = {**_clean_env(), "PYTHONPATH": str(target)}
    version = subprocess.run([sys.executable, str(target / "bin" / "calc-server"), "-V"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=30)
    assert version.stdout.strip() == f"calc-server {server.__version__}", version.stderr
