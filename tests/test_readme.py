"""Every `from kexue... import ...` line in the README's code blocks must work."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
IMPORTS = sorted(
    set(re.findall(r"^(from kexue[\w.]* import [\w, ]+)", README.read_text(encoding="utf-8"), re.M))
)


def test_readme_has_imports():
    assert len(IMPORTS) >= 8


@pytest.mark.parametrize("line", IMPORTS)
def test_readme_import_works(line):
    exec(line, {})
