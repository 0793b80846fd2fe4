"""How the report's figures look, in one place: one colour and one marker per algorithm (`styles`,
the same in every figure of a report), one fill per network (`fills`), a legend beside the axes
(`legend`), intervals that stay where their quantity can be (`clipped_sd`), and the matplotlib
helpers every figure draws through (`_plt`, `_save`, `_empty`)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bpfree import io
from bpfree.stats import REFERENCE

MARKERS = "osD^vP*X<>h"  # filled shapes, each readable hollow too; 11, prime to the 20 colours
FILLS = ("full", "none", "bottom", "left", "top", "right")  # one per network: filled, hollow, half-filled...


class Style(NamedTuple):
    colour: tuple
    marker: str


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def styles(algorithms: Iterable[str]) -> dict[str, Style]:
    """Colour and marker of each algorithm of a report: bp first, then the others sorted, through
    20 distinct colours (tab10's strong ones, then tab20's light ones) and 11 markers, so that no
    two of the first 220 algorithms share both. Every figure of a report takes its styles from its
    runs' algorithms, so an algorithm looks the same in all of them."""
    plt = _plt()
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("tab20").colors[1::2]]
    names = sorted(set(algorithms), key=lambda a: (a != REFERENCE, a))
    return {a: Style(palette[i % len(palette)], MARKERS[i % len(MARKERS)]) for i, a in enumerate(names)}


def fills(architectures: Iterable[str]) -> dict[str, str]:
    """The marker fill that tells the networks of a report apart: the network of the most runs
    filled, the next hollow, then half-filled (ties by name). `architectures`: one per run."""
    count = Counter(architectures)
    return {a: FILLS[i % len(FILLS)] for i, a in enumerate(sorted(count, key=lambda a: (-count[a], a)))}


def clipped_sd(values, low: float = 0.0, high: float = np.inf) -> tuple[float, list[float]]:
    """Mean of `values` and its ± 1 sd as asymmetric error bar lengths [below, above], clipped to
    [low, high]: an energy or a time never reaches below 0, an accuracy never above 100."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return mean, [min(sd, max(mean - low, 0.0)), min(sd, max(high - mean, 0.0))]


def legend(fig, entries: dict[str, Style], fills_: dict[str, str] | None = None, extra=(), title="algorithm"):
    """One legend for the whole figure, beside the axes (right, outside them): each algorithm's
    colour and marker, then each network's fill (grey), then `extra` (handle, label) pairs."""
    from matplotlib.lines import Line2D

    def handle(colour, marker, fill="full"):
        return Line2D([], [], color=colour, marker=marker, ls="none", ms=7, fillstyle=fill)

    items = [(handle(s.colour, s.marker), a) for a, s in entries.items()]
    if fills_ and len(fills_) > 1:
        items += [(handle("0.35", "o", f), f"network {a}") for a, f in fills_.items()]
    items += list(extra)
    fig.legend([h for h, _ in items], [lab for _, lab in items], loc="upper left", bbox_to_anchor=(1.0, 1.0),
               fontsize=8, frameon=False, title=title, title_fontsize=8, alignment="left")


def log_ticks(axis) -> None:
    """Plain numbers at 1, 2 and 5 times the powers of ten on a log-scaled `axis` (ax.xaxis), and
    no minor labels: matplotlib's default writes "3 x 10^2" at every minor tick, and they collide."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _save(fig, path: str | Path) -> None:
    """Write the figure (atomically, via io), with room for a legend beside the axes."""
    fig.tight_layout()
    io.save_figure(fig, path, dpi=110, bbox_inches="tight")
    _plt().close(fig)


def _empty(path: str | Path, text: str) -> None:
    """A figure with nothing to show: a sentence saying why."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    _save(fig, path)
