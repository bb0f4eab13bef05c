"""The docs name the tests that show each behaviour: every test they name exists, so a renamed or removed test
cannot leave a claim standing on nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/reliability.md")
# `loop/test_x.py`, `loop/test_x.py::test_y`, and a `::test_z` after it in the same line (the same file)
FILE = re.compile(r"`((?:[a-z_]+/)*test_[a-z0-9_]+\.py)(?:::(test_[A-Za-z0-9_]+))?")
SAME_FILE = re.compile(r"`::(test_[A-Za-z0-9_]+)`")


def _named_tests() -> list[tuple[str, str, str | None]]:
    named = []
    for doc in DOCS:
        for line in (REPO / doc).read_text(encoding="utf-8").splitlines():
            last = None
            for match in sorted([*FILE.finditer(line), *SAME_FILE.finditer(line)], key=lambda m: m.start()):
                if match.re is FILE:
                    last = match.group(1)
                    named.append((doc, last, match.group(2)))
                elif last is not None:
                    named.append((doc, last, match.group(1)))
    return named


def test_the_docs_name_tests():
    assert len(_named_tests()) > 100


@pytest.mark.parametrize("doc, path, name", _named_tests())
def test_each_test_the_docs_name_exists(doc, path, name):
    source = REPO / "tests" / path
    assert source.is_file(), f"{doc} names tests/{path}, which does not exist"
    if name is not None:
        assert re.search(rf"^def {name}\(", source.read_text(encoding="utf-8"), re.MULTILINE), \
            f"{doc} names {path}::{name}, which does not exist"
