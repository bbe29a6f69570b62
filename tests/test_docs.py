"""The documentation cannot rot: a strict site build, every code example of the pages, every
tutorial script in its quick mode, and every documented command line.

Conventions for ``docs/**/*.md`` (see ``docs/about.md``):

* a ```` ```python ```` block is executed; a ```` ```pycon ```` block is run as a doctest (its
  shown output is checked). The blocks of one page run in order in one namespace, in a temporary
  working directory, so a page can build on its earlier blocks;
* the line ``<!-- docs-test: skip -->`` just before a block leaves it out (for code that cannot run
  here, such as a Flower deployment); use it sparingly;
* a block made only of snippet lines (``--8<-- "file"``) shows a file that is run elsewhere (a
  tutorial script, an example), so it is not executed again;
* a block that needs an optional package that is not installed (Flower, PyTorch, dp-accounting,
  cryptography) or the MNIST files that are not there is skipped, not failed.
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = DOCS / "tutorials"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "figures" not in p.relative_to(DOCS).parts)
SKIP_MARK = "<!-- docs-test: skip -->"
OPTIONAL_MODULES = {"flwr", "torch", "torchvision", "dp_accounting", "cryptography", "matplotlib"}
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.M | re.S,
)
SCRIPTS = sorted(p for p in TUTORIALS.glob("*.py") if p.name != "tutorial_utils.py")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    body: str
    skipped: bool

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, dedented, with their skip marks."""
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        blocks.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start()) + 1,
                lang=match.group("lang"),
                body=textwrap.dedent(match.group("body")),
                skipped=bool(before) and before[-1].strip() == SKIP_MARK,
            )
        )
    return blocks


def is_snippet(block: Block) -> bool:
    lines = [line for line in block.body.splitlines() if line.strip()]
    return bool(lines) and all(line.strip().startswith("--8<--") for line in lines)


def runnable(page: Path) -> list[Block]:
    return [
        b
        for b in code_blocks(page)
        if b.lang in ("python", "pycon") and not b.skipped and not is_snippet(b)
    ]


def _skip_if_optional_missing(error: BaseException, block: Block) -> None:
    if isinstance(error, ModuleNotFoundError):
        top = (error.name or "").split(".")[0]
        if top in OPTIONAL_MODULES and importlib.util.find_spec(top) is None:
            pytest.skip(f"{block.where} needs the optional package {top!r}")
    if isinstance(error, FileNotFoundError) and "MNIST" in str(error):
        pytest.skip(f"{block.where} needs the MNIST files: {error}")


def run_block(block: Block, namespace: dict) -> None:
    if block.lang == "python":
        code = compile(block.body, block.where, "exec")
        try:
            exec(code, namespace)
        except Exception as error:
            _skip_if_optional_missing(error, block)
            raise
        return
    test = doctest.DocTestParser().get_doctest(
        block.body, namespace, block.where, str(block.page), block.line
    )
    report: list[str] = []
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    result = runner.run(test, out=report.append, clear_globs=False)
    namespace.update(test.globs)  # DocTest works on a copy of the namespace
    if result.failed:
        text = "".join(report)
        missing = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", text)
        if missing:
            _skip_if_optional_missing(ModuleNotFoundError(name=missing.group(1)), block)
        if "MNIST" in text and "FileNotFoundError" in text:
            pytest.skip(f"{block.where} needs the MNIST files")
        pytest.fail(f"{block.where}: {result.failed} failing example(s)\n{text}", pytrace=False)


def _page_id(page: Path) -> str:
    return str(page.relative_to(DOCS))


