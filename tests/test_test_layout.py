"""Test files do not import from each other: a helper two test files share lives in ``tests/web/helpers.py``
(clients, request bodies, page readers, canned data) or ``tests/web/factories.py`` (ORM builders), fixtures in a
``conftest.py``.

Importing from a ``test_*`` module ties one test file to another's internals, and deleting or renaming a test
file then breaks unrelated ones. Every ``.py`` file under ``tests/`` is read with :mod:`ast` (imports anywhere in
the file, inside functions too); an import of a module named ``test_*`` inside the ``tests`` package fails, in
any spelling: ``from tests.web.test_api import x``, ``import tests.web.test_api``, ``from tests.web import
test_api``, ``from .test_api import x``, ``from . import test_api``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def _package_of(path: Path) -> list[str]:
    """The dotted package a file under the repository root belongs to, as parts (``tests/web/x.py`` → tests, web)."""
    return list(path.relative_to(ROOT).with_suffix("").parts[:-1])


def _is_test_module(dotted: str) -> bool:
    parts = dotted.split(".")
    return len(parts) >= 2 and parts[0] == "tests" and parts[-1].startswith("test_")


def imported_test_modules(source: str, path: Path) -> list[str]:
    """The ``tests.…test_*`` modules *source* (the text of *path*) imports, as ``line: module``."""
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: {alias.name}" for alias in node.names if _is_test_module(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path)
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if _is_test_module(module):
                found.append(f"{node.lineno}: {module}")
            else:
                # ``from tests.web import test_api`` imports the test module itself
                found += [f"{node.lineno}: {module}.{alias.name}" for alias in node.names
                          if _is_test_module(f"{module}.{alias.name}")]
    return found


def test_no_test_file_imports_another() -> None:
    files = sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)
    assert len(files) > 10, "the tests/ tree was found"
    offences = [f"{path.relative_to(ROOT)}:{hit}" for path in files
                for hit in imported_test_modules(path.read_text(encoding="utf-8"), path)]
    assert not offences, (
        "test files import from other test files; move the shared helper to tests/web/helpers.py "
        "(or a conftest.py fixture) and import it from there:\n" + "\n".join(offences)
    )


@pytest.mark.parametrize("line", [
    "from tests.web.test_api import token_client",
    "import tests.web.test_api",
    "import tests.web.test_api as api",
    "from tests.web import test_api",
    "from .test_api import token_client",
    "from . import test_api",
    "from ..web.test_api import token_client",
    "def f():\n    from tests.browser.test_ruler_page import X",
])
def test_every_spelling_is_caught(line: str) -> None:
    assert imported_test_modules(line, TESTS / "web" / "test_example.py"), line


@pytest.mark.parametrize("line", [
    "from tests.web.helpers import token_client",
    "from tests.web.factories import login",
    "from tests.browser.conftest import log_in_as_demo",
    "from tests.web import helpers",
    "from .helpers import composer_post",
    "import pytest",
    "from experiments import test_utils",
])
def test_shared_modules_are_allowed(line: str) -> None:
    assert imported_test_modules(line, TESTS / "web" / "test_example.py") == [], line


SESSION_WORKER_FIXTURES = ("celery_worker", "worker_factory", "demo_assets")


def fixture_names_in(source: str) -> set[str]:
    """Names a conftest defines as functions or imports: either way pytest registers them there."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def test_the_worker_fixtures_live_in_one_conftest() -> None:
    """A session fixture registered in two conftest files is two fixtures: the browser tests and the integration
    tests each got a Celery worker, both on the ``gpu`` queue, and the first kept taking runs beside the second."""
    where = {name: sorted(str(p.relative_to(ROOT)) for p in TESTS.rglob("conftest.py")
                          if name in fixture_names_in(p.read_text(encoding="utf-8")))
             for name in SESSION_WORKER_FIXTURES}
    assert where == {name: ["tests/conftest.py"] for name in SESSION_WORKER_FIXTURES}


def test_an_imported_fixture_counts_as_registered() -> None:
    assert "celery_worker" in fixture_names_in("from tests.conftest import celery_worker  # noqa: F401")
    assert "celery_worker" in fixture_names_in("def celery_worker():\n    pass")
