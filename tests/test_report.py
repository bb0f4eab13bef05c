"""The run report: plots and report.html rebuilt from synthetic run folders (SD1 and SDXL)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bayes_merger.merge.arch import SD_BLOCKS, SDXL_BLOCKS
from bayes_merger.report import load_run, write_report
from bayes_merger.report.__main__ import main as report_main
from bayes_merger.run_folder import ImageRecord, Trial, TrialLog, write_run_info
from bayes_merger.run_folder import read_trial_records

EVIL_PAYLOAD = '<script>alert("x")</script>&cat'


def make_run(
    run_dir: Path,
    *,
    arch: str = "sd1",
    n_trials: int = 14,
    init_points: int = 5,
    n_iters: int = 15,
    beta: bool = False,
    failed: tuple[int, ...] = (),
    payloads: tuple[str, ...] = ("portrait", "landscape"),
    images_per_payload: int = 2,
    write_images: bool = True,
    truncate_last: bool = False,
    seed: int = 1,
) -> Path:
    """A run folder as the trial loop leaves it (run.json, trials.jsonl, images/), with made-up scores."""
    rng = random.Random(seed)
    blocks = SDXL_BLOCKS if arch == "sdxl" else SD_BLOCKS
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "run_id": f"20260101-000000-{arch}", "started_at": "2026-01-01T00:00:00+00:00",
        "model_a": "/models/a.safetensors", "model_b": "/models/b.safetensors", "model_c": None,
        "model_files": {"A": {"path": "/models/a.safetensors", "size": 2, "mtime_ns": 1, "sha256": "ab" * 32}},
        "method": "sum_twice" if beta else "weighted_sum", "architecture": "SDXL" if arch == "sdxl" else "SD1",
        "arch_name": arch, "blocks": list(blocks), "uses_beta": beta, "init_points": init_points,
        "n_iters": n_iters, "seed": 42, "scorer": "laion", "payloads": list(payloads),
    }
    write_run_info(run_dir, info)
    log = TrialLog(run_dir)
    for n in range(n_trials):
        alpha = {b: round(rng.random(), 4) for b in blocks}
        beta_w = {b: round(rng.random(), 4) for b in blocks} if beta else None
        ok = n not in failed
        images, payload_scores = [], {}
        for p_index, payload in enumerate(payloads):
            per_image = []
            for i in range(images_per_payload):
                path = f"images/t{n:04d}/p{p_index}_{i}.png"
                score = round(5 + 2 * rng.random(), 4) if ok else None
                if ok and write_images:
                    (run_dir / path).parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (8, 8), (n * 17 % 255, 90, 160)).save(run_dir / path)
                images.append(ImageRecord(payload=payload, index=i, seed=1000 + i, score=score,
                                          path=path if ok else None))
                per_image.append(score)
            if ok:
                payload_scores[payload] = sum(per_image) / len(per_image)
        score = sum(payload_scores.values()) / len(payload_scores) if ok else None
        log.append(Trial(
            trial=n, phase="init" if n < init_points else "optimise",
            status="ok" if ok else "failed",
            error=None if ok else "WebUI answered 500: <b>CUDA out of memory</b>",
            params={f"alpha_{b}": alpha[b] for b in blocks},
            weights={"alpha": alpha, "beta": beta_w},
            alpha_string=",".join(str(alpha[b]) for b in blocks),
            beta_string=",".join(str(beta_w[b]) for b in blocks) if beta_w else None,
            score=score, payload_scores=payload_scores, images=tuple(images),
            timings={"merge": 0.3, "load": 4.2, "generate": 11.0 + n % 3, "score": 0.8, "total": 16.3 + n % 3},
            started_at=f"2026-01-01T00:{n:02d}:00+00:00", finished_at=f"2026-01-01T00:{n:02d}:17+00:00",
        ))
    if truncate_last:
        # a process killed while writing the next trial
        last = log.trials[-1].to_json()
        with (run_dir / "trials.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(last[: len(last) // 2])
    return run_dir


def ranked(run_dir: Path) -> list[dict]:
    trials = [t for t in read_trial_records(run_dir / "trials.jsonl") if t["status"] == "ok"]
    return sorted(trials, key=lambda t: -t["score"])


def assert_pngs(run_dir: Path) -> None:
    for name in ("convergence.png", "weights.png"):
        with Image.open(run_dir / name) as image:
            image.verify()
            assert image.format == "PNG"


# --- reading the run folder --------------------------------------------------------------------


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    run_dir = make_run(tmp_path / "run", n_trials=6, truncate_last=True)
    trials = read_trial_records(run_dir / "trials.jsonl")
    assert [t["trial"] for t in trials] == [0, 1, 2, 3, 4, 5]
    assert "cut short" in caplog.text


def test_missing_run_json_keys_read_as_unknown(tmp_path):
    run_dir = make_run(tmp_path / "run", n_trials=3)
    (run_dir / "run.json").write_text(json.dumps({"run_id": "old"}), encoding="utf-8")
    run = load_run(run_dir)
    assert run.budget is None
    assert run.blocks == SD_BLOCKS  # taken from the trials' weights
    write_report(run_dir)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "unknown" in html
    assert_pngs(run_dir)


# --- the report ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_run(tmp_path_factory) -> Path:
    """SD1, α only, two failed trials, a hostile payload name, and a cut-short last line."""
    run_dir = make_run(tmp_path_factory.mktemp("sd1") / "run", failed=(2, 7), payloads=(EVIL_PAYLOAD, "landscape"),
                       truncate_last=True)
    write_report(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def sdxl_beta_run(tmp_path_factory) -> Path:
    """SDXL's 20 blocks, α and β, one failed trial."""
    run_dir = make_run(tmp_path_factory.mktemp("sdxl") / "run", arch="sdxl", beta=True, failed=(3,))
    write_report(run_dir)
    return run_dir


