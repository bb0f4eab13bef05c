"""The run's three plots: score per trial (convergence.png), the best block weights (weights.png) and, once
the model is fitted, how much each block matters (importance.png, from best.yaml).

Figures are built with matplotlib's object API on an Agg canvas, never through pyplot: nothing is
registered globally, nothing needs closing, and the backend of the host process is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib import colormaps
from matplotlib.colors import Colormap, Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from bayes_merger.files import atomic_path
from bayes_merger.report.data import RunData, block_kind, weight_set
from bayes_merger.run_folder import record_score

# 0 = model A (blue), 0.5 = an even mix (grey), 1 = model B (red)
WEIGHT_CMAP = "coolwarm"
DPI = 100

EXPLORE = "#8a94a6"
EXPLOIT = "#2563eb"
BEST_LINE = "#ea580c"
FAILED = "#dc2626"
INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"


def weight_colormap() -> Colormap:
    return matplotlib.colormaps[WEIGHT_CMAP]


def weight_norm(values: Sequence[float]) -> Normalize:
    """0..1, widened when weights go beyond (custom ranges, add_difference), 0.5 (the even mix) kept at
    the colour map's neutral middle."""
    return TwoSlopeNorm(vcenter=0.5, vmin=min([0.0, *values]), vmax=max([1.0, *values]))


