"""Two or more runs side by side: one self-contained HTML page (offline, plotly.js
embedded once) with AUC against latent_dim per stratum, one curve per run; the verdict
rows of every run next to each other; the fixed-latent_dim tests; and what differs
between the runs (their space.yaml, machine, package versions, durations).

Everything is drawn from :func:`study.load_run` with the report's own statistics,
figure code, template helpers and style sheet.

Example:
    >>> import study
    >>> comparison = study.compare(["runs/latent", "runs/entropy"])      # doctest: +SKIP
    >>> comparison.verdicts()[["stratum", "run", "verdict", "p"]]        # doctest: +SKIP
    >>> comparison.figure().show()                                       # doctest: +SKIP
    >>> comparison.write("compare.html")                                 # doctest: +SKIP

Command line: ``ae4ad-study compare RUN_DIR RUN_DIR... --out compare.html``.
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from study import hypothesis as H
from study.report import figures
from study.report.context import Ctx, Options
from study.report.figures import compare as compare_figures
from study.report.fragments import badge, esc, na, note, table_html
from study.report.notebook import Run, load_run
from study.report.page import Page, _package_text, template
from study.report.sections.verdicts import effect_text, p_text
from study.report.values import seconds
from study.results import TRIALS_CSV, TRIALS_FILE, atomic_write_text

COMPARE_FILE = "compare.html"
MIN_RUNS = 2


class CompareError(ValueError):
    """A comparison that cannot be made: a folder that is not a run, fewer than two runs,
    the same run twice. The message is one line naming what is wrong."""


@dataclass
class Comparison:
    """The runs compared (``runs``, ``labels``) with the report's options; the tables and
    the figure of the comparison page."""

    runs: list[Run]
    labels: list[str]
    options: Options = field(default_factory=Options)

    def contexts(self) -> list[Ctx]:
        """Each run's report context (verdicts, summaries) at the comparison's options."""
        return [r.context(**vars(self.options)) for r in self.runs]

    def figure(self, metric: str = "auc") -> go.Figure:
        """``metric`` against latent_dim per stratum, one curve per run."""
        return figures.to_figure(compare_figures.curves(self.labels, self.contexts(), metric))

    def verdicts(self) -> pd.DataFrame:
        """One row per stratum and run: the verdict's words, p, effect with its interval,
        d* and the latent_dims within reach of it (none where the capacity test was not
        carried out), both capacity tests."""
        rows = []
        for key in compare_figures.strata(self.contexts()):
            for label, run in zip(self.labels, self.runs):
                v = _verdict(run, key, self.options)
                if v is not None:
                    rows.append(_verdict_row(label, v))
        return pd.DataFrame(rows)

    def fixed_latent_dim_tests(self) -> pd.DataFrame:
        """One row per data set and run: the tests of entropy at fixed latent_dim."""
        rows = []
        for label, run in zip(self.labels, self.runs):
            for t in run.fixed_latent_dim_tests(**vars(self.options)):
                rows.append(_fixed_row(label, t))
        if not rows:
            return pd.DataFrame()
        return pd.DataFrame(rows).sort_values("data set", kind="stable").reset_index(drop=True)

    def differences(self) -> pd.DataFrame:
        """The keys of the runs' space.yaml whose values differ (a missing key is “–”)."""
        flat = [flatten(r.space or {}) for r in self.runs]
        keys = list(dict.fromkeys(k for f in flat for k in f))
        rows = [
            {"key": k, **{lab: f.get(k, "–") for lab, f in zip(self.labels, flat)}}
            for k in keys
            if len({repr(f.get(k, "–")) for f in flat}) > 1
        ]
        return pd.DataFrame(rows, columns=["key", *self.labels])

    def facts(self) -> pd.DataFrame:
        """Machine, versions, durations and trial counts of each run (meta.json and the
        trials table); ``differs`` marks the rows whose values are not all equal."""
        per_run = [run_facts(r) for r in self.runs]
        keys = list(dict.fromkeys(k for f in per_run for k in f))
        rows = []
        for k in keys:
            values = [f.get(k, "–") for f in per_run]
            differs = "yes" if len(set(values)) > 1 else ""
            rows.append({"": k, **dict(zip(self.labels, values)), "differs": differs})
        return pd.DataFrame(rows, columns=["", *self.labels, "differs"])

    def html(self) -> str:
        """The comparison page (self-contained HTML)."""
        return render(self)

    def write(self, out: Path | str = COMPARE_FILE) -> Path:
        """Write the page to ``out`` atomically; returns its path."""
        out = Path(out)
        atomic_write_text(out, self.html())
        return out


