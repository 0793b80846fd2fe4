"""Formatting for readers: numbers, mean ± sd, deltas with their intervals, and tables as markdown
or a standalone HTML page."""
from __future__ import annotations

import html
import math

import pandas as pd

from bpfree.compared import delta_format, symbol

DASH = "–"


def _num(x: float, fmt: str) -> str:
    return DASH if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:{fmt}}"


def fmt_mean_sd(n: int, mean: float, sd: float, fmt: str) -> str:
    if n == 0 or not math.isfinite(mean):
        return DASH
    if n < 2:
        return f"{mean:{fmt}} (n=1, no sd)"
    return f"{mean:{fmt}} ± {sd:{fmt}} (n={n})"


def fmt_delta(row: pd.Series | dict | None) -> str:
    """'+0.12 [-0.05, +0.30] pp, not resolved at n = 5' and the like."""
    if row is None:
        return DASH
    unit, fmt = " " + symbol(row["unit"]), delta_format(row["unit"])
    if not math.isfinite(row["estimate"]):
        return row["status"]
    text = f"{row['estimate']:{fmt}}{unit}"
    if math.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:{fmt}}, {row['ci_high']:{fmt}}]"
    if row["status"] != "resolved":
        text += f", {row['status']}"
    return text


def verdict(row: pd.Series | dict | None, published_value: float) -> str:
    """What our paired interval says about a published delta."""
    if published_value is None or not math.isfinite(published_value):
        return "no published value"
    if row is None or not math.isfinite(row["estimate"]):
        return "not compared: " + (row["status"] if row is not None else "no run of ours")
    if not row["resolved"]:
        return f"cannot resolve: {row['status']}"
    inside = row["ci_low"] <= published_value <= row["ci_high"]
    if published_value == 0:
        return "contradicts (published 0, ours resolved)"
    same = (row["estimate"] > 0) == (published_value > 0)
    where = "published value inside our interval" if inside else "published value outside our interval"
    return f"{'supports the sign' if same else 'contradicts the sign'} ({where})"


KEYS = ("dataset", "architecture", "algorithm", "variant")  # a table's key columns: never dropped


def drop_empty(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """`df` without the columns that hold no value in any row (a dash, blank or NaN everywhere:
    e.g. the published columns of a data set no paper reports), and their names."""
    def blank(v) -> bool:
        return v is None or (isinstance(v, float) and v != v) or str(v).strip() in ("", DASH)

    empty = [c for c in df.columns if c not in KEYS and len(df) and df[c].map(blank).all()]
    return df.drop(columns=empty), empty


def markdown(df: pd.DataFrame) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _css(scope: str = "") -> str:
    """The tables' style, each rule under `scope` (a class selector; none: a whole page): headers
    and long cells wrap, so that a table fits the page."""
    s = f"{scope} " if scope else ""
    return (f"{scope or 'body'}{{font-family:sans-serif;font-size:12px}}"
            f"{s}table{{border-collapse:collapse;max-width:100%;margin:0 0 1em 0;font-size:12px;line-height:1.3}}"
            f"{s}td,{s}th{{border:1px solid #ccc;padding:3px 5px;text-align:left;vertical-align:top;"
            f"overflow-wrap:break-word}}{s}th{{background:#eee;font-weight:600}}")


def _parts_html(parts: list[tuple[str, pd.DataFrame | str]], level: int) -> str:
    body = []
    for head, part in parts:
        if head:
            body.append(f"<h{level}>{html.escape(head)}</h{level}>")
        body.append(part.to_html(index=False, escape=True, border=0) if isinstance(part, pd.DataFrame)
                    else "".join(f"<p>{html.escape(p)}</p>" for p in part.split("\n\n") if p.strip()))
    return "".join(body)


def html_page(title: str, parts: list[tuple[str, pd.DataFrame | str]]) -> str:
    """A standalone HTML page of headed tables or paragraphs (the report embeds it); headers and
    long cells wrap, so that it fits the page."""
    style = "body{margin:1em}" + _css() + "th{position:sticky;top:0}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h2>{html.escape(title)}</h2>{_parts_html(parts, 3)}</body></html>\n")


def html_fragment(title: str, parts: list[tuple[str, pd.DataFrame | str]], css_class: str) -> str:
    """The same as `html_page`, as a fragment that a page can include (the report's opening page
    does): its style scoped to `css_class`, every character beyond ASCII as an entity (a fragment
    declares no encoding)."""
    text = (f"<style>{_css('.' + css_class)}</style><div class='{css_class}'><h3>{html.escape(title)}</h3>"
            f"{_parts_html(parts, 4)}</div>\n")
    return text.encode("ascii", "xmlcharrefreplace").decode()


def markdown_parts(parts: list[tuple[str, pd.DataFrame | str]]) -> str:
    """Headed tables or paragraphs as markdown (the markdown twin of `html_page`)."""
    return "\n".join(f"## {h}\n\n" + (markdown(p) if isinstance(p, pd.DataFrame) else p + "\n") for h, p in parts)
