"""`custody demo --data-dir` never deletes what the demo did not make (issue 14's footgun:
it used to wipe whatever directory it was given)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from custody.cli import app
from custody.cli.demo import MARKER, DataDirRefused, prepare_data_dir


def test_new_and_empty_directories_are_used(tmp_path: Path) -> None:
    new = tmp_path / "a" / "b"
    prepare_data_dir(new)
    assert (new / MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_data_dir(empty)
    assert sorted(p.name for p in empty.iterdir()) == [MARKER]


def test_a_directory_the_demo_made_is_wiped(tmp_path: Path) -> None:
    prepare_data_dir(tmp_path / "d")
    (tmp_path / "d" / "hsm.sqlite").write_bytes(b"old state")
    prepare_data_dir(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [MARKER]


@pytest.mark.parametrize("content", ["notes.txt", ".hidden"])
def test_a_foreign_directory_is_refused_untouched(tmp_path: Path, content: str) -> None:
    (tmp_path / content).write_text("mine")
    with pytest.raises(DataDirRefused, match="not empty"):
        prepare_data_dir(tmp_path)
    assert (tmp_path / content).read_text() == "mine"
    assert not (tmp_path / MARKER).exists()


def test_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine")
    with pytest.raises(DataDirRefused, match="is a file"):
        prepare_data_dir(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "mine"


def test_cli_refusal_is_one_line_with_exit_code_2(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "not made by `custody demo`" in result.output
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