PAGES_WITH_CODE = [p for p in PAGES if runnable(p)]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_page_id)
def test_page_examples_run(page, tmp_path, monkeypatch):
    """Every Python and pycon block of the page runs, in order, in one namespace."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in runnable(page):
        run_block(block, namespace)


def test_the_docs_have_examples_and_skip_marks_are_rare():
    blocks = [b for p in PAGES for b in code_blocks(p) if b.lang in ("python", "pycon")]
    skipped = [b.where for b in blocks if b.skipped]
    assert len(blocks) >= 20
    assert len(skipped) <= max(3, len(blocks) // 10), f"too many skipped blocks: {skipped}"


def test_block_parser_sees_skip_marks_snippets_and_indented_blocks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- docs-test: skip -->\n```python\nraise\n```\n\n"
        '```python\n--8<-- "examples/mnist_plain.py"\n```\n\n!!! note\n    ```pycon\n'
        "    >>> 1 + 1\n    2\n    ```\n"
    )
    blocks = code_blocks(page)
    assert [(b.lang, b.skipped, is_snippet(b)) for b in blocks] == [
        ("python", False, False),
        ("python", True, False),
        ("python", False, True),
        ("pycon", False, False),
    ]
    assert [b.body for b in runnable(page)] == ["x = 1\n", ">>> 1 + 1\n2\n"]


def test_a_wrong_shown_output_fails(tmp_path):
    block = Block(tmp_path / "p.md", 1, "pycon", ">>> 1 + 1\n3\n", False)
    with pytest.raises(pytest.fail.Exception, match="1 failing example"):
        run_block(block, {})


# -- command lines --------------------------------------------------------------------------


def documented_commands() -> list[tuple[str, list[str]]]:
    """``python ...`` command lines of the shell blocks: (where, argv after ``python``)."""
    commands = []
    for page in PAGES:
        for block in code_blocks(page):
            if block.lang not in ("bash", "console", "sh", "shell"):
                continue
            text = block.body.replace("\\\n", " ")
            for line in text.splitlines():
                line = line.strip().removeprefix("$ ")
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    if words and re.fullmatch(r"(\S*/)?python3?", words[0]):
                        commands.append((block.where, words[1:]))
    return commands


def test_documented_mnist_commands_parse():
    """Every ``python -m aggkit_torch.mnist ...`` in the docs uses options that exist."""
    from aggkit_torch.mnist import parse_args

    found = 0
    for where, argv in documented_commands():
        if argv[:2] == ["-m", "aggkit_torch.mnist"]:
            found += 1
            try:
                parse_args(argv[2:])
            except SystemExit:
                pytest.fail(f"{where}: `python {' '.join(argv)}` does not parse")
    assert found >= 3


def test_documented_scripts_exist():
    for where, argv in documented_commands():
        if argv and argv[0].endswith(".py"):
            assert (ROOT / argv[0]).is_file(), f"{where}: {argv[0]} does not exist"


# -- the site -------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path):
    """The site builds with --strict: a broken link, snippet, nav entry or API reference fails."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install .[docs])")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    api = (site / "api" / "aggkit" / "index.html").read_text()
    assert 'id="aggkit.robust_aggregator"' in api  # mkdocstrings rendered the docstrings
    assert ":func:`" not in api  # Sphinx roles were rewritten (docs/_griffe/rst_roles.py)


# -- the tutorials --------------------------------------------------------------------------


FIGURE_FOLDERS = {"federated_mnist.py": "federated-mnist", "tuning_tour.py": "tuning"}


def figures_referenced(script: Path) -> set[str]:
    """Files of ``docs/tutorials/figures/<script's folder>/`` that the pages use."""
    pattern = re.compile(rf"figures/{re.escape(FIGURE_FOLDERS[script.name])}/([\w.-]+)")
    return {m for page in PAGES for m in pattern.findall(page.read_text())}


@pytest.mark.mnist
@pytest.mark.torch
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_tutorial_runs_quick_and_writes_what_the_pages_show(script, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from aggkit_torch.data import find_mnist_root

    try:
        find_mnist_root()
    except FileNotFoundError as error:
        pytest.skip(f"real MNIST files not available: {error}")
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    referenced = figures_referenced(script)
    assert referenced, f"no page shows the output of {script.name}"
    written = {p.name for p in tmp_path.iterdir()}
    missing = referenced - written
    assert not missing, f"pages show files the script no longer writes: {missing}"
    committed = {p.name for p in (TUTORIALS / "figures" / FIGURE_FOLDERS[script.name]).iterdir()}
    assert referenced <= committed, f"figures not committed: {referenced - committed}"
    if script.name == "federated_mnist.py":
        assert_examples_learn((tmp_path / "seed.txt").read_text())


def assert_examples_learn(transcript: str) -> None:
    """Part 1 of the federated MNIST tutorial ran both example scripts for two epochs on a few
    thousand examples, and each ended above 50% test accuracy (chance is 10%)."""
    runs = re.split(r"^\$ python ", transcript, flags=re.M)[1:]
    scripts = [run.split()[0] for run in runs]
    assert scripts == ["examples/mnist_plain.py", "examples/mnist_federated.py"], transcript
    for run in runs:
        last = run.strip().splitlines()[-1]
        assert last.startswith("epoch 2: test accuracy"), run
        assert float(last.rsplit(" ", 1)[1]) > 0.5, run


def test_committed_seed_diff_is_the_current_one():
    """The federated MNIST page shows the diff between the two examples as committed."""
    sys.path.insert(0, str(TUTORIALS))
    try:
        import federated_mnist
    finally:
        sys.path.remove(str(TUTORIALS))
    committed = TUTORIALS / "figures" / "federated-mnist" / "seed.diff"
    assert committed.read_text() == federated_mnist.seed_diff(), (
        "examples/ changed: run `python docs/tutorials/federated_mnist.py` to refresh the page"
    )
