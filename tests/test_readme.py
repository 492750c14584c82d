"""The README cannot rot: its Python examples run, its commands match CI and the CLI."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _first_commands() -> list[str]:
    first = _blocks("bash")[0]
    return [line.split("#")[0].strip() for line in first.strip().splitlines()]


def test_readme_starts_with_main_job_and_test_command():
    assert README.index("```bash") < README.index("##")  # the two commands come first
    main_job, tests = _first_commands()
    assert "meditok demo" in main_job
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), "CI must run exactly the README's test command"


@pytest.mark.parametrize("code", _blocks("python"))
def test_python_examples_run(code):
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def test_cli_examples_parse():
    """Every `meditok ...` line of the README is accepted by the real argument parser."""
    from meditok.cli import build_parser

    parser = build_parser()
    lines = [ln.split(" #")[0].strip() for block in _blocks("bash") for ln in block.splitlines()]
    commands = [ln for ln in lines if ln.startswith("meditok ")]
    assert len(commands) >= 8
    for line in commands:
        args = parser.parse_args(shlex.split(line)[1:])
        assert hasattr(args, "func"), line
