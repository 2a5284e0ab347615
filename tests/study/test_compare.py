"""Comparing runs: ``study.compare`` and ``ae4ad-study compare`` on synthetic run folders
(written through ``study.results``): curves per stratum with one trace per run, the
runs' own verdicts side by side, what differs between them, and one-line errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

import study
from study.cli import main
from study.report import load_run
from study.report.compare import CompareError, compare, flatten
from study.report.sections.verdicts import effect_text, p_text

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from tests.helpers.synthetic import make_synthetic_run  # noqa: E402

FAST = dict(n_boot=200, n_sim=1000)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two runs sharing phantom-k6/ae; each has a stratum the other lacks."""
    root = tmp_path_factory.mktemp("runs")
    a = make_synthetic_run(
        root / "latent", datasets=("phantom-k6", "RSNA"), latent_dims=(1, 2, 4, 8, 16, 32),
        seeds=(0, 1, 2), examples=False,
    )  # fmt: skip
    b = make_synthetic_run(
        root / "entropy", datasets=("phantom-k6", "BraTS"), latent_dims=(2, 4, 8, 16, 32, 64),
        seeds=(0, 1), examples=False, seed=3,
    )  # fmt: skip
    return a, b


@pytest.fixture(scope="module")
def comparison(runs):
    return compare(runs, **FAST)


def test_one_panel_per_stratum_and_one_curve_per_run(comparison):
    fig = comparison.figure()
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:3] == ["phantom-k6/ae", "RSNA/ae (latent only)", "BraTS/ae (entropy only)"]
    curves = [t for t in fig.data if t.mode == "lines+markers"]
    shared = [t for t in curves if t.xaxis == "x"]
    assert sorted(t.name for t in shared) == ["entropy", "latent"]
    assert {t.name for t in curves if t.xaxis == "x2"} == {"latent"}
    assert {t.name for t in curves if t.xaxis == "x3"} == {"entropy"}
    assert [t.name for t in curves if t.showlegend] == ["latent", "entropy"]


def test_curves_are_the_runs_own_means_over_seeds(runs, comparison):
    fig = comparison.figure()
    trials = load_run(runs[1]).trials
    k6 = trials[trials["dataset"] == "phantom-k6"]
    mean = k6.groupby("latent_dim")["auc"].mean()
    sd = k6.groupby("latent_dim")["auc"].std()
    trace = next(t for t in fig.data if t.name == "entropy" and t.xaxis == "x")
    assert list(trace.x) == list(mean.index)
    assert trace.y == pytest.approx(mean.to_numpy(), abs=1e-5)
    assert trace.error_y.array == pytest.approx(sd.to_numpy(), abs=1e-5)


def test_verdict_rows_are_the_runs_own_verdicts(runs, comparison):
    table = comparison.verdicts()
    assert list(table["stratum"]) == [
        "phantom-k6/ae", "phantom-k6/ae", "RSNA/ae", "BraTS/ae",
    ]  # fmt: skip
    assert list(table["run"]) == ["latent", "entropy", "latent", "entropy"]
    for run_dir, label in zip(runs, ("latent", "entropy")):
        for v in load_run(run_dir).verdicts(**FAST):
            row = table[(table["run"] == label) & (table["stratum"] == v.stratum)].iloc[0]
            assert row["verdict"] == v.verdict
            assert row["over capacity"] == v.over.verdict
            assert row["p"] == p_text(v.over)
            assert row["effect [CI]"] == effect_text(v.over)
            assert row["CI level"] == "95 %"
            assert row["d*"] == v.best_latent_dim
            assert row["within reach"] == ", ".join(map(str, v.best_set))


def test_not_tested_rows_show_no_best_latent_dim(tmp_path, runs):
    single = make_synthetic_run(
        tmp_path / "single", datasets=("phantom-k6",), latent_dims=(8,), seeds=(0, 1),
        examples=False,
    )  # fmt: skip
    table = compare([runs[0], single], **FAST).verdicts()
    row = table[table["run"] == "single"].iloc[0]
    assert row["verdict"] == "not tested"
    assert row["d*"] == "–" and row["within reach"] == "–"


def test_differences_list_only_the_settings_that_differ(comparison):
    diff = comparison.differences().set_index("key")
    assert diff.loc["seeds", "latent"] == "[0, 1, 2]"
    assert diff.loc["seeds", "entropy"] == "[0, 1]"
    assert diff.loc["datasets[RSNA].name", "entropy"] == "–"
    assert diff.loc["models[ae].params.latent_dim", "entropy"] == "[2, 4, 8, 16, 32, 64]"
    assert "training.epochs" not in diff.index and "search.type" not in diff.index


def test_facts_give_machine_versions_and_durations(comparison):
    facts = comparison.facts().set_index("")
    assert facts.loc["package torch", "latent"] == "2.13"
    assert facts.loc["package torch", "differs"] == ""
    assert facts.loc["wall time (sessions)", "entropy"] == "2.00 h"
    assert facts.loc["trials (completed of all)", "differs"] == "yes"
    assert facts.loc["trials (completed of all)", "latent"] == "36 of 36"


def test_flatten_keys_list_items_by_label():
    assert flatten({"a": {"b": [1, 2]}, "models": [{"name": "ae"}, {"name": "vae"}]}) == {
        "a.b": "[1, 2]",
        "models[ae].name": "ae",
        "models[vae].name": "vae",
    }


