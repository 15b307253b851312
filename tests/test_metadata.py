"""The package's metadata says what CI tests: the Python versions, free threading, the default image.

The versions listed as classifiers are exactly the interpreters scripts/test runs the suites under
(the machine's python3 and the lanes of scripts/lib/matrix.sh); a Free Threading classifier is
there only while a free-threaded lane runs; the Dockerfile's default base image is one of those
versions. The classifiers themselves are checked against PyPI's list (trove-classifiers).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
from harness import ROOT

trove_classifiers = pytest.importorskip("trove_classifiers")  # installed on the 3.11 run (requirements-test.txt)


def classifiers() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["classifiers"]


def matrix_lanes() -> list[str]:
    result = subprocess.run(["bash", "-c", "source scripts/lib/matrix.sh && echo $MATRIX_ALL_LANES"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_every_classifier_is_one_pypi_knows():
    unknown = [c for c in classifiers() if c not in trove_classifiers.classifiers]
    assert not unknown


def test_listed_versions_are_the_tested_ones():
    lanes = matrix_lanes()
    tested = {f"{sys.version_info.major}.{sys.version_info.minor}"}  # scripts/test's first run: python3
    tested |= {re.fullmatch(r"python(3\.\d+)t?", lane).group(1) for lane in lanes}
    version = re.compile(r"Programming Language :: Python :: (3\.\d+)")
    listed = {m.group(1) for c in classifiers() if (m := version.fullmatch(c))}
    assert listed == tested


def test_free_threading_is_claimed_only_with_a_free_threaded_lane():
    claimed = [c for c in classifiers() if c.startswith("Programming Language :: Python :: Free Threading")]
    free_threaded = [lane for lane in matrix_lanes() if lane.endswith("t")]
    assert bool(claimed) == bool(free_threaded)
    # Not "Stable" or "Resilient" while the only free-threaded interpreter tested is 3.13's experimental build.
    assert claimed == ["Programming Language :: Python :: Free Threading :: 2 - Beta"]


def test_default_image_is_a_tested_version():
    dockerfile = (ROOT / "Dockerfile").read_text()
    default = re.search(r"^ARG PYTHON_IMAGE=python:(3\.\d+)-slim$", dockerfile, re.M)
    assert default, "the Dockerfile's default base image is an official python:3.x-slim"
    listed = {c.rsplit(" :: ", 1)[1] for c in classifiers() if re.fullmatch(r".* :: 3\.\d+", c)}
    assert default.group(1) in listed
    # scripts/docker-setup builds the stand-in for that version from Debian's packages.
    assert f"local/python:{default.group(1)}-" in (ROOT / "scripts/docker-setup").read_text()
