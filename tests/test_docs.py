"""The documentation runs: code blocks of the docs and README, docstring examples, the site build.

* Every ```python block of ``README.md`` and ``docs/**/*.md`` is executed, the blocks of one
  file in order in one namespace (a later block may use an earlier block's names), in a
  temporary working folder. A block preceded by the line ``<!-- skip -->`` is not run (keep
  these rare: commands for several GPUs, CUDA-only code).
* The ``>>>`` examples of every ``convlstm`` module's docstrings run with :mod:`doctest`.
* Every public ``convlstm`` module has an API reference page (``::: module`` in ``docs/``).
* ``mkdocs build --strict`` succeeds (skipped when MkDocs is not installed).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import convlstm
from convlstm import baselines, models
from convlstm.data import registry

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOC_FILES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
SKIP = "<!-- skip -->"
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+) *(?P<info>[^`]*)$")
_TITLE = re.compile(r'title="([^"]+)"')
_OPTIONAL = {
    "keras",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "pysteps",
    "cv2",
    "h5py",
    "xarray",
    "tifffile",
    "lightning",
}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    line: int  # 1-based line of the first code line
    language: str
    title: str | None  # from ``title="..."`` after the language
    code: str
    skipped: bool  # the last non-blank line before the fence is SKIP


def code_blocks(text: str) -> list[Block]:
    """Every fenced code block of a Markdown text, indented ones (in admonitions) included."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match.group("indent"), match.group("fence"), match.group("info")
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        title = _TITLE.search(info)
        previous = next((x.strip() for x in reversed(lines[:i]) if x.strip()), "")
        blocks.append(
            Block(
                line=i + 2,
                language=(info.split() or [""])[0].lower(),
                title=title.group(1) if title else None,
                code="\n".join(line.removeprefix(indent) for line in lines[i + 1 : end]),
                skipped=previous == SKIP,
            )
        )
        i = end + 1
    return blocks


def _doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _runnable(path: Path) -> bool:
    return any(
        b.language == "python" and not b.skipped for b in code_blocks(path.read_text("utf-8"))
    )


RUNNABLE = [path for path in DOC_FILES if _runnable(path)]


def test_code_blocks_parser():
    text = (
        "x\n```python\na = 1\n```\n<!-- skip -->\n```python\nb = 2\n```\n"
        '```toml title="c.toml"\n[a]\n```\n!!! note\n    ```python\n    d = 3\n    ```\n'
    )
    assert code_blocks(text) == [
        Block(3, "python", None, "a = 1", False),
        Block(7, "python", None, "b = 2", True),
        Block(10, "toml", "c.toml", "[a]", False),
        Block(14, "python", None, "d = 3", False),
    ]


@pytest.mark.parametrize("path", RUNNABLE, ids=_doc_id)
@pytest.mark.usefixtures("one_thread")  # the examples are tiny
def test_doc_code_blocks_run(path, tmp_path, monkeypatch):
    """Run the file's python blocks in order in one namespace, in a temporary folder where each
    block with a ``title="name"`` (a configuration file, ...) is first written as ``name``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    _run_blocks(path, tmp_path)


def _run_blocks(path: Path, folder: Path) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in code_blocks(path.read_text(encoding="utf-8")):
        where = f"{_doc_id(path)}:{block.line}"
        if block.language != "python":
            if block.title:
                (folder / block.title).write_text(block.code + "\n", encoding="utf-8")
            continue
        if block.skipped:
            continue
        try:
            exec(compile(block.code, where, "exec", dont_inherit=True), namespace)
        except ModuleNotFoundError as error:
            if error.name and error.name.split(".")[0] in _OPTIONAL:
                pytest.skip(f"{where} needs the optional package {error.name}")
            raise AssertionError(f"the python block at {where} failed: {error!r}") from error
        except Exception as error:
            raise AssertionError(f"the python block at {where} failed: {error!r}") from error


def test_skips_are_rare():
    skipped = [
        f"{_doc_id(path)}:{block.line}"
        for path in DOC_FILES
        for block in code_blocks(path.read_text(encoding="utf-8"))
        if block.skipped
    ]
    assert len(skipped) <= 3, f"too many skipped doc blocks: {skipped}"


def public_modules() -> list[str]:
    """``convlstm`` and its submodules whose names have no leading underscore."""
    names = ["convlstm"]
    for info in pkgutil.walk_packages(convlstm.__path__, "convlstm."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", public_modules())
@pytest.mark.usefixtures("one_thread")
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # examples that register datasets (convlstm.data.registry) must not leak into later tests
    monkeypatch.setattr(registry, "_REGISTRY", registry._REGISTRY.copy())
    monkeypatch.setattr(models, "_REGISTRY", models._REGISTRY.copy())  # so are models
    monkeypatch.setattr(baselines, "_REGISTRY", baselines._REGISTRY.copy())  # and baselines
    try:
        module = importlib.import_module(name)
    except ImportError as error:  # a module of an optional extra (convlstm.lightning)
        if error.name and error.name.split(".")[0] in _OPTIONAL:
            pytest.skip(f"{name} needs the optional package {error.name}")
        raise
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    tests = [t for t in finder.find(module, name) if t.examples]
    if not tests:
        pytest.skip(f"{name} has no docstring examples")
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see above)"


def test_every_public_module_has_a_reference_page():
    documented = set()
    for path in DOCS.rglob("*.md"):
        documented.update(re.findall(r"^::: *([\w.]+)", path.read_text(encoding="utf-8"), re.M))
    missing = [name for name in public_modules() if name not in documented]
    assert not missing, f"add an API reference page (docs/reference/) for: {missing}"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "layers" / "index.html").is_file()