def save_png(fig: Figure, path: Path) -> None:
    """Write the figure to path atomically, so a browser reloading the report never reads half a PNG."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")


def _style(ax) -> None:
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9ca3af")
    ax.tick_params(colors=MUTED, labelsize=8.5)


def _message(fig: Figure, text: str) -> Figure:
    fig.text(0.5, 0.5, text, ha="center", va="center", color=MUTED, fontsize=12, wrap=True)
    return fig


# --- convergence ---------------------------------------------------------------------------------


def convergence_figure(run: RunData) -> Figure:
    """Score per trial: exploration and exploitation trials, the best so far, failed trials."""
    fig = Figure(figsize=(12.0, 4.4), layout="constrained")
    if not run.trials:
        return _message(fig, "No trial has finished yet.")
    ax = fig.add_subplot()
    _style(ax)

    explore = [(n, s) for n, t in run.trials if (s := record_score(t)) is not None and t.get("phase") in ("start", "init")]
    exploit = [(n, s) for n, t in run.trials if (s := record_score(t)) is not None and t.get("phase") not in ("start", "init")]
    failed = [n for n, t in run.trials if record_score(t) is None]

    if explore:
        ax.scatter(*zip(*explore), s=34, facecolors="white", edgecolors=EXPLORE, linewidths=1.6,
                   label="exploration (random init)", zorder=3)
    if exploit:
        ax.scatter(*zip(*exploit), s=30, color=EXPLOIT, label="exploitation (optimiser)", zorder=3)

    ordered = sorted(run.ok_trials, key=lambda item: item[0])
    if ordered:
        xs, best_so_far, best = [], [], float("-inf")
        for n, _, score in ordered:
            best = max(best, score)
            xs.append(n)
            best_so_far.append(best)
        last_trial = max(n for n, _ in run.trials)
        if last_trial > xs[-1]:
            xs.append(last_trial)
            best_so_far.append(best)
        ax.step(xs, best_so_far, where="post", color=BEST_LINE, linewidth=2.2, label="best so far", zorder=2)
        n_best, _, s_best = run.best
        ax.scatter([n_best], [s_best], marker="*", s=260, color="#facc15", edgecolors=INK, linewidths=0.9,
                   zorder=4, label=f"best: trial {n_best} ({s_best:.4g})")

    if failed:
        # failed trials have no score: mark them on the bottom edge, where they cannot be mistaken for one
        on_floor = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(failed, [0.03] * len(failed), marker="x", s=42, color=FAILED, linewidths=2,
                   transform=on_floor, clip_on=False, label=f"failed ({len(failed)})", zorder=4)

    first_optimise = min((n for n, t in run.trials if t.get("phase") == "optimise"), default=None)
    if explore and first_optimise is not None:
        ax.axvline(first_optimise - 0.5, color=MUTED, linestyle=(0, (4, 3)), linewidth=1)
        ax.text(first_optimise - 0.5, 0.99, " optimiser takes over", transform=blended_transform_factory(
            ax.transData, ax.transAxes), color=MUTED, fontsize=8, va="top")

    if not ordered:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "No successful trial yet.", transform=ax.transAxes, ha="center", color=MUTED)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one trial: its number, not -0.6 … 0.6
    ax.set_xlabel("trial", color=MUTED)
    ax.set_ylabel("score", color=MUTED)
    # set by hand: failed trials, drawn in axes coordinates, do not widen the x range on their own
    numbers = [n for n, _ in run.trials]
    pad = max(0.6, 0.015 * (max(numbers) - min(numbers)))
    ax.set_xlim(min(numbers) - pad, max(numbers) + pad)
    ax.margins(y=0.12)  # room above the best-so-far line for the labels
    ax.set_title("Score per trial", loc="left", color=INK, fontsize=12, fontweight="bold")
    fig.legend(loc="outside upper right", ncol=5, fontsize=8.5, frameon=False)
    return fig


# --- weights -------------------------------------------------------------------------------------

_BOX_W, _BOX_H, _INDENT, _WIDTH = 2.7, 0.76, 0.55, 10.0


def _unet_layout(blocks: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Block → (x, row) of its box: IN down the left, the middle at the bottom, OUT up the right,
    indented by resolution level (three blocks a level), BASE and other non-UNet blocks on top."""
    ins = sorted((i, b) for b in blocks if (k := block_kind(b)) and k[0] == "IN" for i in [k[1]])
    mids = [b for b in blocks if (k := block_kind(b)) and k[0] == "M"]
    outs = sorted((i, b) for b in blocks if (k := block_kind(b)) and k[0] == "OUT" for i in [k[1]])
    others = [b for b in blocks if block_kind(b) is None]
    layout: dict[str, tuple[float, float]] = {}
    for row, (i, block) in enumerate(ins):
        layout[block] = (0.1 + (row // 3) * _INDENT, 1 + row)
    for pos, (i, block) in enumerate(outs):
        row = len(outs) - 1 - pos  # OUT00 is deepest: it meets the middle block
        layout[block] = (_WIDTH - 0.1 - _BOX_W - (row // 3) * _INDENT, 1 + row)
    bottom = 1 + max(len(ins), len(outs))
    for pos, block in enumerate(mids):
        layout[block] = (_WIDTH / 2 - _BOX_W / 2 + (pos - (len(mids) - 1) / 2) * (_BOX_W + 0.2), bottom)
    for pos, block in enumerate(others):
        layout[block] = (_WIDTH / 2 - _BOX_W / 2 + (pos - (len(others) - 1) / 2) * (_BOX_W + 0.2), 0)
    return layout


def _text_colour(rgba) -> str:
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else INK


def _draw_unet(ax, weights: Mapping[str, float], blocks: Sequence[str], norm: Normalize, title: str,
               cmap: Colormap | None = None) -> None:
    cmap = cmap or weight_colormap()
    layout = _unet_layout(blocks)
    rows = max((row for _, row in layout.values()), default=0)
    centre = {b: (x + _BOX_W / 2, -row) for b, (x, row) in layout.items()}

    def link(a: str, b: str, **style) -> None:
        if a in centre and b in centre:
            (x0, y0), (x1, y1) = centre[a], centre[b]
            ax.plot([x0, x1], [y0, y1], zorder=1, **style)

    ins = [b for b in blocks if (k := block_kind(b)) and k[0] == "IN"]
    outs = [b for b in blocks if (k := block_kind(b)) and k[0] == "OUT"]
    mids = [b for b in blocks if (k := block_kind(b)) and k[0] == "M"]
    others = [b for b in blocks if block_kind(b) is None]
    chain = sorted(ins, key=lambda b: block_kind(b)[1]) + mids + sorted(outs, key=lambda b: block_kind(b)[1])
    for a, b in zip(chain, chain[1:]):
        link(a, b, color="#c4c9d2", linewidth=1.4)
    for a, b in zip(sorted(ins, key=lambda b: block_kind(b)[1]), sorted(outs, key=lambda b: -block_kind(b)[1])):
        link(a, b, color="#dfe3e8", linewidth=1, linestyle=(0, (3, 3)))  # skip connections

    for block, (x, row) in layout.items():
        value = weights.get(block)
        y = -row - _BOX_H / 2
        face = cmap(norm(value)) if value is not None else (0.95, 0.95, 0.95, 1)
        ax.add_patch(FancyBboxPatch((x, y), _BOX_W, _BOX_H, boxstyle="round,pad=0,rounding_size=0.14",
                                    facecolor=face, edgecolor="white", linewidth=1.2, zorder=2))
        ink = _text_colour(face)
        ax.text(x + 0.14, -row, block, ha="left", va="center", fontsize=8, color=ink, zorder=3)
        if block == "BASE" and len(others) == 1:
            ax.text(x + _BOX_W + 0.12, -row, "text encoder\n+ VAE", ha="left", va="center", fontsize=6.5,
                    color=MUTED, linespacing=1.0)
        ax.text(x + _BOX_W - 0.14, -row, "—" if value is None else f"{value:.2f}", ha="right", va="center",
                fontsize=9, fontweight="bold", color=ink, zorder=3, family="monospace")
    ax.text(0.1, 0.85 - 1, "IN ↓", fontsize=8.5, color=MUTED, va="bottom")
    ax.text(_WIDTH - 0.1, 0.85 - 1, "OUT ↑", fontsize=8.5, color=MUTED, va="bottom", ha="right")
    ax.set_xlim(0, _WIDTH)
    ax.set_ylim(-rows - 0.6, 0.6)
    ax.axis("off")
    ax.set_title(title, loc="left", color=INK, fontsize=11, fontweight="bold")


TOP_COLOURS = (INK, "#2563eb", "#0d9488", "#d97706", "#a21caf")


def _draw_top_lines(ax, name: str, blocks: Sequence[str], top) -> list:
    """The top trials' weights per block; the shaded range is narrow where they agree."""
    _style(ax)
    ax.grid(False, axis="x")  # the BASE | IN | M | OUT separators are the vertical lines that matter
    positions = list(range(len(blocks)))
    kinds = [(block_kind(b) or ("BASE", 0))[0] for b in blocks]
    for i in range(1, len(kinds)):  # separators between BASE | IN | M | OUT
        if kinds[i] != kinds[i - 1]:
            ax.axvline(i - 0.5, color="#c4c9d2", linewidth=1)
    symbol = "α" if name == "alpha" else "β"
    table = [weight_set(trial, name) or {} for _, trial, _ in top]
    handles = []
    if len(top) > 1:
        lows, highs = [], []
        for block in blocks:
            column = [w[block] for w in table if block in w]
            lows.append(min(column) if column else float("nan"))
            highs.append(max(column) if column else float("nan"))
        handles.append(ax.fill_between(positions, lows, highs, color="#94a3b8", alpha=0.18, linewidth=0,
                                       label=f"range of the top {len(top)}"))
    for rank, ((n, _, score), weights) in enumerate(zip(top, table)):
        ys = [weights.get(b, float("nan")) for b in blocks]
        if rank == 0:
            style = dict(linewidth=2.6, marker="o", markersize=4, zorder=6)
        else:
            style = dict(linewidth=1.2, alpha=0.8, zorder=5 - rank * 0.1)
        (line,) = ax.plot(positions, ys, color=TOP_COLOURS[rank % len(TOP_COLOURS)],
                          label=f"#{n}  {score:.4g}" + ("  (best)" if rank == 0 else ""), **style)
        handles.append(line)
    ax.set_xticks(positions, list(blocks), rotation=90, fontsize=7.5)
    ax.set_xlim(-0.5, len(blocks) - 0.5)
    values = [v for w in table for v in w.values()]
    low, high = min([0.0, *values]), max([1.0, *values])
    ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    ax.set_ylabel(f"{symbol} weight", color=MUTED, fontsize=9)
    ax.set_title(f"Top {len(top)} trials, {symbol} per block", loc="left", color=INK, fontsize=11,
                 fontweight="bold")
    return handles


def weights_figure(run: RunData, top_n: int = 5) -> Figure:
    """The best trial's weights drawn as a UNet, one panel per α/β set, and the top trials' weights.

    With α only, the UNet and the lines sit side by side; with α and β, one column per set.
    """
    best = run.best
    if best is None:
        return _message(Figure(figsize=(12.0, 2.0)),
                        "No successful trial yet: the best weights appear here after the first scored trial.")
    n_best, trial, score = best
    sets = [name for name in ("alpha", "beta") if weight_set(trial, name)]
    if not sets:
        return _message(Figure(figsize=(12.0, 2.0)), f"Trial {n_best} recorded no block weights.")
    blocks = list(run.blocks)
    for name in sets:  # blocks a trial has but run.json does not list still get drawn
        blocks += [b for b in weight_set(trial, name) if b not in blocks]
    # the reported best (by the model) first and drawn bold, as in the UNet beside it; then the highest scores
    top = [best, *[entry for entry in run.ranked() if entry[0] != n_best]][:top_n]
    rows = 2 + max(sum(1 for b in blocks if (k := block_kind(b)) and k[0] == side) for side in ("IN", "OUT"))
    norm = weight_norm([v for name in sets for v in weight_set(trial, name).values()])

    if len(sets) == 1:
        fig = Figure(figsize=(12.0, rows * 0.34 + 1.6), layout="constrained")
        grid = fig.add_gridspec(3, 2, width_ratios=[5, 7], height_ratios=[rows * 0.34, 0.13, 0.6])
        unet_axes, bar_axes = [fig.add_subplot(grid[0, 0])], fig.add_subplot(grid[1, 0])
        line_axes = [fig.add_subplot(grid[:, 1])]
        legend_axes = fig.add_subplot(grid[2, 0])
        legend_axes.axis("off")
    else:
        fig = Figure(figsize=(12.0, rows * 0.34 + 4.6), layout="constrained")
        grid = fig.add_gridspec(3, len(sets), height_ratios=[rows * 0.34, 0.13, 3.0])
        unet_axes = [fig.add_subplot(grid[0, col]) for col in range(len(sets))]
        bar_axes = fig.add_subplot(grid[1, :])
        line_axes = [fig.add_subplot(grid[2, col]) for col in range(len(sets))]
    handles = []
    for name, unet_ax, line_ax in zip(sets, unet_axes, line_axes):
        symbol = "α" if name == "alpha" else "β"
        title = f"Best {symbol}: trial {n_best}, score {score:.4g}"
        _draw_unet(unet_ax, weight_set(trial, name), blocks, norm, title)
        handles = _draw_top_lines(line_ax, name, blocks, top)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=weight_colormap()), cax=bar_axes,
                       orientation="horizontal")
    method = str(run.info.get("method") or "weighted_sum")
    # A to B only for a weighted sum: add_difference's 1 is A + (B − C), distribution_crossover's 0 is B
    label = ("0 = model A  ·  0.5 = even mix  ·  1 = model B" if method == "weighted_sum"
             else f"each block's weight in {method} (README: Merge methods)")
    bar.set_label(label, color=MUTED, fontsize=8.5)
    bar.ax.tick_params(labelsize=8, colors=MUTED)
    bar.outline.set_visible(False)
    if len(sets) == 1:
        legend_axes.legend(handles=handles, loc="center", ncol=3, fontsize=8, frameon=False)
    else:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    return fig


def importance_figure(run: RunData) -> Figure:
    """Each block's importance (from the model's length scales, 1 = the block that matters most) drawn
    as the UNet, one panel per α/β set."""
    importance = run.importance
    sets = [(name, {b: importance[key] for b in run.blocks if (key := b + suffix) in importance})
            for name, suffix in (("α", ""), ("β", "_beta"))]
    sets = [(name, values) for name, values in sets if values]
    rows = 2 + max(sum(1 for b in run.blocks if (k := block_kind(b)) and k[0] == side) for side in ("IN", "OUT"))
    fig = Figure(figsize=(6.0 * len(sets), rows * 0.34 + 1.2), layout="constrained")
    norm = Normalize(0.0, 1.0)
    cmap = colormaps["Greens"]
    for col, (name, values) in enumerate(sets):
        _draw_unet(fig.add_subplot(1, len(sets), col + 1), values, run.blocks, norm,
                   f"Which blocks matter ({name}): 1 = most, from the model", cmap=cmap)
    return fig