def html_of(run_dir: Path) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("run", ["sd1_run", "sdxl_beta_run"])
def test_report_lists_every_trial_with_its_score_and_weights(request, run):
    run_dir = request.getfixturevalue(run)
    assert_pngs(run_dir)
    html = html_of(run_dir)
    rows = re.findall(r'<tr class="[^"]*"><td class="num" data-v="(\d+)">', html)
    assert sorted(int(r) for r in rows) == list(range(14))
    for trial in read_trial_records(run_dir / "trials.jsonl"):
        if trial["score"] is not None:
            assert f"{trial['score']:.4f}" in html
        assert trial["alpha_string"] in html
        if trial["beta_string"] is not None:
            assert trial["beta_string"] in html


def test_table_is_sortable_and_starts_sorted_by_score_descending(sd1_run):
    html = html_of(sd1_run)
    assert 'class="trials sortable"' in html
    assert re.search(r'<th data-type="num"[^>]*aria-sort="descending">score</th>', html)
    assert "addEventListener('click'" in html
    scores = re.findall(r'<td class="num score" data-v="([^"]*)"', html)
    numbers = [float(v) for v in scores if v]
    assert numbers == sorted(numbers, reverse=True)
    assert scores[-2:] == ["", ""]  # failed trials last


def test_failed_trial_shows_its_error_escaped(sd1_run):
    html = html_of(sd1_run)
    assert "<b>CUDA" not in html
    assert "WebUI answered 500: &lt;b&gt;CUDA out of memory&lt;/b&gt;" in html


