"""README's set-up commands are the ones CI runs, verbatim, and they come first."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_exactly_install_then_test():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].startswith("pip install torch==2.13.0 ") and '".[test]"' in commands[0]
    assert commands[1].startswith("pytest")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.index("```bash") < text.index("wanflow run recipes/quickstart.toml")


def test_ci_runs_the_readme_commands_verbatim():
    out = subprocess.run(["bash", str(ROOT / ".ci/run"), "--print"], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == readme_commands()


def test_ci_fails_when_a_command_fails():
    script = (ROOT / ".ci/run").read_text(encoding="utf-8")
    assert "set -euo pipefail" in script and 'eval "$test_cmd"' in script.splitlines()[-1]
