"""Packaging: version, licences, changelog, extras, and the built wheel's contents.

The wheel test builds a copy of the tree without build isolation (fast, offline), and is skipped
when ``build`` or a recent enough setuptools is missing; ``twine check`` runs on the wheel when
twine is installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import convlstm

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
PACKAGE = ROOT / "src" / "convlstm"

# Files the package reads at run time, relative to the package folder.
PACKAGE_DATA = [
    "py.typed",
    "data/assets/mnist_digits_8k.npz",
    "data/assets/DATA_LICENSE.md",
]


def test_version_matches_pyproject():
    assert convlstm.__version__ == PROJECT["version"]


def test_installed_metadata_matches():
    try:
        installed = importlib.metadata.version("convlstm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("convlstm is not installed (running from the source tree)")
    assert installed == convlstm.__version__, (
        f"installed metadata says {installed}, the package {convlstm.__version__}: "
        "reinstall with pip install -e ."
    )


def test_changelog_has_this_version():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(convlstm.__version__)}\]", changelog, re.M)


def test_licenses():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    data_license = (PACKAGE / "data" / "assets" / "DATA_LICENSE.md").read_text(encoding="utf-8")
    assert "CC BY-SA 3.0" in data_license and "mnist" in data_license
    assert "MIT" in PROJECT["license"] and "CC-BY-SA-3.0" in PROJECT["license"]
    for path in PROJECT["license-files"]:
        assert (ROOT / path).is_file(), path


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert commands == [
        'python3 -m venv .venv && .venv/bin/pip install "torch==2.13.0" -e . '
        "&& .venv/bin/convlstm train",
        'python3 -m venv .venv && .venv/bin/pip install "torch==2.13.0" -e ".[dev,export]" '
        "&& .venv/bin/python -m pytest",
    ]
    assert readme.index("```bash") < readme.index("## ")  # before any section


def test_extras():
    extras = PROJECT["optional-dependencies"]
    assert {"keras", "nowcast", "export", "docs", "dev"} <= set(extras)

    def names(requirements):
        return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}

    assert "keras" in names(extras["keras"])
    assert {"pysteps", "h5py"} <= names(extras["nowcast"])
    assert {"onnx", "onnxruntime", "onnxscript"} <= names(extras["export"])
    assert {"mkdocs", "mkdocs-material", "mkdocstrings-python"} <= names(extras["docs"])
    assert {"pytest", "hypothesis", "ruff", "mypy", "build", "twine"} <= names(extras["dev"])
    assert PROJECT["scripts"]["convlstm"] == "convlstm.cli:main"


def test_package_data_present_and_declared():
    declared = PYPROJECT["tool"]["setuptools"]["package-data"]["convlstm"]
    configs = sorted((PACKAGE / "configs").glob("*.toml"))
    assert configs, "no bundled configs/*.toml"
    for relative in [*PACKAGE_DATA, *(str(p.relative_to(PACKAGE)) for p in configs)]:
        path = PACKAGE / relative
        assert path.is_file(), relative
        assert path.stat().st_size > 0 or path.name == "py.typed", f"{relative} is empty"
        assert any(Path(relative).match(pattern) for pattern in declared), (
            f"{relative} is not matched by [tool.setuptools.package-data]"
        )


def _can_build() -> str | None:
    if importlib.util.find_spec("build") is None:
        return "the build package is not installed"
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return "setuptools is not installed"
    if int(version.split(".")[0]) < 77:
        return f"setuptools {version} < 77 (pyproject's build requirement)"
    return None


def test_wheel(tmp_path):
    """Build the wheel from a copy of the tree and check its contents (and ``twine check``)."""
    reason = _can_build()
    if reason:
        pytest.skip(reason)
    tree = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", tree / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    out = tmp_path / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("convlstm-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"convlstm-{convlstm.__version__}.dist-info"
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    for relative in PACKAGE_DATA:
        assert f"convlstm/{relative}" in names, relative
    for config in (PACKAGE / "configs").glob("*.toml"):
        assert f"convlstm/configs/{config.name}" in names, config.name
    sources = {"convlstm/" + str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    assert sources <= names, f"missing modules: {sorted(sources - names)}"
    assert not any(n.startswith(("tests/", "docs/")) for n in names)
    assert f"{dist_info}/licenses/LICENSE" in names
    assert metadata["Version"] == convlstm.__version__
    assert metadata["License-Expression"] == PROJECT["license"]
    assert {"keras", "nowcast", "export", "docs", "dev"} <= set(metadata.get_all("Provides-Extra"))
    assert "convlstm = convlstm.cli:main" in entry_points

    if importlib.util.find_spec("twine") is not None:
        result = subprocess.run(
            [sys.executable, "-m", "twine", "check", "--strict", str(wheel)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
@pytest.mark.xfail(
    reason="mypy errors remain in modules being worked on (cells, layers, models, training, "
    "benchmark, _baselines, _gates, _settings); drop this marker once they are fixed",
    strict=False,
)
def test_mypy():
    """``mypy`` passes on ``src/convlstm`` with the configuration in pyproject.toml."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