def test_best_and_worst_trials_show_their_images_per_payload(sd1_run):
    html = html_of(sd1_run)
    order = ranked(sd1_run)
    for trial in (order[0], order[-1]):
        for image in trial["images"]:
            assert f'src="{image["path"]}"' in html
            assert f"{image['score']:.4f}" in html
    middle = order[len(order) // 2]
    assert f'src="{middle["images"][0]["path"]}"' not in html


def test_payload_names_are_escaped(sd1_run):
    html = html_of(sd1_run)
    assert EVIL_PAYLOAD not in html
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;cat" in html


@pytest.mark.parametrize("run", ["sd1_run", "sdxl_beta_run"])
def test_report_is_self_contained(request, run):
    run_dir = request.getfixturevalue(run)
    html = html_of(run_dir)
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', html, re.I)
    assert not re.search(r"url\(|@import|<link", html, re.I)
    assert 'src="convergence.png"' in html and 'src="weights.png"' in html
    assert not list(run_dir.glob(".*.tmp"))  # the atomic writes left nothing behind


def test_missing_images_are_placeholders_not_broken_references(tmp_path):
    run_dir = make_run(tmp_path / "run", n_trials=4, write_images=False)
    write_report(run_dir)
    html = html_of(run_dir)
    assert "image missing" in html
    assert '<img src="images/' not in html


def test_summary_shows_budget_best_and_stage_times(sd1_run):
    html = html_of(sd1_run)
    best = ranked(sd1_run)[0]
    assert "14 / 20" in html
    assert f"trial {best['trial']}" in html
    assert "weighted_sum" in html and "a.safetensors" in html
    # model A's sha256 as A1111 and Civitai show it (AutoV2: its first 10 characters); B's is not recorded
    assert html.count(f'<code title="sha256 {"ab" * 32}">{"ab" * 5}</code>') == 1 and html.count("sha256") == 1
    assert "4.20 s" in html  # the mean load time


def test_an_unfinished_run_reads_in_progress_while_a_process_runs_it_and_stopped_after(tmp_path):
    from bayes_merger.run_folder.liveness import running

    run_dir = make_run(tmp_path / "run")  # 14 of 20 trials
    with running(run_dir):
        write_report(run_dir)
        html = html_of(run_dir)
        assert "in progress · reload to update" in html and "stopped · resume" not in html
    write_report(run_dir)
    html = html_of(run_dir)
    assert "stopped · resume it to finish" in html and "in progress" not in html


def test_a_run_missing_a_trial_below_its_budget_is_stopped_though_it_has_as_many_lines(tmp_path):
    # trials 0-3 and 5 of a budget of 5: finished out of order, then the budget lowered; trial 4 never ran
    run_dir = make_run(tmp_path / "run", n_trials=6, init_points=2, n_iters=3)
    lines = (run_dir / "trials.jsonl").read_text().splitlines()
    (run_dir / "trials.jsonl").write_text("\n".join(lines[:4] + lines[5:]) + "\n")
    write_report(run_dir)
    html = html_of(run_dir)
    assert "stopped · resume it to finish" in html and '<span class="pill done">finished' not in html
    assert "4 / 5" in html


def test_the_duration_leaves_out_the_time_between_sessions(tmp_path):
    from bayes_merger.report.format import run_duration

    run_dir = make_run(tmp_path / "run", n_trials=14)  # trials 0–13 finish at 00:mm:17
    assert run_duration(load_run(run_dir)) == 13 * 60 + 17
    info = json.loads((run_dir / "run.json").read_text())
    # stopped after trial 5 (00:05:17), resumed a day later: trials 6–13 finished 1 min apart from 24:06:17
    (run_dir / "run.json").write_text(json.dumps({**info, "resumed_at": ["2026-01-02T00:05:00+00:00"]}))
    records = read_trial_records(run_dir / "trials.jsonl")
    for record in records[6:]:
        for key in ("started_at", "finished_at"):
            record[key] = record[key].replace("2026-01-01", "2026-01-02")
    (run_dir / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run_duration(load_run(run_dir)) == (5 * 60 + 17) + (8 * 60 + 17)


def test_the_time_to_go_counts_the_trials_that_run_side_by_side(tmp_path):
    from bayes_merger.report.format import fmt_seconds, mean_timings

    run_dir = make_run(tmp_path / "run")  # 14 of 20 trials
    total = mean_timings(load_run(run_dir))["total"]
    write_report(run_dir, live=True)
    assert f"about {fmt_seconds(6 * total)} to go" in html_of(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "trials_at_once": 3}))  # three WebUIs
    write_report(run_dir, live=True)
    assert f"about {fmt_seconds(2 * total)} to go" in html_of(run_dir)
    write_report(run_dir, live=False)  # stopped: nothing goes on until it is resumed
    assert " to go" not in html_of(run_dir)


def test_the_even_mix_keeps_the_neutral_colour_when_weights_go_past_0_and_1():
    from bayes_merger.report.plots import weight_norm

    for values in ([0.2, 0.8], [-0.5, 0.3, 1.5], [0.1, 1.4]):
        norm = weight_norm(values)
        assert float(norm(0.5)) == pytest.approx(0.5)
        assert float(norm(min([0.0, *values]))) == pytest.approx(0.0)
        assert float(norm(max([1.0, *values]))) == pytest.approx(1.0)


def test_the_trials_tables_colours_are_the_plots_when_weights_go_past_0_and_1():
    from bayes_merger.report.html import _colour, _palette
    from bayes_merger.report.plots import weight_norm

    for values in ([0.2, 0.8], [0.0, 2.0], [-0.5, 0.3, 1.5]):
        norm = weight_norm(values)
        for value in (min(values), 0.25, 0.5, 0.9, 1.0, max(values)):
            assert _colour(value, norm) == _palette()[round(float(norm(value)) * 255)], (values, value)


