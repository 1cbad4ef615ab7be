"""The Python examples of the README and the docs run exactly as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def _cases():
    for doc in ("README.md", "docs/still.md", "docs/mirrorla.md", "docs/models.md", "docs/peers.md"):
        for i, code in enumerate(_python_blocks(ROOT / doc)):
            # In the reference docs, a block that starts with its imports is a whole example; others are
            # fragments (a checkpoint path, a name from the text). The README's are all whole.
            if doc == "README.md" or code.lstrip().startswith(("import ", "from ")):
                yield pytest.param(code, id=f"{doc}#{i}")


def test_examples_are_found():
    assert len(_python_blocks(ROOT / "README.md")) >= 2  # the library example and the STILL example
    assert any("linearize(" in code for code in _python_blocks(ROOT / "README.md"))


@pytest.mark.parametrize("code", list(_cases()))
def test_example_runs(code, capsys):
    if "transformers" in code and importlib.util.find_spec("transformers") is None:
        pytest.skip('needs the [llm] extra: pip install -e ".[llm]"')
    exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})
    printed = capsys.readouterr().out
    # Every "# torch.Size([...])" comment in the example is what it prints.
    for expected in re.findall(r"#\s*(torch\.Size\(\[[^\]]*\]\))", code):
        assert expected in printed