def test_page_is_self_contained(comparison, tmp_path):
    out = comparison.write(tmp_path / "compare.html")
    html = out.read_text(encoding="utf-8")
    assert html.count('class="plotly-graph-div"') == 1
    assert '<meta name="ae4ad-figures" content="1">' in html
    assert not re.search(r"<script[^>]+src=", html)  # plotly.js embedded, nothing fetched
    for words in ("Verdicts side by side", "What differs between the runs", "package torch"):
        assert words in html
    spec = re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*', html)
    data, _ = json.JSONDecoder().raw_decode(html, spec.end())
    assert {t["name"] for t in data if t.get("showlegend")} == {"latent", "entropy"}


def test_notebook_api(runs):
    comparison = study.compare([load_run(runs[0]), str(runs[1])], **FAST)
    assert comparison.labels == ["latent", "entropy"]


def test_runs_of_the_same_name_are_labelled_by_folder(tmp_path, runs):
    other = make_synthetic_run(
        tmp_path / "elsewhere" / "latent", datasets=("RSNA",), latent_dims=(2, 4, 8), seeds=(0,),
        examples=False,
    )  # fmt: skip
    assert compare([runs[0], other], **FAST).labels == [str(runs[0]), str(other)]


def test_cli_writes_the_page(runs, tmp_path, capsys):
    out = tmp_path / "cmp.html"
    assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    assert out.is_file() and "entropy" in out.read_text(encoding="utf-8")
    assert f"comparison: {out}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("one", "compare needs at least 2 run folders, got 1"),
        ("missing", "no such folder"),
        ("not-a-run", "not a run folder (no trials.parquet in it)"),
        ("twice", "the same run folder given twice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(which, expected, runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = {
        "one": [str(runs[0])],
        "missing": [str(runs[0]), str(tmp_path / "nowhere")],
        "not-a-run": [str(runs[0]), str(tmp_path / "empty")],
        "twice": [str(runs[0]), str(runs[0])],
    }[which]
    assert main(["compare", *argv, "--out", str(tmp_path / "c.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "c.html").exists()
    with pytest.raises(CompareError, match=re.escape(expected)):
        compare(argv)


def test_space_changes_show_in_the_differences(tmp_path, runs):
    copy = make_synthetic_run(
        tmp_path / "latent-lr", datasets=("phantom-k6", "RSNA"), latent_dims=(1, 2, 4, 8, 16, 32),
        seeds=(0, 1, 2), examples=False,
    )  # fmt: skip
    space = yaml.safe_load((copy / "space.yaml").read_text())
    space["training"]["lr"] = 3e-4
    (copy / "space.yaml").write_text(yaml.safe_dump(space))
    diff = compare([runs[0], copy], **FAST).differences().set_index("key")
    assert diff.loc["training.lr"].tolist() == ["0.001", "0.0003"]


def test_a_searched_run_is_drawn_as_points(tmp_path, runs):
    searched = make_synthetic_run(
        tmp_path / "optuna", datasets=("phantom-k6",), latent_dims=(3, 5, 27, 119), seeds=(0,),
        examples=False, optuna_db=True,
    )  # fmt: skip
    c = compare([runs[0], searched], **FAST)
    fig = c.figure()
    modes = {t.name: t.mode for t in fig.data if t.xaxis == "x" and t.showlegend}
    assert modes == {"latent": "lines+markers", "optuna": "markers"}
    assert list(fig.layout.xaxis.tickvals) == [1, 2, 4, 8, 16, 32, 64, 128]
    html = c.html()
    assert "optuna: searched by Optuna, drawn as points without lines" in html


def test_fixed_latent_dim_rows_are_the_runs_own_tests(runs, monkeypatch):
    """A run with an entropy knob at a fixed latent_dim: each per-model test of the run
    is one row with its knob, best level, effect at level 1 - alpha and verdict."""
    import numpy as np
    import pandas as pd

    from study import hypothesis as H

    rng = np.random.default_rng(0)
    level = np.repeat(np.arange(4), 3)
    trials = pd.DataFrame(
        dict(dataset="phantom-k6", model="vae", latent_dim=64, seed=np.tile(range(3), 4),
             kl_weight=10.0 ** (level - 5), status="completed",
             auc=0.7 + 0.03 * (level == 1) - 0.1 * (level == 3) + 0.005 * rng.normal(size=12),
             latent_entropy_gaussian=8.0 - level + 0.1 * rng.normal(size=12))
    )  # fmt: skip
    tests = H.fixed_latent_dim_tests(trials, n_sim=500)
    run_type = type(load_run(runs[0]))
    monkeypatch.setattr(run_type, "fixed_latent_dim_tests", lambda self, **kw: tests)
    comparison = compare(runs, **FAST)
    table = comparison.fixed_latent_dim_tests()
    assert len(table) == 2 * len(tests) and list(table["run"]) == ["latent", "entropy"]
    [t] = tests
    row = table.iloc[0]
    assert row["model"] == "vae" and row["knob"] == t.knob and row["verdict"] == t.verdict
    assert row["best level"] == t.best_level
    assert row["AUC vs the weakest level [95 % CI]"].startswith(f"{t.effect:+.3f} [")
    assert "Entropy at fixed latent dimension" in comparison.html()
