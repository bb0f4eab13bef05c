"""report.html: one self-contained page (inline CSS and JS, no external resources) about a run.

Every piece of text from the run folder (payload names, errors, paths, anything from the WebUI) goes
through ``html.escape``; image paths are URL-quoted as well, so they stay relative file references.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from html import escape
from typing import Any, Iterable, Mapping

from matplotlib.colors import to_hex

from bayes_merger import __version__
from bayes_merger.report.assets import CSS, JS
from bayes_merger.report.plots import weight_colormap, weight_norm
from bayes_merger.report.data import RunData, finite, weight_set
from bayes_merger.report.format import (
    STAGES,
    UNKNOWN,
    as_list,
    as_mapping,
    fmt_score,
    fmt_seconds,
    fmt_text,
    image_src,
    mean_timings,
    payload_names,
    run_duration,
    sort_value,
)
from bayes_merger.run_folder.paths import CONVERGENCE_PNG, IMPORTANCE_PNG, WEIGHTS_PNG
from bayes_merger.run_folder import MODEL_FILES, MODEL_KEYS, record_score

# past this many payloads the trials table shows no per-payload columns (it would get too wide)
MAX_PAYLOAD_COLUMNS = 6



# --- sections ------------------------------------------------------------------------------------


def _card(label: str, value: str, note: str = "", cls: str = "") -> str:
    note_html = f'<div class="note">{note}</div>' if note else ""
    return (f'<div class="card {cls}"><div class="label">{label}</div>'
            f'<div class="value">{value}</div>{note_html}</div>')


def _model(label: str, path: Any, file: Any) -> str:
    if not path:
        missing = "none" if label == "C" else UNKNOWN
        return f'<tr><th>{label}</th><td><span class="muted">{missing}</span></td></tr>'
    text = str(path)
    name = text.replace("\\", "/").rsplit("/", 1)[-1]
    sha256 = str(file.get("sha256") or "") if isinstance(file, Mapping) else ""
    # the first 10 characters are the hash A1111 and Civitai show ("AutoV2")
    hashed = f' <code title="sha256 {escape(sha256)}">{escape(sha256[:10])}</code>' if sha256 else ""
    return (f'<tr><th>{label}</th><td><strong>{escape(name)}</strong>{hashed} '
            f'<code class="path">{escape(text)}</code></td></tr>')


def _summary(run: RunData) -> str:
    info = run.info
    files = info.get(MODEL_FILES) if isinstance(info.get(MODEL_FILES), Mapping) else {}
    timings = mean_timings(run)
    payloads = payload_names(run)
    payload_list = (", ".join(f"<code>{escape(p)}</code>" for p in payloads)
                    or f'<span class="muted">{UNKNOWN}</span>')
    return f"""
<section id="summary">
  <div class="cards">{''.join(_cards(run, timings))}</div>
  <div class="two">
    <div class="panel">
      <h3>Models</h3>
      <table class="kv">
        {"".join(_model(m, info.get(key), files.get(m)) for m, key in MODEL_KEYS.items())}
        <tr><th>payloads</th><td>{payload_list}</td></tr>
        <tr><th>started</th><td>{fmt_text(info.get("started_at"))}</td></tr>
      </table>
    </div>
    <div class="panel">
      <h3>Mean time per stage</h3>
      <table class="kv stages">{_stage_rows(timings)}</table>
    </div>
  </div>
