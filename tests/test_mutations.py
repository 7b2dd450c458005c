"""benchmarks/mutations.py stays in step with the code it breaks.

Running the mutations takes minutes (`python benchmarks/mutations.py`); this checks, in a
second, that each one still applies to the current source exactly once and still names
tests that exist, so that a refactoring cannot turn the script into a list of stale edits.
"""

import importlib
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
mutations = importlib.import_module("benchmarks.mutations")


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_applies_once_and_changes_the_code(mutation, tmp_path):
    target = tmp_path / mutation.path
    target.parent.mkdir(parents=True)
    shutil.copy2(ROOT / mutation.path, target)
    assert mutations.apply(mutation, tmp_path) is None
    assert target.read_text() != (ROOT / mutation.path).read_text()
    compile(target.read_text(), str(target), "exec")  # a mutation is a bug, not a syntax error


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_names_tests_that_exist(mutation):
    for node in mutation.tests:
        path, _, name = node.partition("::")
        source = (ROOT / path).read_text()
        assert not name or f"def {name}(" in source, f"{node}: no such test"


def test_a_stale_mutation_is_reported_not_applied(tmp_path):
    stale = mutations.Mutation("stale", "nothing", "x.py", (("absent text", "y"),), ("tests/test_x.py",))
    (tmp_path / "x.py").write_text("present text\n")
    assert "stale" in mutations.apply(stale, tmp_path)
    assert (tmp_path / "x.py").read_text() == "present text\n"