def compare(
    runs: Sequence[Path | str | Run], out: Path | str | None = None, **options: Any
) -> Comparison:
    """Compare two or more run folders (or :class:`~study.report.notebook.Run` objects);
    with ``out``, also write the page there. ``options`` are the report's
    (:class:`~study.report.context.Options`: alpha, n_sim, n_boot, ...).

    Raises :class:`CompareError` for fewer than two runs, a folder that is not a run or
    the same folder twice, and ``ValueError`` for bad options.
    """
    opts = Options(**options).check()
    loaded = [r if isinstance(r, Run) else load_run(check_run_dir(r)) for r in runs]
    if len(loaded) < MIN_RUNS:
        raise CompareError(f"compare needs at least {MIN_RUNS} run folders, got {len(loaded)}")
    folders = [r.run_dir.resolve() for r in loaded]
    twice = sorted({str(f) for f in folders if folders.count(f) > 1})
    if twice:
        raise CompareError(f"{twice[0]}: the same run folder given twice; give different runs")
    comparison = Comparison(loaded, run_labels(loaded), opts)
    if out is not None:
        comparison.write(out)
    return comparison


def check_run_dir(path: Path | str) -> Path:
    """``path`` when it is a run folder (it holds trials.parquet or trials.csv); raises
    :class:`CompareError` otherwise."""
    p = Path(path)
    if not p.is_dir():
        raise CompareError(f"{p}: no such folder (expected a run folder holding {TRIALS_FILE})")
    if not ((p / TRIALS_FILE).is_file() or (p / TRIALS_CSV).is_file()):
        raise CompareError(f"{p}: not a run folder (no {TRIALS_FILE} in it)")
    return p


