"""The wheel installs and works: built with ``pip wheel``, installed without ``-e`` into a
fresh virtual environment (reusing this environment's dependencies, so nothing is
downloaded), ``ae4ad-study --space latent --dry-run`` runs from an empty folder — the
shipped spaces and the paper's reference tables are package data."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the build reads: the project file, the README (the long description), the code.
BUILD_INPUTS = ("pyproject.toml", "README.md", "ae4ad", "study", "search_spaces")
SHIPPED_SPACES = ("latent", "smoke", "paper", "methods", "optuna")


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the checkout stays untouched)."""
    pytest.importorskip("pip")
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        source = REPO / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(source, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(source, src / name)
    out = tmp_path_factory.mktemp("dist")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--wheel-dir", str(out), str(src)]
    )
    (built,) = out.glob("ae4ad_study-*.whl")
    return built


def test_the_wheel_holds_every_module_and_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for space in SHIPPED_SPACES:
        assert f"study/spaces/{space}.yaml" in names
    for table in (REPO / "study" / "reference").glob("*.csv"):
        assert f"study/reference/{table.name}" in names
    # every file of the two packages (modules, templates, tables, the spaces behind the
    # study/spaces link): a new subpackage or data file the packaging misses fails here
    files = set()
    for package in ("ae4ad", "study"):
        for folder, dirs, found in os.walk(REPO / package, followlinks=True):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            relative = Path(folder).relative_to(REPO)
            files |= {str(relative / f) for f in found if not f.endswith(".pyc")}
    assert files - names == set()


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel, without -e; its dependencies come
    from this environment (--system-site-packages, plus this venv's site-packages)."""
    env = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env)])
    python = env / "bin" / "python"
    purelib = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).stdout.strip()
    if sys.prefix != sys.base_prefix:  # this interpreter is itself a venv: reuse its packages
        Path(purelib, "_ae4ad_test_parent.pth").write_text("\n".join(site.getsitepackages()))
    run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q"]
        + [str(wheel)]
    )
    return env


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AE4AD_DATA")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_the_installed_command_dry_runs_a_shipped_space_from_an_empty_folder(venv, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run(
        [venv / "bin" / "ae4ad-study", "--space", "latent", "--dry-run"], cwd=empty, env=clean_env()
    )
    assert done.stdout.startswith("study latent: 16 trials (grid) in 1 stratum\n")
    assert f"results: {empty.resolve() / 'runs' / 'latent'}" in done.stdout
    assert list(empty.iterdir()) == []  # a dry run writes nothing


def test_the_installed_package_is_the_wheel_and_finds_its_data(venv, tmp_path):
    code = (
        "import importlib.resources as r, study, ae4ad\n"
        "from study.space import load_space\n"
        "print(study.__file__); print(ae4ad.__file__)\n"
        "print(load_space('smoke').path)\n"
        "ref = r.files('study') / 'reference'\n"
        "print(sorted(p.name for p in ref.iterdir() if p.name.endswith('.csv')))\n"
    )
    lines = run(
        [venv / "bin" / "python", "-c", code], cwd=tmp_path, env=clean_env()
    ).stdout.splitlines()
    for line in lines[:3]:
        assert Path(line).resolve().is_relative_to(venv.resolve()), line
    expected = sorted(p.name for p in (REPO / "study" / "reference").glob("*.csv"))
    assert lines[3] == str(expected)
