"""docs/cli.md is generated from the Typer app; it must say what `probda --help` says today."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "cli.md"
GENERATE = "typer probda_deploy.cli.app utils docs --name probda --output docs/cli.md"  # also `make docs`


def test_the_cli_reference_is_up_to_date(tmp_path):
    typer = shutil.which("typer", path=str(Path(sys.executable).parent)) or shutil.which("typer")
    assert typer, "the typer command (installed with typer) generates docs/cli.md"
    fresh = tmp_path / "cli.md"
    subprocess.run([typer, "probda_deploy.cli.app", "utils", "docs", "--name", "probda", "--output", str(fresh)],
                   check=True, capture_output=True, cwd=REPO)
    assert fresh.read_text() == REFERENCE.read_text(), f"docs/cli.md is out of date: run `{GENERATE}`"
    assert "## `probda segment`" in fresh.read_text() and "--version" in fresh.read_text()