def run_labels(runs: Sequence[Run]) -> list[str]:
    """The study names, or the folders when two runs share a name."""
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    folders = [str(r.run_dir) for r in runs]
    if len(set(folders)) == len(folders):
        return folders
    return [f"{n} ({i + 1})" for i, n in enumerate(names)]


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested space as ``dotted.key: value`` text; list items that are mappings with a
    ``label`` (or ``name``) are keyed by it, e.g. ``datasets[phantom-k3].params.seed``.

    >>> flatten({"training": {"lr": 0.001}, "datasets": [{"name": "phantom", "label": "k3"}]})
    {'training.lr': '0.001', 'datasets[k3].name': 'phantom', 'datasets[k3].label': 'k3'}
    """
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            key = v.get("label") or v.get("name") or i
            out.update(flatten(v, f"{prefix}[{key}]"))
    else:
        out[prefix] = _text(value)
    return out


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_facts(run: Run) -> dict[str, str]:
    """What a reader compares besides the space: status, trials, machine, versions and
    durations (from meta.json and the trials table)."""
    meta = run.meta or {}
    t = run.trials if run.trials is not None else pd.DataFrame()
    done = t[t["status"] == "completed"] if "status" in t.columns else t
    git = meta.get("git") or {}
    facts = {
        "folder": str(run.run_dir),
        "status": str(meta.get("status", "unknown")),
        "trials (completed of all)": f"{len(done)} of {len(t)}",
        "search": str(((run.space or {}).get("search") or {}).get("type", "grid")),
        "started at": str(meta.get("started_at") or "–"),
        "wall time (sessions)": _wall_time(meta),
        "trial time (sum of trials' wall_s)": _sum_seconds(t, "wall_s"),
        "sessions": str(len(meta.get("sessions") or [])),
        "hostname": str(meta.get("hostname", "–")),
        "platform": str(meta.get("platform", "–")),
        "devices": ", ".join(sorted({str(d) for d in t.get("device", pd.Series()).dropna()}))
        or "–",
        "python": str(meta.get("python", "–")),
        "git commit": (
            str(git.get("commit") or "–")[:12] + (" (dirty)" if git.get("dirty") else "")
        ),
    }
    for name, version in sorted((meta.get("packages") or {}).items()):
        facts[f"package {name}"] = str(version)
    return facts


def _wall_time(meta: dict) -> str:
    total = 0.0
    for s in meta.get("sessions") or []:
        a, b = _when(s.get("started_at")), _when(s.get("finished_at"))
        if a is not None and b is not None:
            total += (b - a).total_seconds()
    if not total:
        a, b = _when(meta.get("started_at")), _when(meta.get("finished_at"))
        if a is None or b is None:
            return "–"
        total = (b - a).total_seconds()
    return seconds(total)


def _when(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _sum_seconds(t: pd.DataFrame, col: str) -> str:
    if col not in t.columns:
        return "–"
    total = float(pd.to_numeric(t[col], errors="coerce").sum())
    return seconds(total) if total > 0 else "–"


def _verdict(run: Run, stratum: str, options: Options) -> H.StratumVerdict | None:
    return next((v for v in run.verdicts(**vars(options)) if v.stratum == stratum), None)


def _verdict_row(label: str, v: H.StratumVerdict) -> dict[str, Any]:
    tested = v.verdict != H.NOT_TESTED
    return {
        "stratum": v.stratum,
        "run": label,
        "verdict": v.verdict,
        "headline p": f"p {H.format_p_clause(v.p_value)}" if tested else "–",
        "over capacity": v.over.verdict,
        "p": p_text(v.over),
        "effect [CI]": effect_text(v.over),
        "d*": v.best_latent_dim if tested and v.best_latent_dim is not None else "–",
        "within reach": ", ".join(str(d) for d in v.best_set) if tested and v.best_set else "–",
        "under capacity": v.under.verdict,
        "under: p": p_text(v.under),
        "under: effect [CI]": effect_text(v.under),
        "CI level": f"{100 * (1 - v.alpha):g} %",
        "trials": v.n_trials,
        "seeds": v.n_seeds,
        "why": v.over.reason,
    }


def _fixed_row(label: str, t: H.FixedDimTest) -> dict[str, Any]:
    p = "–" if not math.isfinite(t.p_value) else f"p {H.format_p_clause(t.p_value)}"
    effect = "–"
    if math.isfinite(t.effect):
        effect = f"{t.effect:+.3f} [{t.effect_ci[0]:+.3f}, {t.effect_ci[1]:+.3f}]"
    return {
        "data set": t.dataset,
        "model": t.model,
        "latent_dim": "–" if t.latent_dim is None else t.latent_dim,
        "run": label,
        "knob": t.knob,
        "n": t.n,
        "best level": t.best_level or "–",
        f"AUC vs the weakest level [{100 * (1 - t.alpha):g} % CI]": effect,
        "p": p,
        "verdict": t.verdict,
        "why": t.reason,
    }


def _with_badges(df: pd.DataFrame, cols: Sequence[str]) -> str:
    """table_html with the verdict columns as badges."""
    text = table_html(df)
    for col in cols:
        for verdict in df.get(col, pd.Series(dtype=str)).unique():
            cell = f"<td>{esc(verdict)}</td>"
            text = text.replace(cell, f"<td>{badge(str(verdict))}</td>")
    return text


def _verdicts_table(df: pd.DataFrame) -> str:
    """The verdict rows grouped by stratum, each test as a badge with its p and effect."""
    head = (
        "<tr><th>stratum</th><th>run</th><th>headline (inverted U)</th>"
        "<th>d* {within reach}</th><th>over capacity: AUC(d*) − AUC(max d)</th>"
        "<th>under capacity: AUC(d*) − AUC(min d)</th><th>trials (seeds)</th>"
        "<th>why</th></tr>"
    )
    rows, last = [], None
    for row in df.to_dict("records"):
        best = "–" if row["d*"] == "–" else f"<b>{esc(row['d*'])}</b>"
        if row["within reach"] != "–":
            best += f" {{{esc(row['within reach'])}}}"
        head_cell = f"{badge(row['verdict'])} <span class='small'>{esc(row['headline p'])}</span>"
        over = f"{badge(row['over capacity'])} <span class='small'>{esc(row['p'])}; "
        over += f"{esc(row['effect [CI]'])} ({esc(row['CI level'])})</span>"
        under = f"{badge(row['under capacity'])} <span class='small'>{esc(row['under: p'])}; "
        under += f"{esc(row['under: effect [CI]'])} ({esc(row['CI level'])})</span>"
        stratum = "" if row["stratum"] == last else f"<b>{esc(row['stratum'])}</b>"
        last = row["stratum"]
        rows.append(
            f"<tr><td>{stratum}</td><td>{esc(row['run'])}</td><td>{head_cell}</td><td>{best}</td>"
            f"<td>{over}</td>"
            f"<td>{under}</td><td class='num'>{row['trials']} ({row['seeds']})</td>"
            f"<td class='reason'>{esc(row['why'])}</td></tr>"
        )
    return (
        f"<div class='tablewrap'><table class='data glance'><thead>{head}</thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def render(c: Comparison) -> str:
    """The page: header, the curves, the verdicts, the fixed-latent_dim tests and the
    differences, in the report's template style."""
    page = Page()
    sections = []
    try:
        plot = compare_figures.curves(c.labels, c.contexts())
        body = page.figure(plot) + "".join(note(esc(n)) for n in plot.notes)
    except figures.NotAvailable as exc:
        body = na(exc.what, exc.why)
    sections.append(("curves", "AUC against latent dimension", body))
    verdicts = c.verdicts()
    body = (
        _verdicts_table(verdicts)
        if len(verdicts)
        else na("Verdicts", "no run has a stratum with completed trials")
    )
    sections.append(("verdicts", "Verdicts side by side", VERDICTS_LEAD + body))
    fixed = c.fixed_latent_dim_tests()
    body = _with_badges(fixed, ["verdict"]) if len(fixed) else na("Tests", "no completed trials")
    sections.append(("fixed", "Entropy at fixed latent dimension", body))
    sections.append(("differences", "What differs between the runs", _differences(c)))
    return template("compare.html").render(
        labels=c.labels,
        colours=[compare_figures.run_colour(i) for i in range(len(c.labels))],
        css=Markup(_package_text("page.css")),
        plotly_js=Markup(get_plotlyjs()),
        n_figures=page.n_figures,
        sections=[(a, t, Markup(b)) for a, t, b in sections],
        alpha=f"{c.options.alpha:g}",
        generated=time.strftime("%Y-%m-%d %H:%M:%S"),
    )


