"""The resume command bayes-merger prints and saves: pasted into a shell, from any folder, it names the run."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from bayes_merger.run_folder.paths import resume_command


@pytest.mark.parametrize("folder", ["runs/2026-12-06_01-00-00_weighted_sum_laion", "my runs/night 1", "it's here",
                                    "a $HOME `b` \\c"])
def test_the_resume_command_reads_back_as_the_run_folder_through_the_shell_and_hydra(tmp_path, monkeypatch, folder):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / folder
    program, flag, config, override = shlex.split(resume_command(Path(folder)))
    assert (program, flag, config) == ("bayes-merger", "--config", str(run_dir / "config.yaml"))
    parsed = OverridesParser.create().parse_override(override)
    assert parsed.key_or_group == "resume" and parsed.value() == str(run_dir)
