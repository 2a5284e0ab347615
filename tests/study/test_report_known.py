"""The report's "Known answer" section: drawn only when trials carry ``known_dim``, its
values are the verdict records' and the trials', and the rank correlation is Spearman's."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
from scipy.stats import spearmanr

from study.report import figures, load_run, write_report
from study.report.figures.known import known_rows, rank_correlation

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import tests.helpers.synthetic as synthetic  # noqa: E402

FAST = dict(n_boot=200, n_sim=2000)
DATASETS = ("known-a", "known-b", "known-c", "known-d")


def _with_known_dim(original):
    """``synthetic_records`` whose final record carries ``known_dim`` = the data set's
    peak of AUC (4, 8, 16, 32 for the four data sets), as the phantom's records do."""

    def records(rng, config, peak, *args, **kwargs):
        out, wall_s = original(rng, config, peak, *args, **kwargs)
        out[-1]["known_dim"] = peak
        return out, wall_s

    return records


@pytest.fixture(scope="module")
def known_run(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic, "synthetic_records", _with_known_dim(synthetic.synthetic_records))
        return synthetic.make_synthetic_run(
            tmp_path_factory.mktemp("runs") / "known", datasets=DATASETS, seeds=(0, 1)
        )


@pytest.fixture(scope="module")
def known_text(known_run) -> str:
    return write_report(known_run, **FAST).read_text(encoding="utf-8")


def test_known_dim_is_a_column_of_the_trials_table(known_run):
    run = load_run(known_run)
    assert "known_dim" in run.trials.columns
    per = run.trials.groupby("dataset")["known_dim"].agg(["min", "max"])
    assert per["min"].tolist() == per["max"].tolist() == [4, 8, 16, 32]


def test_section_shows_each_data_set_with_the_verdicts_values(known_run, known_text):
    assert known_text.index("<h2>Verdicts</h2>") < known_text.index("<h2>Known answer</h2>")
    start = known_text.index("<h2>Known answer</h2>")
    text = known_text[start : known_text.index("</section>", start)]
    run = load_run(known_run)
    verdicts = {v.stratum: v for v in run.verdicts(**FAST)}
    ctx = run.context(**FAST)
    rows = known_rows(ctx)
    assert [r.stratum for r in rows] == [f"{d}/ae" for d in DATASETS]
    for r in rows:
        v = verdicts[r.stratum]
        assert r.best == v.best_latent_dim and r.best_set == tuple(v.best_set)
        assert r.verdict == v.over.verdict
        elbow = [p.predicted for p in v.predictions if "elbow" in p.method]
        assert [r.elbow] == elbow
        reach = ", ".join(str(d) for d in r.best_set)
        row = re.search(rf"<tr><td>{re.escape(r.stratum)}</td>.*?</tr>", text).group(0)
        assert f"<td class='num'>{int(r.known_dim)}</td>" in row and f"<td>{reach}</td>" in row
    rho = spearmanr([r.known_dim for r in rows], [r.best for r in rows]).statistic
    assert f"ρ = {rho:+.2f} (n = 4)" in text
    # the figure is on the page and passes Plotly's validation
    assert "known_answer" in run.figures(**FAST)
    figures.to_figure(figures.build(ctx, "known_answer"))


def test_section_and_figure_absent_without_known_dim(tmp_path):
    run_dir = synthetic.make_synthetic_run(tmp_path / "plain", datasets=("a", "b"), seeds=(0, 1))
    text = write_report(run_dir, **FAST).read_text(encoding="utf-8")
    assert "Known answer" not in text and 'href="#known"' not in text
    run = load_run(run_dir)
    assert "known_answer" not in run.figures(**FAST)
    with pytest.raises(figures.NotAvailable, match="known_dim"):
        figures.build(run.context(**FAST), "known_answer")


def test_rank_correlation_needs_three_data_sets_and_variation():
    rho, n, why = rank_correlation([4, 8, 16, 32], [4, 8, 16, 32])
    assert rho == pytest.approx(1.0) and n == 4 and why == ""
    rho, n, _ = rank_correlation([4, 8, 16, 32], [32, 16, 8, 4])
    assert rho == pytest.approx(-1.0)
    # missing predictions are left out, not ranked
    rho, n, why = rank_correlation([4, 8, 16, 32], [4, None, float("nan"), 8])
    assert math.isnan(rho) and n == 2 and "needs 3 or more" in why
    rho, n, why = rank_correlation([4, 8, 16], [8, 8, 8])
    assert math.isnan(rho) and n == 3 and "same for every data set" in why
