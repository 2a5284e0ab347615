"""The HTML report: content, one plotly.js copy, partial banner, missing optional tables."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from study import hypothesis as H
from study import stats as S
from study.report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from tests.helpers.synthetic import make_synthetic_run  # noqa: E402

FAST = dict(n_boot=300, n_sim=2000)
PLOTLY_SIGNATURE = "plotly.js v"  # the banner comment at the top of plotly.min.js


def _figures(text: str) -> int:
    return int(re.search(r'<meta name="ae4ad-figures" content="(\d+)">', text).group(1))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    # 2 datasets x 8 latent_dims x 3 seeds, inverted-U AUC, entropy rising with latent_dim
    return make_synthetic_run(
        tmp_path_factory.mktemp("runs") / "latent",
        datasets=("phantom-k6", "RSNA"),
        extra_statuses={"early-stopped": 2, "errored": 1},
    )


@pytest.fixture(scope="module")
def report_text(run_dir) -> str:
    path = write_report(run_dir, **FAST)
    assert path == run_dir / "report.html"
    return path.read_text(encoding="utf-8")


def test_report_has_verdicts_and_one_plotly_copy(run_dir, report_text):
    text = report_text
    assert text.startswith("<!DOCTYPE html>")
    assert text.count(PLOTLY_SIGNATURE) == 1
    # plotly.js sits in the head, before any figure
    assert text.index(PLOTLY_SIGNATURE) < text.index("</head>") < text.index("Plotly.newPlot")
    n = _figures(text)
    assert n >= 7
    assert text.count("Plotly.newPlot(") == n
    assert text.count('class="plotly-graph-div"') == n
    # the verdict in words and numbers: the test, alpha, p (Holm), the effect, the data used
    for ds in ("phantom-k6", "RSNA"):
        assert f'{ds} <span class="muted">/ ae</span>' in text
        assert f"{ds}/ae: supported: inverted U: over- and under-capacity drops" in text
        assert "over-capacity drop: studentised max-t vs the largest latent_dim" in text
    assert text.count('<span class="badge supported">supported</span></h3>') == 2
    assert "(Holm " in text and "α = 0.05" in text
    assert "best latent_dim d* = " in text and "not distinguishable from d* (95 %)" in text
    assert "AUC effect [95 % CI]" in text  # the level used (alpha 0.05)
    # the paper's Table 1 tested the same way, beside the study's RSNA verdict
    assert "The paper's own Table 1, tested the same way" in text
    paper = text[text.index("tested the same way") :]
    row = paper[paper.index("<tr><td>RSNA</td>") :][:400]
    assert "<span class=\"badge supported\">supported</span> <span class='small'>p " in row
    assert "<td>4 {4, 8}</td>" in row  # the paper's d* and the latent_dims within reach
    assert "uncertainty from seeds and test images: DeLong covariance over" in text
    assert "image intrinsic dimension (TwoNN, training images)" in text
    assert "elbow of the validation reconstruction error" in text
    # the branch correlations are descriptions without a badge
    assert "Descriptions (no verdict" in text
    # the fixed-latent_dim section and the verdicts table beside the report
    # (no entropy knob varies in this run: the section says so)
    assert "<h2>Entropy at fixed latent dimension</h2>" in text
    assert "no model whose entropy knob varies at a fixed latent_dim" in text
    table = pd.read_csv(run_dir / "verdicts.csv")
    assert set(table["verdict"]) <= set(H.HEADLINES)
    auc = table[table["metric"] == "auc"]
    assert (auc.loc[auc["branch"] == "inverted U", "verdict"] == "supported").all()
    assert (auc.loc[auc["branch"] == "over-capacity", "verdict"] == "supported").all()
    # no partial banner for a finished study whose trials all finished
    assert "Partial results" not in text
    # no leftover temporary files
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


def test_report_sections_and_labels(report_text):
    text = report_text
    for title in (
        "1. Detection vs latent dimension",
        "2. Latent entropy vs AUC",
        "3. Reconstruction error vs latent dimension",
        "4. Pixel-level segmentation vs latent dimension",
        "5. Methods comparison",
        "6. Search diagnostics",
        "7. Examples",
        "8. Run facts",
    ):
        assert f"<h2>{title}</h2>" in text
    assert "latent dimension d (log2)" in text
    assert "mean squared error" in text
    # the entropy dropdown offers every estimator present
    for col in (
        "latent_entropy_gaussian",
        "latent_entropy_knn",
        "latent_effective_rank",
        "latent_participation_ratio",
        "latent_intrinsic_dim",
    ):
        assert f'"label":"{col}"' in text
    # hover text carries the trial's config
    assert "trial_id: " in text and "lr: 0.001" in text and "seed: " in text
    # the paper's Table 1 numbers beside the data set labelled RSNA, not beside the phantom
    assert "paper (AE)" in text and "72.9 ± 2.1" in text
    assert "paper: RSNA (AE)" in text
    # early-stopped and errored trials are listed with their error
    assert "early-stopped" in text and "CUDA out of memory" in text
    # run facts from meta.json and space.yaml
    assert "torch: 2.13" in text and "type: grid" in text


def test_table1_marks_best_bold_and_second_underlined(report_text):
    t1 = report_text[report_text.index("Table 1 format") :]
    t1 = t1[: t1.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", t1)
    auc_rows = [r for r in rows if "<td>AUC</td>" in r and "paper" not in r]
    assert len(auc_rows) == 2
    for row in auc_rows:
        values = [float(m) for m in re.findall(r"(\d+\.\d) ±", row)]
        bold = float(re.search(r"<b>(\d+\.\d)", row).group(1))
        underlined = float(re.search(r"<u>(\d+\.\d)", row).group(1))
        assert bold == max(values)
        assert underlined == sorted(values)[-2]


def test_partial_banner_when_running(tmp_path):
    run = make_synthetic_run(
        tmp_path / "live",
        datasets=("toy",),
        latent_dims=(2, 4, 8, 16),
        seeds=(0, 1),
        status="running",
    )
    text = write_report(run, **FAST).read_text(encoding="utf-8")
    assert "Partial results" in text and "“running”" in text

    # a finished meta.json but a trial that has not finished also counts as partial
    meta = json.loads((run / "meta.json").read_text())
    meta["status"] = "finished"
    (run / "meta.json").write_text(json.dumps(meta))
    trials = pd.read_parquet(run / "trials.parquet")
    trials.loc[0, "status"] = "running"
    trials.to_parquet(run / "trials.parquet")
    text = write_report(run, **FAST).read_text(encoding="utf-8")
    assert "Partial results" in text and "1 of 8 trials have not finished" in text

    meta["status"] = "interrupted"
    (run / "meta.json").write_text(json.dumps(meta))
    assert "“interrupted”" in write_report(run, **FAST).read_text(encoding="utf-8")


def test_missing_optional_files_say_not_available(tmp_path):
    run = make_synthetic_run(
        tmp_path / "bare",
        datasets=("toy",),
        latent_dims=(2, 4, 8, 16),
        seeds=(0, 1),
        history=False,
        scores=False,
        examples=False,
    )
    (run / "meta.json").unlink()
    (run / "space.yaml").unlink()
    text = write_report(run, **FAST).read_text(encoding="utf-8")
    for what in (
        "Learning curves: not available (history.parquet is missing)",
        "Example reconstructions: not available (examples.json is missing)",
        "Score distributions: not available (scores.parquet is missing)",
        "Run metadata: not available (meta.json is missing)",
        "Resolved search space: not available (space.yaml is missing)",
        "Optuna optimisation history and parameter importances: not available",
    ):
        assert what in text
    # d* = 8 of 2..16: the small over-capacity drop is not shown, so no inverted U
    assert re.search(r"toy/ae: (not shown|under-capacity drop only): inverted U", text)
    assert text.count(PLOTLY_SIGNATURE) == 1
    assert "uncertainty from seeds: seeds only (per-image scores not given)" in text


def test_unreadable_table_is_a_note_not_an_error(tmp_path):
    run = make_synthetic_run(
        tmp_path / "broken", datasets=("toy",), latent_dims=(2, 4, 8), seeds=(0,)
    )
    (run / "history.parquet").write_text("not parquet")
    (run / "examples.json").write_text("{broken")
    text = write_report(run, **FAST).read_text(encoding="utf-8")
    assert "history.parquet could not be read" in text
    assert "examples.json could not be read" in text


def test_no_trials_yet_and_missing_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    text = write_report(empty, **FAST).read_text(encoding="utf-8")
    assert "Hypothesis tests: not available (trials.parquet is missing)" in text
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        write_report(tmp_path / "nope")
    with pytest.raises(ValueError, match="latent_entropy_gaussian"):
        write_report(empty, entropy_col="entropy")


def test_one_seed_and_learning_curve_cap(tmp_path):
    run = make_synthetic_run(tmp_path / "one", datasets=("toy",), seeds=(0,))
    text = write_report(run, max_curves=5, **FAST).read_text(encoding="utf-8")
    # one seed: the test-set level (per-image scores) is the only source of uncertainty
    assert "8 completed trials, 1 seed, " in text
    assert "uncertainty from seeds and test images" in text
    (run / "scores.parquet").unlink()
    text = write_report(run, max_curves=5, **FAST).read_text(encoding="utf-8")
    assert "not tested: one trial per latent_dim (one seed) and no per-image scores" in text
    assert "5 of 8 trials shown (a fixed random subset)." in text


def test_methods_table_and_optuna_diagnostics(tmp_path):
    run = make_synthetic_run(
        tmp_path / "methods",
        datasets=("BrainTumor",),
        models=("ae", "vae"),
        latent_dims=(4, 8, 16, 32),
        seeds=(0, 1),
        optuna_db=True,
    )
    text = write_report(run, **FAST).read_text(encoding="utf-8")
    t2 = text[text.index("Table 2 format") :]
    t2 = t2[: t2.index("</table>")]
    assert "ae (d = 16)" in t2 and "vae (best d)" in t2
    assert "paper: memae (d = 16)" in t2 and "82.6 ± 0.6" in t2  # the paper's MemAE AUC
    assert "paper: AE, d_opt" in t2
    assert "Optuna search per stratum" in text
    assert "importance (fANOVA)" in text
    assert "BrainTumor\\u002fvae: optimisation history" in text  # "/" is escaped in JSON


def test_200_trial_report_is_under_10_mb(tmp_path):
    run = make_synthetic_run(
        tmp_path / "big",
        datasets=("a", "b", "c", "d", "e"),
        seeds=range(5),
        extra_statuses={"early-stopped": 10},
    )
    assert len(pd.read_parquet(run / "trials.parquet")) == 210
    size_mb = write_report(run, **FAST).stat().st_size / 1e6
    assert size_mb < 10, size_mb


def test_every_figure_passes_plotly_validation(tmp_path):
    from study.report import load_run, render_report

    run = make_synthetic_run(
        tmp_path / "valid",
        datasets=("RSNA", "BraTS2021"),
        models=("ae", "memae"),
        latent_dims=(2, 4, 8, 16),
        seeds=(0, 1),
        optuna_db=True,
        extra_statuses={"early-stopped": 1},
    )
    text, n = render_report(load_run(run), validate=True, **FAST)
    assert n == _figures(text) >= 9


def test_odd_tables_still_give_a_report(tmp_path):
    import numpy as np

    run = make_synthetic_run(tmp_path / "odd", datasets=("toy",), latent_dims=(2, 4), seeds=(0,))
    trials = pd.read_parquet(run / "trials.parquet")
    trials.assign(status="errored", auc=np.nan).to_parquet(run / "trials.parquet")
    text = write_report(run, **FAST).read_text(encoding="utf-8")
    assert "toy/ae: not tested: no completed trial: 2 errored" in text
    assert "could not be drawn" not in text
    trials.drop(columns=["latent_dim", "trial_id"]).to_parquet(run / "trials.parquet")
    text = write_report(run, **FAST).read_text(encoding="utf-8")
    assert "could not be drawn" not in text and "Run facts" in text


def test_a_failing_section_becomes_a_note(tmp_path, monkeypatch):
    import study.report as R
    from study.report.sections import recon

    def broken(ctx, page):
        raise RuntimeError("boom")

    monkeypatch.setattr(recon, "section", broken)
    run = make_synthetic_run(tmp_path / "fail", datasets=("toy",), latent_dims=(2, 4, 8))
    text = write_report(run, **FAST).read_text(encoding="utf-8")
    assert "This section could not be drawn: RuntimeError: boom" in text
    assert "<h2>3. Reconstruction error vs latent dimension</h2>" in text
    assert "<h2>8. Run facts</h2>" in text  # the sections after it are still there
    with pytest.raises(RuntimeError, match="boom"):
        R.render_report(R.load_run(run), validate=True, **FAST)


def _page_figures(text: str) -> list[dict]:
    """The data and layout of every figure of a page, in page order."""
    decoder, out = json.JSONDecoder(), []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', text):
        data, end = decoder.raw_decode(text, m.end())
        start = re.compile(r",\s*").match(text, end).end()
        layout, _ = decoder.raw_decode(text, start)
        out.append({"data": data, "layout": layout})
    return out


def test_notebook_api_gives_the_reports_tables_verdicts_and_figures(run_dir, report_text):
    import plotly.graph_objects as go
    from markupsafe import escape

    import study

    run = study.load_run(run_dir)
    for table in (run.trials, run.history, run.scores):
        assert isinstance(table, pd.DataFrame) and len(table)
    assert len(run.trials) == 2 * 8 * 3 + 3 and run.space["name"] == "latent"
    verdicts = run.verdicts(**FAST)
    assert [v.stratum for v in verdicts] == ["phantom-k6/ae", "RSNA/ae"]
    assert all(str(escape(v.headline())) in report_text for v in verdicts)
    assert run.fixed_latent_dim_tests(**FAST) == []  # only the plain AE: no knob

    names = run.figures(**FAST)
    assert names[:4] == [
        "auc_vs_latent_dim",
        "entropy_vs_auc",
        "recon_error_vs_latent_dim",
        "pixel_metrics_vs_latent_dim",
    ]
    assert {"learning_curves", "examples:RSNA/ae", "score_distributions"} <= set(names)
    on_page = _page_figures(report_text)
    assert len(names) == len(on_page) == _figures(report_text)
    for name, shown in zip(names, on_page):
        fig = run.figure(name, **FAST)
        assert isinstance(fig, go.Figure)
        built = json.loads(fig.to_json())  # every figure renders to JSON
        # the very figure of the page: same title, traces, names and values
        assert built["layout"]["title"]["text"] == shown["layout"]["title"]["text"]
        assert [(t["type"], t.get("name")) for t in built["data"]] == [
            (t["type"], t.get("name")) for t in shown["data"]
        ]
    curves = run.figure("auc_vs_latent_dim", **FAST)
    assert [list(t.y) for t in curves.data] == [t["y"] for t in on_page[0]["data"]]
    curves.add_scatter(x=[4], y=[0.5], row=1, col=2)  # a make_subplots grid
    assert curves.data[-1].xaxis == "x2"

    with pytest.raises(KeyError, match="unknown figure 'auc_vs_latnt_dim'"):
        run.figure("auc_vs_latnt_dim")
    with pytest.raises(LookupError, match="no optuna.db: a grid search"):
        run.figure("optuna_history", **FAST)


def test_synthetic_runs_have_the_shapes_of_real_ones():
    """The fixture's trial configs and records have the keys and value types of the
    space's configs and of ae4ad.fit's records: a schema change breaks it here."""
    import numpy as np

    import ae4ad
    from study.space import grid_trials, load_space
    from tests.helpers.synthetic import synthetic_config, synthetic_records

    real_config = grid_trials(load_space("smoke"))[0]
    config = synthetic_config("toy", "ae", 4, 0, epochs=2, eval_every=1, image_size=32)
    assert set(config) == set(real_config)
    data = {"image_size": 32, "n_train": 64, "n_val": 16, "n_test_normal": 8}
    real = list(
        ae4ad.fit(
            {
                "dataset": "phantom",
                "dataset_params": {**data, "n_test_abnormal": 8},
                "model": "ae",
                "model_params": {"latent_dim": 4, "num_blocks": 3, "hidden_dim": 32},
                "epochs": 2,
                "eval_every": 1,
                "threads": 1,
            }
        )
    )
    fake, _ = synthetic_records(
        np.random.default_rng(0), config, peak=4, k=0, with_masks=True, with_examples=True,
        epochs=2, eval_every=1, image_size=32, n_test=16,
    )  # fmt: skip
    for got, want in ((fake[0], real[0]), (fake[-1], real[-1])):
        assert set(got) == set(want)
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}


def test_selection_on_test_data_is_said_at_the_top(tmp_path):
    import yaml

    run = make_synthetic_run(
        tmp_path / "sel", datasets=("toy",), latent_dims=(2, 4, 8), seeds=(0, 1)
    )
    banner = "Selected on test data: early stopping optimised <code>auc</code>"
    assert banner not in write_report(run, **FAST).read_text(encoding="utf-8")  # a grid
    space = yaml.safe_load((run / "space.yaml").read_text())
    for metric, shown in (("auc", True), ("val_auc", False), ("recon_error_val_normal", False)):
        space["scheduler"] = {"type": "asha", "metric": metric}
        (run / "space.yaml").write_text(yaml.safe_dump(space))
        text = write_report(run, **FAST).read_text(encoding="utf-8")
        assert ("Selected on test data" in text) == shown, metric
    space["scheduler"] = {"type": "none"}
    space["search"] = {"type": "optuna"}
    (run / "space.yaml").write_text(yaml.safe_dump(space))
    text = write_report(run, **FAST).read_text(encoding="utf-8")
    assert "Selected on test data: the search optimised <code>auc</code>" in text


def test_selection_on_test_data_follows_the_metric_registry():
    from ae4ad.metrics import METRICS
    from study.report.page import is_test_metric

    for name, metric in METRICS.items():
        assert is_test_metric(name) == metric.on_test, name
    # the latent statistics are measured on the training latents, not on test images
    assert not is_test_metric("latent_entropy_gaussian")
    assert is_test_metric("recon_error_test_normal") and is_test_metric("pixel_auc")
    assert is_test_metric("not_a_registered_metric")  # unknown: assume the worst


def test_metric_labels_and_columns_come_from_the_registry(report_text):
    from ae4ad.metrics import METRICS, get_metric, names
    from study import hypothesis as H
    from study.report.context import SUMMARY_COLUMNS
    from study.report.figures.style import ENTROPY_LABELS, METRIC_LABELS, RECON_SPLITS

    assert list(ENTROPY_LABELS) == list(H.ENTROPY_COLUMNS) == list(names("latent"))
    assert METRIC_LABELS == {name: m.label for name, m in METRICS.items()}
    assert SUMMARY_COLUMNS == tuple(METRICS)
    assert {col for col, *_ in RECON_SPLITS} <= set(names("reconstruction"))
    # the axis titles drawn in the report are the registry's
    assert get_metric("latent_entropy_gaussian").axis_title in report_text
    assert "Gaussian latent entropy (nats, scale-free)" not in report_text


def test_statistics_refuse_a_metric_where_lower_is_better():
    from study import hypothesis as H

    df = pd.DataFrame(
        dict(dataset="toy", model="ae", latent_dim=[2, 2, 4, 4], seed=[0, 1, 0, 1],
             status="completed", train_loss=[0.4, 0.5, 0.2, 0.3], auc=[0.6, 0.7, 0.8, 0.7],
             latent_entropy_gaussian=[1.0, 1.1, 2.0, 2.1])
    )  # fmt: skip
    with pytest.raises(ValueError, match="higher is better; 'train_loss' is better when lower"):
        H.verdicts(df, metric="train_loss", n_sim=100, n_boot=0)
    with pytest.raises(ValueError, match="higher is better"):
        H.fixed_latent_dim_tests(df, metric="dice_threshold", n_perm=100)
    assert len(H.verdicts(df, metric="auc", n_sim=100, n_boot=0)) == 1


def test_a_verdict_per_metric(run_dir, report_text):
    import study

    run = study.load_run(run_dir)
    by = run.metric_verdicts(**FAST)
    pairs = [(v.stratum, v.metric) for v in by]
    assert pairs[:2] == [("phantom-k6/ae", "auc"), ("RSNA/ae", "auc")]
    assert {("RSNA/ae", "pixel_ap"), ("RSNA/ae", "best_dice"), ("phantom-k6/ae", "ap")} <= set(
        pairs
    )
    assert ("phantom-k6/ae", "pixel_ap") not in pairs  # no masks: no pixel verdict
    # one Holm family over strata x metrics, per branch
    raw = H.verdicts_by_metric(run.trials, run.scores, n_sim=FAST["n_sim"], adjust=None)
    assert [v.over.p_adjusted for v in by] == pytest.approx(
        S.holm([v.over.p_value for v in raw]), nan_ok=True
    )
    assert "A verdict per metric" in report_text and "d* {within reach}" in report_text
    table = pd.read_csv(run_dir / "verdicts.csv")
    assert {"auc", "ap", "pixel_ap", "best_dice"} <= set(table["metric"])
    # the console headline stays image AUC: one line per stratum
    from study.report import verdict_lines

    heads = [x for x in verdict_lines(run_dir) if x.startswith("verdict ")]
    assert len(heads) == 2
