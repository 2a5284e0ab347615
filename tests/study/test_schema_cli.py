"""The space schema through the command line: every section rejects unknown keys, a model
that cannot be built for its data set and a data-source parameter that its loader does
not take are caught before anything runs — each as one ``error:`` line and exit code 2."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ae4ad.data
from study.cli import main

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "name": "t",
    "datasets": [{"name": "phantom", "params": {"image_size": 32, "n_train": 64}}],
    "models": [{"name": "ae", "params": {"latent_dim": [2, 4], "num_blocks": 3}}],
    "training": {"epochs": 1},
    "seeds": [0],
}


def write_space(tmp_path: Path, **changes) -> Path:
    body = {"storage_path": str(tmp_path / "runs"), **BASE, **changes}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def run_cli(capsys, path: Path, *extra: str) -> tuple[int, str]:
    code = main(["--space", str(path), *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") <= 1, err  # one line
    return code, err.strip()


def entry(section: str, **changes) -> list[dict]:
    return [{**BASE[section][0], **changes}]


# Each: where the misspelt key goes, and the line the command prints.
UNKNOWN_KEYS = [
    ("top-level", {"seed": [0]}, "seed: unknown key; did you mean 'seeds'?"),
    (
        "datasets[i]",
        {"datasets": entry("datasets", parms={})},
        "datasets[0].parms: unknown key; did you mean 'params'?",
    ),
    (
        "datasets[i].training",
        {"datasets": entry("datasets", training={"epoch": 2})},
        "datasets[0].training.epoch: unknown key; did you mean 'epochs'?",
    ),
    (
        "models[i]",
        {"models": entry("models", lable="x")},
        "models[0].lable: unknown key; did you mean 'label'?",
    ),
    (
        "models[i].params",
        {"models": entry("models", params={"latnt_dim": 4})},
        "models[0].params.latnt_dim: unknown key; did you mean 'latent_dim'?",
    ),
    (
        "param spec",
        {
            "search": {"type": "optuna"},
            "models": entry("models", params={"latent_dim": {"int": [1, 8], "lg": True}}),
        },
        "models[0].params.latent_dim.lg: unknown key; did you mean 'log'?",
    ),
    ("training", {"training": {"epoch": 2}}, "training.epoch: unknown key; did you mean 'epochs'?"),
    (
        "search",
        {"search": {"type": "optuna", "n_trial": 4}},
        "search.n_trial: unknown key; did you mean 'n_trials'?",
    ),
    (
        "scheduler",
        {"scheduler": {"type": "asha", "grace_perod": 3}},
        "scheduler.grace_perod: unknown key; did you mean 'grace_period'?",
    ),
    (
        "resources",
        {"resources": {"gpu_per_trial": 1}},
        "resources.gpu_per_trial: unknown key; did you mean 'gpus_per_trial'?",
    ),
    (
        "failure",
        {"failure": {"max_failure": 1}},
        "failure.max_failure: unknown key; did you mean 'max_failures'?",
    ),
    (
        "logging",
        {"logging": {"tracker": ["mlflow"]}},
        "logging.tracker: unknown key; did you mean 'trackers'?",
    ),
    (
        "logging.mlflow",
        {"logging": {"mlflow": {"experiment_name": "x"}}},
        "logging.mlflow.experiment_name: unknown key; did you mean 'experiment'?",
    ),
    (
        "failure, no close match",
        {"failure": {"retries": 1}},
        "failure.retries: unknown key; allowed: max_failures",
    ),
]


@pytest.mark.parametrize(
    ("changes", "line"), [c[1:] for c in UNKNOWN_KEYS], ids=[c[0] for c in UNKNOWN_KEYS]
)
def test_every_section_rejects_unknown_keys(tmp_path, capsys, changes, line):
    code, err = run_cli(capsys, write_space(tmp_path, **changes), "--dry-run")
    assert (code, err) == (2, f"error: bad.yaml: {line}")


def test_a_typo_in_a_section_exits_2_in_a_fresh_process(tmp_path):
    """The issue's example, as a user runs it: no traceback, one line, exit 2."""
    path = write_space(tmp_path, resources={"gpu_per_trial": 1})
    done = subprocess.run(
        [sys.executable, "run_study.py", "--space", str(path), "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "error: bad.yaml: resources.gpu_per_trial: unknown key; did you mean 'gpus_per_trial'?\n"
    )
    assert done.stdout == ""


@pytest.fixture
def no_ray_run(monkeypatch):
    """Fail the test if the command line gets as far as starting a study."""
    from study import runner

    def refuse(*args, **kwargs):
        raise AssertionError("the study started")

    monkeypatch.setattr(runner, "run_study", refuse)
    monkeypatch.setattr(runner, "prepare_environment", refuse)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_a_model_that_cannot_be_built_for_its_data_exits_2_before_ray(
    tmp_path, capsys, no_ray_run, dry_run
):
    datasets = [{"name": "phantom", "params": {"image_size": 30, "n_train": 64}}]
    path = write_space(tmp_path, datasets=datasets)
    code, err = run_cli(capsys, path, *(["--dry-run"] if dry_run else []))
    assert code == 2
    assert err == (
        "error: bad.yaml: models[0].params: cannot be built for datasets[0] ('phantom', "
        "image_size 30): image_size 30 must be divisible by 2**num_blocks = 8, "
        "got {'latent_dim': 2, 'num_blocks': 3}"
    )


def test_every_model_config_is_checked_not_only_the_first(tmp_path, capsys):
    models = [
        {"name": "ae", "params": {"num_blocks": 3}},
        {"name": "ae", "label": "deep", "params": {"num_blocks": [3, 6]}},  # 2**6 > 32
    ]
    code, err = run_cli(capsys, write_space(tmp_path, models=models), "--dry-run")
    assert code == 2
    assert err.startswith("error: bad.yaml: models[1].params: cannot be built for datasets[0]")
    assert "image_size 32 must be divisible by 2**num_blocks = 64" in err
    assert err.endswith("got {'num_blocks': 6}")


def test_a_data_set_too_small_for_an_optuna_range_end_is_caught(tmp_path, capsys):
    models = [{"name": "ae", "params": {"num_blocks": {"int": [2, 6]}}}]
    path = write_space(tmp_path, models=models, search={"type": "optuna", "n_trials": 2})
    code, err = run_cli(capsys, path, "--dry-run")
    assert code == 2 and "2**num_blocks = 64" in err


def test_dry_run_checks_data_source_params_without_reading_data(tmp_path, capsys, monkeypatch):
    calls = []
    real = ae4ad.data.DATA_SOURCES["phantom"]

    @functools.wraps(real)  # the same signature
    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setitem(ae4ad.data.DATA_SOURCES, "phantom", spy)
    datasets = [{"name": "phantom", "params": {"image_size": 32, "n_trian": 64}}]
    code, err = run_cli(capsys, write_space(tmp_path, datasets=datasets), "--dry-run")
    assert (code, err) == (
        2,
        "error: bad.yaml: datasets[0].params.n_trian: unknown key; did you mean 'n_train'?",
    )
    # the same space with the right name passes the dry run, still without any data read
    datasets[0]["params"] = {"image_size": 32, "n_train": 64}
    code, _ = run_cli(capsys, write_space(tmp_path, datasets=datasets), "--dry-run")
    assert code == 0
    assert calls == []


def test_a_source_whose_loader_takes_kwargs_still_has_its_params_checked(tmp_path, capsys):
    """``load_dataset`` accepts only the named parameters (phantom takes ``**unknown``
    to word its own error); the schema agrees with it."""
    datasets = [{"name": "phantom", "params": {"intrinsic_dims": 3}}]
    code, err = run_cli(capsys, write_space(tmp_path, datasets=datasets), "--dry-run")
    assert code == 2
    assert err == (
        "error: bad.yaml: datasets[0].params.intrinsic_dims: unknown key; "
        "did you mean 'intrinsic_dim'?"
    )
