"""Small HTML fragments the sections build in Python (tables of values, notes, badges).
The page around them is a Jinja2 template (page.html); here every value is escaped with
:func:`esc`."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from study.report.values import fmt

NOT_AVAILABLE = "not available"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def note(text: str) -> str:
    """A note (``text`` is HTML)."""
    return f'<p class="note">{text}</p>'


def na(what: str, why: str = "") -> str:
    """The note "<what>: not available (<why>)."."""
    extra = f" ({esc(why)})" if why else ""
    return note(f"{esc(what)}: {NOT_AVAILABLE}{extra}.")


def badge(verdict: str) -> str:
    css = verdict.replace(" ", "-")
    return f'<span class="badge {css}">{esc(verdict)}</span>'


def table_html(df: pd.DataFrame, cls: str = "data") -> str:
    """A table of a DataFrame's values (formatted with :func:`fmt`, escaped)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = "".join(f"<td>{esc(fmt(v))}</td>" for v in r.tolist())
        rows.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="tablewrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def kv_table(d: dict) -> str:
    """A two-column table of keys and values (a dict value on one line, a list counted)."""
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            inner = ", ".join(f"{esc(a)}: {esc(fmt(b))}" for a, b in v.items())
            rows.append(f"<tr><th>{esc(k)}</th><td>{inner}</td></tr>")
        elif isinstance(v, list):
            rows.append(f"<tr><th>{esc(k)}</th><td>{len(v)} entries</td></tr>")
        else:
            rows.append(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>")
    return f"<div class='tablewrap'><table class='kv'>{''.join(rows)}</table></div>"