</section>"""


def _cards(run: RunData, timings: Mapping[str, float]) -> list[str]:
    info = run.info
    done, budget = run.done, run.budget
    failed = sum(1 for _, t in run.trials if record_score(t) is None)
    best = run.best
    duration = run_duration(run)

    progress = f"{done} / {budget if budget is not None else UNKNOWN}"
    bar = ""
    if budget:
        pct = min(100.0, 100.0 * done / budget)
        bar = f'<div class="bar"><span style="width:{pct:.1f}%"></span></div>'
    budget_note = f"{failed} failed" if failed else "none failed"

    raw, baseline = run.raw_best, run.baseline
    best_note = f"trial {best[0]}" if best else "no successful trial yet"
    if best and raw and raw[0] != best[0]:
        best_note += f" (best by the model; highest raw score: trial {raw[0]}, {fmt_score(raw[2])})"
    return [
        _card("Best score", fmt_score(best[2]) if best else "—", best_note, "accent"),
        _card("Gain over baseline", f"{best[2] - baseline[2]:+.4f}" if best and baseline else "—",
              f"trial 0 (the start) scored {fmt_score(baseline[2])}" if baseline else "trial 0 not scored"),
        _card("Trials done", progress + bar, budget_note),
        _card("Duration", fmt_seconds(duration) if duration is not None else UNKNOWN, _time_to_go(run, timings)),
        _card("Method", fmt_text(info.get("method"))),
        _card("Architecture", fmt_text(info.get("architecture") or info.get("arch_name")),
              f"{len(run.blocks)} blocks{' · α and β' if run.uses_beta else ' · α only'}"),
        _card("Scorer", fmt_text(info.get("scorer")), f"seed {fmt_text(info.get('seed'))}"),
    ]


def _time_to_go(run: RunData, timings: Mapping[str, float]) -> str:
    remaining = (run.budget - run.done) if run.budget is not None else None
    if not (run.live and remaining and remaining > 0 and "total" in timings):  # a stopped run has no time to go
        return ""
    # a trial's total runs from its merge to its score, and that many run side by side
    at_once = run.info.get("trials_at_once")
    at_once = at_once if isinstance(at_once, int) and not isinstance(at_once, bool) and at_once > 1 else 1
    return f"about {fmt_seconds(remaining * timings['total'] / at_once)} to go"


def _stage_rows(timings: Mapping[str, float]) -> str:
    longest = max((timings.get(s, 0.0) for s in STAGES), default=0.0) or 1.0
    rows = ""
    for stage in STAGES:
        value = timings.get(stage)
        width = 0.0 if value is None else 100.0 * value / longest
        rows += (f'<tr><th>{stage}</th><td class="num">{fmt_seconds(value)}</td><td class="barcell">'
                 f'<div class="bar"><span style="width:{width:.1f}%"></span></div></td></tr>')
    return rows + (f'<tr class="total"><th>trial</th><td class="num">{fmt_seconds(timings.get("total"))}</td>'
                   '<td></td></tr>')


def _weight_code(run: RunData) -> str:
    best = run.best
    if best is None:
        return ""
    trial = best[1]
    parts = []
    for key, symbol in (("alpha_string", "α"), ("beta_string", "β")):
        value = trial.get(key)
        if isinstance(value, str) and value:
            parts.append(f'<div class="mbw"><span>best {symbol}</span><code>{escape(value)}</code></div>')
    return "".join(parts)


def _figure(src: str, alt: str) -> str:
    return f'<a href="{src}"><img class="plot" src="{src}" alt="{alt}"></a>'


def _thumbs(run: RunData, trial: Mapping[str, Any], payload: str) -> str:
    images = [i for i in as_list(trial.get("images")) if str(as_mapping(i).get("payload")) == payload]
    if not images:
        return '<div class="missing">no images recorded</div>'
    out = []
    for image in sorted(images, key=lambda i: i.get("index") if isinstance(i.get("index"), int) else 0):
        path, src = image.get("path"), image_src(image.get("path"))
        caption = fmt_score(finite(image.get("score")))
        if image.get("seed") is not None:
            caption += f'<span class="muted"> · seed {escape(str(image["seed"]))}</span>'
        if path in (None, ""):
            body = '<div class="missing">image not saved</div>'
        elif src is None:
            body = f'<div class="missing">image outside the run folder<br><code>{escape(str(path))}</code></div>'
        elif not (run.run_dir / str(path)).is_file():
            body = f'<div class="missing">image missing<br><code>{escape(str(path))}</code></div>'
        else:
            body = f'<a href="{src}"><img src="{src}" loading="lazy" alt="{escape(payload)} image"></a>'
        out.append(f"<figure>{body}<figcaption>{caption}</figcaption></figure>")
    return "".join(out)


def _images(run: RunData) -> str:
    best, worst = run.best, run.worst
    if best is None:
        return '<p class="muted">No successful trial yet: images of the best and worst trials appear here.</p>'
    sides = [("best", best)] + ([("worst", worst)] if worst and worst[0] != best[0] else [])
    blocks = []
    for payload in payload_names(run) or [""]:
        columns = []
        for label, (n, trial, score) in sides:
            payload_score = finite(as_mapping(trial.get("payload_scores")).get(payload))
            columns.append(
                f'<div class="side {label}"><div class="side-head"><span class="tag {label}">{label}</span> '
                f'trial {n} · score {fmt_score(score)} · payload {fmt_score(payload_score)}</div>'
                f'<div class="thumbs">{_thumbs(run, trial, payload)}</div></div>')
        blocks.append(f'<div class="payload"><h3>{escape(payload) or "images"}</h3>'
                      f'<div class="compare cols-{len(columns)}">{"".join(columns)}</div></div>')
    note = ("" if len(sides) == 2
            else '<p class="muted">Only one successful trial so far: no worst trial to compare with.</p>')
    return note + "".join(blocks)


@lru_cache(maxsize=1)
def _palette() -> tuple[str, ...]:
    cmap = weight_colormap()
    return tuple(to_hex(cmap(i / 255)) for i in range(256))


def _colour(value: float, norm) -> str:
    """The weight colormap's hex colour for value, as the plots give it (``weight_norm``: the even mix at the
    neutral middle however far the weights go), from a 256-entry table: the table has thousands of cells and
    matplotlib's Normalize costs ~0.1 ms a call."""
    low, high, centre = norm.vmin, norm.vmax, getattr(norm, "vcenter", None)
    if centre is None:
        fraction = (value - low) / ((high - low) or 1.0)
    elif value < centre:
        fraction = 0.5 * (value - low) / ((centre - low) or 1.0)
    else:
        fraction = 0.5 + 0.5 * (value - centre) / ((high - centre) or 1.0)
    return _palette()[min(255, max(0, round(fraction * 255)))]


