import json
from dataclasses import replace

import pytest

from bayes_merger.errors import ConfigError
from bayes_merger.run_folder import ImageRecord, Trial, TrialLog, read_trials


def _trial(n, score=1.0, status="ok"):
    return Trial(trial=n, phase="init", status=status, params={"BASE": 0.5}, weights={"alpha": {"BASE": 0.5}, "beta": None},
                 alpha_string="0.5", beta_string=None, score=score if status == "ok" else None,
                 images=(ImageRecord("p", 0, 7, score, "images/x.png"),))


def test_appended_trials_read_back_identically(tmp_path):
    log = TrialLog(tmp_path)
    for n in range(3):
        log.append(_trial(n, score=n))
    assert read_trials(tmp_path / "trials.jsonl") == log.trials
    assert TrialLog(tmp_path).trials == log.trials


def test_each_trial_is_one_complete_line_on_disk_when_append_returns(tmp_path):
    log = TrialLog(tmp_path)
    log.append(_trial(0))
    lines = (tmp_path / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["trial"] == 0


def test_truncated_last_line_is_set_aside_not_lost(tmp_path):
    log = TrialLog(tmp_path)
    log.append(_trial(0))
    with (tmp_path / "trials.jsonl").open("a") as handle:
        handle.write('{"trial": 1, "phase": "ini')
    resumed = TrialLog(tmp_path)
    assert len(resumed.trials) == 1
    side = list(tmp_path.glob("trials.jsonl.incomplete-*"))
    assert len(side) == 1 and side[0].read_text() == '{"trial": 1, "phase": "ini'
    resumed.append(_trial(1))
    assert [t.trial for t in read_trials(tmp_path / "trials.jsonl")] == [0, 1]


def test_damage_in_the_middle_of_the_log_is_an_error(tmp_path):
    (tmp_path / "trials.jsonl").write_text("garbage\n" + _trial(0).to_json() + "\n")
    with pytest.raises(ConfigError, match="line 1"):
        TrialLog(tmp_path)


def test_best_ignores_failed_trials_and_keeps_the_first_of_a_tie(tmp_path):
    log = TrialLog(tmp_path)
    log.append(_trial(0, score=2.0))
    log.append(_trial(1, status="failed"))
    log.append(_trial(2, score=2.0))
    assert log.best().trial == 0


def test_nan_score_cannot_be_written(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        TrialLog(tmp_path).append(_trial(0, score=float("nan")))
    assert not (tmp_path / "trials.jsonl").exists() or not (tmp_path / "trials.jsonl").read_bytes()


def test_a_retraction_cut_short_by_a_kill_is_finished_on_resume(tmp_path):
    log = TrialLog(tmp_path)
    for n in range(4):
        log.append(_trial(n, score=n))
    # killed after retract's first write: trials 1 and 2 set aside, the log not yet replaced
    (tmp_path / "trials.not-rendered.jsonl").write_text(_trial(1, score=1).to_json() + "\n"
                                                         + _trial(2, score=2).to_json() + "\n")
    resumed = TrialLog(tmp_path)
    assert [t.trial for t in resumed.trials] == [0, 3]
    assert [t.trial for t in read_trials(tmp_path / "trials.jsonl")] == [0, 3]


def test_a_set_aside_trials_images_are_deleted_and_the_others_kept(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    log = TrialLog(tmp_path)
    for n in range(3):
        (images / f"t{n:04d}-p-00-{n}.000.png").write_bytes(b"png")
        log.append(replace(_trial(n, score=n), images=(ImageRecord("p", 0, 7, n, f"images/t{n:04d}-p-00-{n}.000.png"),)))
    log.retract([1])
    assert sorted(path.name for path in images.iterdir()) == ["t0000-p-00-0.000.png", "t0002-p-00-2.000.png"]


def test_a_trial_rendered_again_after_being_set_aside_stays_in_the_log(tmp_path):
    log = TrialLog(tmp_path)
    for n in range(3):
        log.append(_trial(n, score=n))
    log.retract([1])
    log.append(_trial(1, score=5.0))  # rendered again on resume: another record
    assert [t.trial for t in TrialLog(tmp_path).trials] == [0, 2, 1]
    set_aside = [json.loads(line) for line in (tmp_path / "trials.not-rendered.jsonl").read_text().splitlines()]
    assert [(r["trial"], r["score"]) for r in set_aside] == [(1, 1.0)]
