"""The command line: dry runs without Ray, one-line errors with exit code 2, refusing to
overwrite results, and rebuilding a report from a copied run folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import ae4ad
from study.cli import main
from study.results import RunTables, TrialTiming, update_meta
from study.space import fit_config, grid_trials, load_space, trial_id

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = {
    "image_size": 32,
    "n_train": 64,
    "n_val": 16,
    "n_test_normal": 16,
    "n_test_abnormal": 16,
}


def tiny_space(tmp_path: Path, **changes) -> Path:
    body = {
        "name": "tiny",
        "storage_path": str(tmp_path / "runs"),
        "datasets": [{"name": "phantom", "params": TINY_DATA}],
        "models": [{"name": "ae", "params": {"latent_dim": [2, 4], "num_blocks": 3,
                                             "hidden_dim": 32}}],
        "training": {"epochs": 1, "eval_every": 1},
        "seeds": [0],
        **changes,
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def finished_run(space_path: Path) -> Path:
    """A run folder as a finished study leaves it, trained with ae4ad.fit directly."""
    space = load_space(str(space_path))
    data = ae4ad.load_dataset("phantom", **TINY_DATA)
    tables = RunTables(space.run_dir)
    for config in grid_trials(space):
        records = list(ae4ad.fit({**fit_config(config), "threads": 1}, dataset=data))
        tables.add_trial(
            config, records, trial_id=trial_id(config), study=space.name,
            timing=TrialTiming(hostname="test", node_ip="127.0.0.1", session=1),
        )  # fmt: skip
    tables.flush()
    (space.run_dir / "space.yaml").write_text(yaml.safe_dump(space.to_dict()))
    update_meta(space.run_dir, study=space.name, status="finished")
    return space.run_dir


def test_dry_run_prints_the_plan_without_starting_ray():
    code = (
        "import sys; from study.cli import main; rc = main(['--space', 'smoke.yaml', "
        "'--dry-run', '--override', 'training.epochs=3']); "
        "print('RAY_IMPORTED', 'ray' in sys.modules); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "study smoke: 2 trials (grid) in 1 stratum" in out
    assert "resources per trial: cpu=1" in out
    assert "cost: 6 trial-epochs" in out  # 2 trials x 3 epochs
    assert "RAY_IMPORTED False" in out


def test_bad_space_is_one_line_on_stderr_and_exit_2(tmp_path, capsys):
    path = tiny_space(tmp_path)
    text = path.read_text().replace("latent_dim:", "latnt_dim:")
    path.write_text(text)
    assert main(["--space", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: tiny.yaml: models[0].params.latnt_dim")
    assert "did you mean 'latent_dim'" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--space", "no-such-space.yaml"], "no-such-space.yaml: no such file"),
        (["--space", "smoke", "--override", "training.epochs=ten"], "training.epochs"),
        (["--space", "smoke", "--override", "nonsense"], "expected KEY=VALUE"),
        ([], "--space is required"),
    ],
)
def test_user_mistakes_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_existing_results_need_resume_or_another_name(tmp_path, capsys):
    path = tiny_space(tmp_path)
    space = load_space(str(path))
    tables = RunTables(space.run_dir)
    config = grid_trials(space)[0]
    tables.add_trial(config, [], trial_id=trial_id(config), study="tiny", error="boom")
    tables.flush()
    before = (space.run_dir / "trials.parquet").read_bytes()
    assert main(["--space", str(path)]) == 2
    err = capsys.readouterr().err
    assert "already holds results" in err and "--resume" in err and "--override name=" in err
    assert (space.run_dir / "trials.parquet").read_bytes() == before
    # the dry run says so too, and another name is a fresh run folder
    assert main(["--space", str(path), "--dry-run"]) == 0
    assert "already holds 1 finished trial" in capsys.readouterr().out
    assert main(["--space", str(path), "--dry-run", "--override", "name=tiny2"]) == 0
    assert "runs/tiny2" in capsys.readouterr().out


def test_report_only_rebuilds_the_report_of_a_copied_run(tmp_path, capsys):
    run_dir = finished_run(tiny_space(tmp_path))
    copy = tmp_path / "copied" / "tiny"
    shutil.copytree(run_dir, copy)
    assert not list(copy.glob("report*.html"))
    assert main(["--report-only", str(copy)]) == 0
    out = capsys.readouterr().out
    reports = [p for p in copy.iterdir() if p.suffix == ".html"]
    assert reports and f"report: {reports[0]}" in out
    assert reports[0].stat().st_size > 1000
    assert json.loads((copy / "meta.json").read_text())["status"] == "finished"
    # a folder without tables is a user mistake
    assert main(["--report-only", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_report_only_prints_the_verdict_lines_at_the_chosen_alpha(tmp_path, capsys):
    from tests.helpers.synthetic import make_synthetic_run

    run = make_synthetic_run(tmp_path / "syn", datasets=("toy",), seeds=(0, 1))
    assert main(["--report-only", str(run), "--alpha", "0.01"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("verdict toy/ae: "))
    word = line.removeprefix("verdict toy/ae: ").split(" (inverted U: over- and under-capacity")[0]
    assert word in {"supported", "over-capacity drop only", "under-capacity drop only"}, line
    assert "p " in line and "alpha 0.01" in line and "; d* = " in line
    assert "; over capacity " in line and ": AUC d=" in line and "; under capacity " in line
    assert "entropy at fixed latent_dim" not in out  # no knob varies in this run
    table = pd.read_csv(run / "verdicts.csv")
    assert set(table["alpha"]) == {0.01}
    assert main(["--report-only", str(run), "--alpha", "1.5"]) == 2
    assert "--alpha: expected a number in (0, 1), got 1.5" in capsys.readouterr().err