def _strip(trial: Mapping[str, Any], name: str, blocks: Iterable[str], norm) -> str:
    weights = weight_set(trial, name)
    if not weights:
        return ""
    symbol = "α" if name == "alpha" else "β"
    cells = "".join(
        f'<i style="background:{_colour(weights[b], norm)}" title="{escape(b)} {symbol} {weights[b]:.3f}"></i>'
        if b in weights else f'<i title="{escape(b)}: none"></i>' for b in blocks)
    return f'<div class="wrow"><span>{symbol}</span><div class="strip">{cells}</div></div>'


def _trial_cells(n: int, trial: Mapping[str, Any], payloads: list[str], blocks: list[str], norm,
                 rescores: Iterable[Mapping[int, float]] = (), webui_column: bool = False) -> str:
    score = record_score(trial)
    status = str(trial.get("status") or ("ok" if score is not None else UNKNOWN))
    phase = str(trial.get("phase") or "")
    cells = [f'<td class="num" data-v="{n}">{n}</td>',
             f'<td data-v="{escape(phase)}">{escape(phase or UNKNOWN)}</td>',
             f'<td data-v="{escape(status)}"><span class="status {escape(status)}">{escape(status)}</span></td>',
             f'<td class="num score" data-v="{sort_value(score)}">{fmt_score(score)}</td>']
    if webui_column:  # several WebUIs rendered the run: which one rendered this trial
        webui = str(trial.get("webui") or "")
        cells.append(f'<td data-v="{escape(webui)}"><code>{escape(webui) or "—"}</code></td>')
    for rescored in rescores:
        value = rescored.get(n)
        cells.append(f'<td class="num" data-v="{sort_value(value)}">{fmt_score(value)}</td>')
    scores = as_mapping(trial.get("payload_scores"))
    for payload in payloads:
        value = finite(scores.get(payload))
        cells.append(f'<td class="num" data-v="{sort_value(value)}">{fmt_score(value)}</td>')
    weights = ""
    for name, key in (("alpha", "alpha_string"), ("beta", "beta_string")):
        text = trial.get(key)
        if weight_set(trial, name) or text:
            weights += _strip(trial, name, blocks, norm)
            weights += f'<code class="mbw-s">{escape(str(text)) if text else ""}</code>'
    cells.append(f'<td class="weights">{weights}</td>')
    total = finite(as_mapping(trial.get("timings")).get("total"))
    cells.append(f'<td class="num" data-v="{sort_value(total)}">{"—" if total is None else fmt_seconds(total)}</td>')
    error = "" if trial.get("error") is None else str(trial.get("error"))
    short = error if len(error) <= 180 else error[:177] + "…"
    cells.append(f'<td class="error" data-v="{escape(error)}" title="{escape(error)}">{escape(short)}</td>')
    return "".join(cells)