VERDICTS_LEAD = note(
    "Each run's own verdicts, as its report gives them (same α, same tests): the "
    "headline is the paper's inverted U (supported when both drops are), the "
    "over-capacity test compares AUC at d* with the largest latent_dim, the "
    "under-capacity test with the smallest; intervals are simultaneous at level 1 − α. "
    "No d* is shown where the capacity test was not carried out."
)


def _differences(c: Comparison) -> str:
    diff = c.differences()
    parts = ["<h3>space.yaml</h3>"]
    if len(diff):
        parts.append(table_html(diff))
    else:
        parts.append(note("The runs' space.yaml files hold the same settings."))
    parts.append(_unified_diffs(c))
    parts.append("<h3>Machine, versions, durations</h3>" + table_html(c.facts()))
    return "".join(parts)


def _unified_diffs(c: Comparison) -> str:
    """The text diff of each run's space.yaml against the first run's, folded away."""
    first = (c.runs[0].space_text or "").splitlines()
    out = []
    for label, run in zip(c.labels[1:], c.runs[1:]):
        lines = difflib.unified_diff(
            first, (run.space_text or "").splitlines(), c.labels[0], label, lineterm=""
        )
        text = "\n".join(lines) or "(identical)"
        out.append(
            f"<details><summary>space.yaml: {esc(c.labels[0])} → {esc(label)}</summary>"
            f"<pre>{esc(text)}</pre></details>"
        )
    return "".join(out)
