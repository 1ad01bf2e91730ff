"""What the docs show holds: every import in their code blocks runs, the plugin contract in
docs/plugin_hooks.md is the one generated from hookspecs.py, and the counts and names the
README and ARCHITECTURE.md give of the hooks and loss inputs are hookspecs'."""

import ast
import importlib
import re
import textwrap
from pathlib import Path

import pytest

from ddmr_core.plugins import contract
from ddmr_core.plugins.hookspecs import KINDS, LOSS_INPUTS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^[ \t]*```(\w*)[ \t]*\n(.*?)^[ \t]*```", re.S | re.M)
_DOTTED = re.compile(r"`(ddmr_(?:core|plugins)(?:\.\w+)+)")
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
            "nine": 9, "ten": 10}


def _imports(text: str):
    """``(module, names)`` of every ``import``/``from ... import`` line of ddmr's packages in
    the Python code blocks of ``text`` (indented blocks included)."""
    for lang, block in _BLOCK.findall(text):
        if lang not in ("", "python", "py"):
            continue
        block = textwrap.dedent(block)
        try:
            nodes = list(ast.walk(ast.parse(block)))
        except SyntaxError:  # not Python as a whole (a shell session, a gin file): line by line
            nodes = []
            for line in block.splitlines():
                if line.strip().startswith(("import ", "from ")):
                    try:
                        nodes.append(ast.parse(line.strip()).body[0])
                    except SyntaxError:
                        pass
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if node.module.split(".")[0] in ("ddmr_core", "ddmr_plugins"):
                    yield node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in ("ddmr_core", "ddmr_plugins"):
                        yield a.name, []


def _doc_imports():
    return [(doc.relative_to(ROOT).as_posix(), module, names)
            for doc in DOCS for module, names in _imports(doc.read_text())]


def test_the_docs_show_imports():
    assert len(_doc_imports()) >= 5  # the parser found the README's and plugin_hooks.md's


def _script_imports():
    """``(file, module, names)`` of every import of ddmr's packages in the benchmarks' and
    examples' Python files, function-local (lazy) imports included: they run only when a
    user runs the script, so nothing else notices a module that moved."""
    out = []
    for path in sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "examples").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level \
                    and node.module.split(".")[0] in ("ddmr_core", "ddmr_plugins"):
                out.append((path.relative_to(ROOT).as_posix(), node.module, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("doc,module,names", _doc_imports() + _script_imports())
def test_every_import_the_docs_show_runs(doc, module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}"), \
            f"{doc}: `from {module} import {name}` fails"


def _resolve(dotted: str):
    """The module or attribute a dotted name ``ddmr_core.a.b.c`` names (ImportError or
    AttributeError when it names nothing)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ModuleNotFoundError:
            continue
        for name in parts[n:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize("doc", [d.relative_to(ROOT).as_posix() for d in DOCS])
def test_every_dotted_name_the_docs_give_exists(doc):
    """`ddmr_core.model.checkpoint.load_model`-style names in the prose name real things."""
    missing = []
    for dotted in sorted(set(_DOTTED.findall((ROOT / doc).read_text()))):
        try:
            _resolve(dotted)
        except (ImportError, AttributeError):
            missing.append(dotted)
    assert not missing, f"{doc} names what does not exist: {missing}"


def test_plugin_hooks_md_holds_the_contract_generated_from_hookspecs():
    text = (ROOT / "docs" / "plugin_hooks.md").read_text()
    assert contract.replace_block(text, contract.markdown_block()) == text, \
        "docs/plugin_hooks.md is stale: run python -m ddmr_core.plugins.contract"


def test_the_readme_counts_the_hooks_there_are():
    counts = re.findall(r"any of the (\w+)\s+hooks", (ROOT / "README.md").read_text())
    assert counts and all(_NUMBERS.get(c, c) in (len(KINDS), str(len(KINDS))) for c in counts), counts


def test_the_loss_inputs_the_docs_name_are_hookspecs():
    from ddmr_core.model.registration_model import RegistrationModel  # noqa: F401  (reads them from there)

    assert "displacement" in LOSS_INPUTS
    block = contract.markdown_block()
    for name in LOSS_INPUTS:
        assert f"`{name}` losses" in block or f"`{name}`" in block


@pytest.mark.parametrize("doc", [d.relative_to(ROOT).as_posix() for d in DOCS])
def test_every_source_path_the_docs_give_exists(doc):
    """`ddmr_core/spatial/refine.py`-style paths in the docs name files and folders there are."""
    paths = set(re.findall(r"\b((?:ddmr_core|plugins|configs|benchmarks|tests)/[\w/.-]*\w)(?![@<\w./-])", (ROOT / doc).read_text()))
    missing = sorted(p for p in paths if "<" not in p and not (ROOT / p).exists())
    assert not missing, f"{doc} names paths that do not exist: {missing}"