def _trials_table(run: RunData) -> str:
    if not run.trials:
        return '<p class="muted">No trial has finished yet.</p>'
    payloads = payload_names(run)
    payload_cols = payloads if len(payloads) <= MAX_PAYLOAD_COLUMNS else []
    values = [v for _, t in run.trials for name in ("alpha", "beta")
              for v in as_mapping(weight_set(t, name)).values()]
    norm = weight_norm(values)
    best, worst = run.best, run.worst
    blocks = list(run.blocks)

    head = ['<th data-type="num" data-first="asc" scope="col">#</th>',
            '<th data-type="text" scope="col">phase</th>', '<th data-type="text" scope="col">status</th>',
            '<th data-type="num" scope="col" aria-sort="descending">score</th>']
    webui_column = any(t.get("webui") for _, t in run.trials)
    if webui_column:
        head.append('<th data-type="text" scope="col">webui</th>')
    head += [f'<th data-type="num" scope="col" class="rescore-col">{escape(label)}</th>' for label in run.rescores]
    head += [f'<th data-type="num" scope="col" class="payload-col">{escape(p)}</th>' for p in payload_cols]
    head += ['<th scope="col">weights (α string{})</th>'.format(", β string" if run.uses_beta else ""),
             '<th data-type="num" scope="col">time</th>', '<th data-type="text" scope="col">error</th>']

    def order(item):  # score, best first; failed trials last, by number
        n, t = item
        score = record_score(t)
        return (score is None, -(score or 0.0), n)

    rows = []
    for n, trial in sorted(run.trials, key=order):
        classes = []
        if best and n == best[0]:
            classes.append("best")
        elif worst and n == worst[0] and len(run.ok_trials) > 1:
            classes.append("worst")
        if record_score(trial) is None:
            classes.append("failed")
        rows.append(f'<tr class="{" ".join(classes)}">{_trial_cells(n, trial, payload_cols, blocks, norm, run.rescores.values(), webui_column)}</tr>')
    return (f'<div class="table-wrap"><table class="trials sortable"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


# --- page ----------------------------------------------------------------------------------------


def render_html(run: RunData) -> str:
    """The whole report page as a string."""
    info = run.info
    run_id = info.get("run_id") or run.run_dir.name
    budget = run.budget
    state = ""
    if budget is not None:
        if run.done >= budget:
            state = '<span class="pill done">finished</span>'
        elif run.live:
            state = '<span class="pill live">in progress · reload to update</span>'
        else:
            state = '<span class="pill stopped">stopped · resume it to finish</span>'
    subtitle = " · ".join(escape(str(v)) for v in (info.get("architecture"), info.get("method")) if v)
    generated = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
<title>bayes-merger · {escape(str(run_id))}</title>
<style>{CSS}</style>
</head>
<body>
<header>
  <div class="brand">bayes-merger run</div>
  <h1>{escape(str(run_id))} {state}</h1>
  <div class="sub">{subtitle}</div>
</header>
<main>
{_summary(run)}
<section id="convergence">
  <h2>Convergence</h2>
  {_figure(CONVERGENCE_PNG, "score per trial")}
</section>
<section id="weights">
  <h2>Best block weights</h2>
  {_figure(WEIGHTS_PNG, "best block weights drawn as the UNet, and the top trials' weights")}
  {_weight_code(run)}
  {_figure(IMPORTANCE_PNG, "how much each block matters, from the fitted model") if run.importance else ""}
</section>
<section id="images">
  <h2>Best and worst trial, side by side</h2>
  {_images(run)}
</section>
<section id="trials">
  <h2>All trials <span class="count">{len(run.trials)}</span></h2>
  <p class="hint">Click a column header to sort.</p>
  {_trials_table(run)}
</section>
</main>
<footer>Written {escape(generated)} by bayes-merger {escape(__version__)}.
The run rewrites this page after every trial.</footer>
<script>{JS}</script>
</body>
</html>
"""