def test_a_plot_that_fails_still_leaves_the_page_and_the_other_plots_rebuilt(tmp_path, monkeypatch):
    from bayes_merger import report

    run_dir = make_run(tmp_path / "run", n_trials=6)
    (run_dir / "report.html").write_text("the page of an hour ago")
    monkeypatch.setattr(report, "convergence_figure", lambda run: (_ for _ in ()).throw(ValueError("cannot plot")))
    with pytest.raises(ValueError, match="cannot plot"):
        write_report(run_dir)
    assert "<html" in html_of(run_dir) and (run_dir / "weights.png").is_file()
    assert not (run_dir / "convergence.png").exists()


def test_no_successful_trial_still_gives_a_report(tmp_path):
    run_dir = make_run(tmp_path / "run", n_trials=3, failed=(0, 1, 2))
    write_report(run_dir)
    assert_pngs(run_dir)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "no successful trial yet" in html.lower()


def test_null_beta_and_an_empty_log_are_handled(tmp_path):
    run_dir = make_run(tmp_path / "run", n_trials=2, beta=False)
    assert load_run(run_dir).uses_beta is False
    (run_dir / "trials.jsonl").write_text("", encoding="utf-8")
    write_report(run_dir)
    assert_pngs(run_dir)
    assert "No trial has finished yet" in (run_dir / "report.html").read_text(encoding="utf-8")


def unet_panels(run_dir: Path) -> dict[str, set[str]]:
    """Title → the block names drawn as boxes, for each UNet panel of the weights figure."""
    from bayes_merger.report.plots import weights_figure

    fig = weights_figure(load_run(run_dir))
    panels = {}
    for ax in fig.axes:
        title = ax.get_title(loc="left")
        if title.startswith("Best "):
            panels[title.split(":")[0]] = {t.get_text() for t in ax.texts} & set(SD_BLOCKS)
    return panels


def test_weights_plot_draws_one_unet_panel_per_weight_set(tmp_path):
    assert set(unet_panels(make_run(tmp_path / "a"))) == {"Best α"}
    assert set(unet_panels(make_run(tmp_path / "b", beta=True))) == {"Best α", "Best β"}


def test_the_colour_bar_says_model_a_to_model_b_only_for_a_weighted_sum(tmp_path):
    from bayes_merger.report.plots import weights_figure

    def bar_label(run_dir: Path) -> str:
        return next(ax.get_xlabel() for ax in weights_figure(load_run(run_dir)).axes if ax.get_xlabel())

    assert bar_label(make_run(tmp_path / "a")) == "0 = model A  ·  0.5 = even mix  ·  1 = model B"
    # sum_twice's β mixes in model C: 1 is not model B
    assert bar_label(make_run(tmp_path / "b", beta=True)) == "each block's weight in sum_twice (README: Merge methods)"


def test_weights_plot_draws_sdxl_with_its_20_blocks(tmp_path):
    panels = unet_panels(make_run(tmp_path / "xl", arch="sdxl", beta=True))
    assert panels["Best α"] == panels["Best β"] == set(SDXL_BLOCKS)  # its 20 are tests/merge/test_arch.py's


def test_a_hundred_trial_report_lists_every_trial(tmp_path):
    run_dir = make_run(tmp_path / "run", n_trials=100, init_points=10, n_iters=90, beta=True, failed=(5, 50))
    write_report(run_dir)
    html = html_of(run_dir)
    assert "100 / 100" in html
    rows = re.findall(r'<tr class="[^"]*"><td class="num" data-v="(\d+)">', html)
    assert sorted(int(r) for r in rows) == list(range(100))


# --- the command line -------------------------------------------------------------------------------


