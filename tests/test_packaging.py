"""Packaging: version, licences, changelog, extras, and the built wheel's and sdist's contents.

The wheel and sdist tests build a copy of the tree without build isolation (fast, offline), and
are skipped when ``build`` or a recent enough setuptools is missing; ``twine check`` runs on what
they build when twine is installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import convlstm
from convlstm.models import EncoderForecaster

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
# Shipped trained weights (convlstm/pretrained/<name>/): every file of every shipped folder.
SHIPPED = sorted(
    str(p.relative_to(PACKAGE))
    for p in (PACKAGE / "pretrained").glob("*/*")
    if p.is_file() and (p.parent / "config.json").is_file()
)
# What the sdist carries besides the package (MANIFEST.in): single files, and folders whole.
SDIST_FILES = ["pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "mkdocs.yml"]
SDIST_FOLDERS = ["benchmarks", "docs", "examples", "scripts", "tests"]
# Never copied into a test build: environments, outputs, caches, version control.
TREE_IGNORE = shutil.ignore_patterns(
    ".*", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", "site", "runs"
)


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
    assert {"pysteps", "h5py", "xarray", "tifffile"} <= names(extras["nowcast"])
    assert {"onnx", "onnxruntime", "onnxscript"} <= names(extras["export"])
    assert {"mkdocs", "mkdocs-material", "mkdocstrings-python"} <= names(extras["docs"])
    assert {"pytest", "hypothesis", "ruff", "mypy", "build", "twine"} <= names(extras["dev"])
    assert PROJECT["scripts"]["convlstm"] == "convlstm.cli:main"


def test_package_data_present_and_declared():
    declared = PYPROJECT["tool"]["setuptools"]["package-data"]["convlstm"]
    configs = sorted((PACKAGE / "configs").glob("*.toml"))
    assert configs, "no bundled configs/*.toml"
    for relative in [*PACKAGE_DATA, *SHIPPED, *(str(p.relative_to(PACKAGE)) for p in configs)]:
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


def _build(tree: Path, kind: str, out: Path) -> Path:
    """Build ``kind`` (``"wheel"`` or ``"sdist"``) of ``tree`` into ``out``, check it with
    ``twine check --strict`` where twine is installed, and return its path."""
    reason = _can_build()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        [sys.executable, "-m", "build", f"--{kind}", "--no-isolation", "--outdir", str(out)],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = out.glob("convlstm-*.whl" if kind == "wheel" else "convlstm-*.tar.gz")
    if importlib.util.find_spec("twine") is not None:
        result = subprocess.run(
            [sys.executable, "-m", "twine", "check", "--strict", str(built)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    return built


def test_wheel(tmp_path):
    """Build the wheel from a copy of the tree and check its contents (and ``twine check``)."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=TREE_IGNORE)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    # a pretrained folder in the copy, so that the wheel's patterns are proven even before any
    # weights ship (save_pretrained's layout, with the optional metrics.json)
    probe = tree / "src" / "convlstm" / "pretrained" / "probe_model"
    EncoderForecaster(1, [2], 3, patch_size=2).save_pretrained(probe, metrics={"forecasters": {}})
    probe_files = sorted(f"convlstm/pretrained/probe_model/{p.name}" for p in probe.iterdir())
    assert len(probe_files) == 4, probe_files
    wheel = _build(tree, "wheel", tmp_path / "dist")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"convlstm-{convlstm.__version__}.dist-info"
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    for relative in [*PACKAGE_DATA, *SHIPPED]:
        assert f"convlstm/{relative}" in names, relative
    assert set(probe_files) <= names, f"pretrained files missing: {set(probe_files) - names}"
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


def test_sdist(tmp_path):
    """Build the sdist from a copy of the tree: it carries the package with its data, the docs,
    tests, examples, configs, benchmarks and changelog (MANIFEST.in), and no bytecode."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=TREE_IGNORE)
    stale = tree / "tests" / "__pycache__" / "test_packaging.cpython-311.pyc"
    stale.parent.mkdir()
    stale.write_bytes(b"stale bytecode")
    sdist = _build(tree, "sdist", tmp_path / "dist")

    prefix = f"convlstm-{convlstm.__version__}/"
    with tarfile.open(sdist) as archive:
        names = {m.name.removeprefix(prefix) for m in archive.getmembers() if m.isfile()}
    expected = {*SDIST_FILES, "MANIFEST.in", "docs/index.md", "examples/frame_sequence.py"}
    expected |= {f"src/convlstm/{relative}" for relative in [*PACKAGE_DATA, *SHIPPED]}
    expected |= {f"src/convlstm/configs/{p.name}" for p in (PACKAGE / "configs").glob("*.toml")}
    expected |= {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    for folder in SDIST_FOLDERS:
        files = [p for p in (tree / folder).rglob("*") if p.is_file() and p != stale]
        assert files, f"{folder}/ is empty"
        expected |= {p.relative_to(tree).as_posix() for p in files}
    assert expected <= names, f"missing from the sdist: {sorted(expected - names)}"
    assert not [n for n in names if n.endswith(".pyc")]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy():
    """``mypy`` passes on ``src/convlstm`` with the configuration in pyproject.toml."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
