"""README's "Use in your own model" snippet runs as written, offline."""
from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "use in your own model"


def extract_snippet(markdown: str) -> str | None:
    """The first ```python block after the first heading that contains "Use in your own model"."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines)
                  if re.match(r"^#{1,6}\s", line) and HEADING in line.lower()), None)
    if start is None:
        return None
    block: list[str] | None = None
    for line in lines[start + 1:]:
        if block is None:
            if re.match(r"^\s*```\s*python\s*$", line):
                block = []
        elif re.match(r"^\s*```\s*$", line):
            return "\n".join(block) + "\n"
        else:
            block.append(line)
    return None


def test_extract_snippet():
    md = ("# Title\n```python\nwrong = 1\n```\n## 3. Use in your own model\n\ntext\n"
          "```bash\npip install x\n```\n```python\nx = 1\ny = x + 1\n```\n```python\nlater = 1\n```\n")
    assert extract_snippet(md) == "x = 1\ny = x + 1\n"
    assert extract_snippet("# Use in your own model\nno code\n") is None
    assert extract_snippet("# Something else\n```python\nx = 1\n```\n") is None


def test_readme_use_in_your_own_model_runs(tmp_path, monkeypatch):
    if not README.is_file():
        pytest.skip("README.md does not exist yet")
    snippet = extract_snippet(README.read_text(encoding="utf-8"))
    if snippet is None:
        pytest.skip('README.md has no ```python block under a "Use in your own model" heading yet')

    def offline(*args, **kwargs):
        raise urllib.error.URLError("the README example must run offline")

    # as written, on a machine without internet: no download may be needed
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # files the snippet saves land in a temporary folder
    torch.manual_seed(0)
    exec(compile(snippet, f"{README}:use-in-your-own-model", "exec"), {"__name__": "__readme__"})


def test_ci_runs_readme_install_and_test_commands():
    """.ci/run installs and tests exactly as README's quick start says (CI = what a new user does)."""
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    readme = README.read_text()
    for marker in ("# --- README: install ---", "# --- README: test ---"):
        command = ci[ci.index(marker) + 1]
        assert f"\n{command}\n" in readme, command