def test_cli_rebuilds_a_run_folder(tmp_path):
    run_dir = make_run(tmp_path / "run", n_trials=4)
    assert report_main([str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file()
    assert_pngs(run_dir)


def test_cli_refuses_a_folder_without_a_trial_log(tmp_path, caplog):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    code = report_main([str(tmp_path)])
    assert code != 0
    assert "has no trials.jsonl" in caplog.text
    assert not (tmp_path / "report.html").exists()


def test_python_m_on_a_missing_folder_exits_non_zero_with_one_sentence(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bayes_merger.report", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "is not a folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_image_paths_outside_the_run_folder_are_not_referenced(tmp_path):
    from bayes_merger.report.html import render_html

    run_dir = make_run(tmp_path / "run", n_trials=2, payloads=("p",), images_per_payload=2)
    lines = (run_dir / "trials.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        record["images"][0]["path"] = "../../etc/passwd"
        record["images"][1]["path"] = "/etc/hosts"
    (run_dir / "trials.jsonl").write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    html = render_html(load_run(run_dir))
    assert "image outside the run folder" in html
    assert 'src="../' not in html and 'src="/etc' not in html


def test_failed_trials_are_inside_the_convergence_plot(tmp_path):
    from bayes_merger.report.plots import convergence_figure

    run_dir = make_run(tmp_path / "run", n_trials=3, failed=(0, 1, 2))
    low, high = convergence_figure(load_run(run_dir)).axes[0].get_xlim()
    assert low < 0 and high > 2


@pytest.mark.parametrize("n_trials", [1, 2, 40])
def test_the_convergence_plot_numbers_trials_by_whole_numbers(tmp_path, n_trials):
    # with one trial in view matplotlib's integer locator fell back to fractions: trials -0.60, -0.45 … 0.60
    from bayes_merger.report.plots import convergence_figure

    axis = convergence_figure(load_run(make_run(tmp_path / "run", n_trials=n_trials))).axes[0]
    low, high = axis.get_xlim()
    shown = [tick for tick in axis.get_xticks() if low <= tick <= high]
    assert shown and all(float(tick).is_integer() for tick in shown), shown


def test_report_shows_the_models_best_the_raw_best_the_gain_and_block_importance(tmp_path):
    from bayes_merger.run_folder import best_extras, read_trials, write_best

    run_dir = make_run(tmp_path / "run", beta=True)
    trials = read_trials(run_dir / "trials.jsonl")
    raw = max((t for t in trials if t.ok), key=lambda t: t.score)
    chosen = next(t for t in trials if t.ok and t.trial not in (0, raw.trial))
    importance = {b: 0.1 for b in SD_BLOCKS} | {b + "_beta": 0.2 for b in SD_BLOCKS} | {"OUT05": 1.0}
    write_best(run_dir, chosen, best_extras(trials, chosen, importance, "posterior mean"))
    write_report(run_dir)

    run = load_run(run_dir)
    assert run.best[0] == chosen.trial and run.raw_best[0] == raw.trial and run.baseline[0] == 0
    assert run.importance["OUT05"] == 1.0 and run.importance["IN00_beta"] == 0.2
    html = (run_dir / "report.html").read_text()
    assert f"highest raw score: trial {raw.trial}" in html
    assert f"{chosen.score - trials[0].score:+.4f}" in html
    assert 'src="importance.png"' in html
    with Image.open(run_dir / "importance.png") as image:
        assert image.width > 600  # two UNet panels: α and β


def test_the_top_trials_panel_marks_the_models_best_as_the_unet_beside_it_does(tmp_path):
    from bayes_merger.report.plots import weights_figure
    from bayes_merger.run_folder import best_extras, read_trials, write_best

    run_dir = make_run(tmp_path / "run")
    trials = read_trials(run_dir / "trials.jsonl")
    by_score = sorted((t for t in trials if t.ok), key=lambda t: -t.score)
    chosen = by_score[-1]  # the model's best need not be among the highest raw scores
    write_best(run_dir, chosen, best_extras(trials, chosen, {}, "posterior mean"))
    fig = weights_figure(load_run(run_dir))
    [lines] = [ax for ax in fig.axes if ax.get_title(loc="left").startswith("Top ")]
    labels = [line.get_label() for line in lines.get_lines() if not line.get_label().startswith("_")]
    assert labels[0].startswith(f"#{chosen.trial} ") and labels[0].endswith("(best)")
    assert [label for label in labels if "(best)" in label] == [labels[0]]
    assert labels[1].startswith(f"#{by_score[0].trial} ")


def test_report_of_a_run_without_best_yaml_falls_back_to_the_highest_score(tmp_path):
    run_dir = make_run(tmp_path / "run")
    write_report(run_dir)
    run = load_run(run_dir)
    assert run.best == run.raw_best and run.importance == {}
    assert not (run_dir / "importance.png").exists()
    assert "importance.png" not in (run_dir / "report.html").read_text()
