"""The YAML search-space layer: validation messages, shipped spaces, trial expansion,
Optuna sampling, overrides and trial ids. Fast and Ray-free."""

from __future__ import annotations

import copy
import doctest
import re
import sys
import types
from pathlib import Path

import optuna
import pytest
import yaml

import study.space as space_module
from study.space import (
    FIT_KEYS,
    SpaceError,
    apply_overrides,
    estimate_plan,
    fit_config,
    grid_trials,
    load_space,
    resolve_space_path,
    sample_trial,
    strata,
    trial_id,
    validate_space,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["latent", "smoke", "paper", "methods", "optuna", "entropy", "known"]
MEDIANOMALY_SETS = ["RSNA", "VinCXR", "BrainTumor", "BraTS2021"]

BASE = {
    "name": "t",
    "datasets": [{"name": "phantom", "params": {"image_size": 32, "n_train": 64}}],
    "models": [{"name": "ae", "params": {"latent_dim": [2, 4]}}],
    "training": {"epochs": 2},
    "seeds": [0],
}


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("AE4AD_DATA", raising=False)


@pytest.fixture
def fake_data_root(tmp_path, monkeypatch):
    root = tmp_path / "MedIAnomaly-Data"
    for name in MEDIANOMALY_SETS:
        (root / name).mkdir(parents=True)
    monkeypatch.setenv("AE4AD_DATA", str(root))
    return root


def write(tmp_path: Path, data, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def mutated(fn) -> dict:
    data = copy.deepcopy(BASE)
    fn(data)
    return data


def optuna_base(d: dict) -> None:
    d["search"] = {"type": "optuna", "n_trials": 4}


def setter(path: str, value):
    """A mutation that sets a dotted path (with [i] indices) in the base space."""

    def fn(d):
        tokens = [int(t) if t.isdigit() else t for t in re.findall(r"[^.\[\]]+", path)]
        node = d
        for t in tokens[:-1]:
            if isinstance(t, str) and t not in node:
                node[t] = {}
            node = node[t]
        node[tokens[-1]] = value

    return fn


def both(*fns):
    def fn(d):
        for f in fns:
            f(d)

    return fn


# Each case: id, mutation of BASE (or raw YAML text), exact message after "bad.yaml: ".
MALFORMED = [
    ("unknown-top-key", setter("seed", [0]), "seed: unknown key; did you mean 'seeds'?"),
    (
        "unknown-model-param",
        setter("models[0].params.latnt_dim", 4),
        "models[0].params.latnt_dim: unknown key; did you mean 'latent_dim'?",
    ),
    (
        "unknown-training-key",
        setter("training.epoch", 3),
        "training.epoch: unknown key; did you mean 'epochs'?",
    ),
    (
        "unknown-key-no-match",
        setter("training.zzz", 3),
        "training.zzz: unknown key; allowed: epochs, batch_size, lr, weight_decay, eval_every, "
        "score, device, bf16, channels_last, deterministic, gpu_memory_fraction",
    ),
    (
        "unknown-dataset-key",
        setter("datasets[0].parms", {}),
        "datasets[0].parms: unknown key; did you mean 'params'?",
    ),
    (
        "epochs-not-int",
        setter("training.epochs", "ten"),
        "training.epochs: expected a positive integer, got 'ten'",
    ),
    (
        "epochs-zero",
        setter("training.epochs", 0),
        "training.epochs: expected a positive integer, got 0",
    ),
    (
        "epochs-bool",
        setter("training.epochs", True),
        "training.epochs: expected a positive integer, got True",
    ),
    ("lr-negative", setter("training.lr", -1), "training.lr: expected a positive number, got -1"),
    (
        "lr-text",
        setter("training.lr", "fast"),
        "training.lr: expected a positive number, got 'fast'",
    ),
    (
        "score-unknown",
        setter("training.score", "l3"),
        "training.score: expected one of 'l2', 'l1', 'ssim', got 'l3'",
    ),
    ("bf16-not-bool", setter("training.bf16", 1), "training.bf16: expected true or false, got 1"),
    (
        "device-grid",
        setter("training.device", ["cpu", "cuda"]),
        "training.device: takes one fixed value (no list or range), got ['cpu', 'cuda']",
    ),
    (
        "device-unknown",
        setter("training.device", "gpu"),
        "training.device: expected auto, cpu, cuda or cuda:<index>, got 'gpu'",
    ),
    (
        "grid-empty",
        setter("models[0].params.latent_dim", []),
        "models[0].params.latent_dim: empty list (give at least one value), got []",
    ),
    (
        "grid-duplicate",
        setter("models[0].params.latent_dim", [4, 8, 4]),
        "models[0].params.latent_dim[2]: duplicate value, got 4",
    ),
    (
        "grid-wrong-type",
        setter("models[0].params.latent_dim", [4, "x"]),
        "models[0].params.latent_dim[1]: expected a positive integer, got 'x'",
    ),
    (
        "range-under-grid",
        setter("models[0].params.latent_dim", {"int": [1, 8]}),
        "models[0].params.latent_dim: a range needs search.type: optuna "
        "(under grid give a list of values), got {'int': [1, 8]}",
    ),
    (
        "range-inverted",
        both(optuna_base, setter("models[0].params.latent_dim", {"int": [8, 1]})),
        "models[0].params.latent_dim.int: inverted range (low > high), got [8, 1]",
    ),
    (
        "range-empty",
        both(optuna_base, setter("training.lr", {"float": [0.001, 0.001]})),
        "training.lr.float: empty range (low == high; give a fixed value), got [0.001, 0.001]",
    ),
    (
        "log-range-low-zero",
        both(optuna_base, setter("training.weight_decay", {"float": [0.0, 0.1], "log": True})),
        "training.weight_decay.float: a log range needs low > 0, got [0.0, 0.1]",
    ),
    (
        "range-bound-out-of-rule",
        both(optuna_base, setter("models[0].params.latent_dim", {"int": [0, 8]})),
        "models[0].params.latent_dim.int[0]: expected a positive integer, got 0",
    ),
    (
        "float-range-for-int-param",
        both(optuna_base, setter("models[0].params.latent_dim", {"float": [1.0, 8.0]})),
        "models[0].params.latent_dim: a float range does not fit (use {int: [low, high]}), "
        "got {'float': [1.0, 8.0]}",
    ),
    (
        "spec-unknown-key",
        both(optuna_base, setter("models[0].params.latent_dim", {"int": [1, 8], "lg": True})),
        "models[0].params.latent_dim.lg: unknown key; did you mean 'log'?",
    ),
    (
        "spec-two-kinds",
        setter("models[0].params.latent_dim", {"int": [1, 8], "choice": [1]}),
        "models[0].params.latent_dim: a spec mapping needs exactly one of choice, int, float, "
        "got {'int': [1, 8], 'choice': [1]}",
    ),
    (
        "log-on-choice",
        setter("models[0].params.latent_dim", {"choice": [1, 2], "log": True}),
        "models[0].params.latent_dim.log: only used with an int or float range, got True",
    ),
    (
        "search-type-unknown",
        setter("search", {"type": "random"}),
        "search.type: unknown search type (allowed: grid, optuna), got 'random'",
    ),
    (
        "sampler-unknown",
        setter("search", {"type": "optuna", "sampler": "tpee"}),
        "search.sampler: unknown sampler (allowed: tpe, random, cmaes), got 'tpee'",
    ),
    (
        "sampler-under-grid",
        setter("search", {"sampler": "tpe"}),
        "search.sampler: only used when search.type is optuna (set search.type: optuna), got 'tpe'",
    ),
    (
        "n-trials-zero",
        setter("search", {"type": "optuna", "n_trials": 0}),
        "search.n_trials: expected a positive integer (trials per stratum), got 0",
    ),
    (
        "scheduler-unknown",
        setter("scheduler", {"type": "hyperband"}),
        "scheduler.type: unknown scheduler (allowed: none, asha), got 'hyperband'",
    ),
    (
        "scheduler-metric-typo",
        setter("scheduler", {"type": "asha", "metric": "acu"}),
        "scheduler.metric: unknown metric (did you mean 'auc'?), got 'acu'",
    ),
    (
        "asha-grace-zero",
        setter("scheduler", {"type": "asha", "grace_period": 0}),
        "scheduler.grace_period: expected a positive integer (epochs), got 0",
    ),
    (
        "asha-reduction-one",
        setter("scheduler", {"type": "asha", "reduction_factor": 1}),
        "scheduler.reduction_factor: expected a number > 1, got 1",
    ),
    (
        "grace-without-asha",
        setter("scheduler", {"grace_period": 5}),
        "scheduler.grace_period: only used when scheduler.type is asha "
        "(set scheduler.type: asha), got 5",
    ),
    (
        "duplicate-dataset-label",
        lambda d: d["datasets"].append({"name": "phantom", "params": {"image_size": 32}}),
        "datasets[1].label: duplicate label (datasets[0] has it too; give each a distinct label), "
        "got 'phantom'",
    ),
    (
        "duplicate-model-label",
        lambda d: d["models"].append({"name": "vae", "label": "ae"}),
        "models[1].label: duplicate label (models[0] has it too; give each a distinct label), "
        "got 'ae'",
    ),
    (
        "label-with-slash",
        setter("models[0].label", "ae/x"),
        "models[0].label: expected a label made of letters, digits, '_', '.', '+', '-', got 'ae/x'",
    ),
    (
        "dataset-param-list",
        setter("datasets[0].params.intrinsic_dim", [3, 8]),
        "datasets[0].params.intrinsic_dim: data sets are built once, so their params take one "
        "fixed value (add another datasets entry to vary it), got [3, 8]",
    ),
    (
        "dataset-param-range",
        setter("datasets[0].params.intrinsic_dim", {"int": [3, 8]}),
        "datasets[0].params.intrinsic_dim: data sets are built once, so their params take one "
        "fixed value (add another datasets entry to vary it), got {'int': [3, 8]}",
    ),
    (
        "dataset-missing-name",
        setter("datasets", [{"params": {}}]),
        None,  # regex below: the allowed list comes from the data registry
    ),
    ("seeds-not-ints", setter("seeds", [0, "a"]), "seeds[1]: expected an integer >= 0, got 'a'"),
    ("seeds-float", setter("seeds", [0, 1.5]), "seeds[1]: expected an integer >= 0, got 1.5"),
    ("seeds-duplicate", setter("seeds", [0, 1, 0]), "seeds[2]: duplicate seed, got 0"),
    ("seeds-count-zero", setter("seeds", 0), "seeds: a count of seeds must be positive, got 0"),
    (
        "seeds-text",
        setter("seeds", "all"),
        "seeds: expected a non-empty list of integers >= 0, or a count n (seeds 0..n-1), got 'all'",
    ),
    (
        "gpus-negative",
        setter("resources", {"gpus_per_trial": -1}),
        "resources.gpus_per_trial: expected a number >= 0 or auto, got -1",
    ),
    (
        "gpus-fraction-above-one",
        setter("resources", {"gpus_per_trial": 1.5}),
        "resources.gpus_per_trial: fractions are allowed only below 1 (Ray), got 1.5",
    ),
    (
        "cpus-zero",
        setter("resources", {"cpus_per_trial": 0}),
        "resources.cpus_per_trial: expected a positive number, got 0",
    ),
    (
        "max-failures-negative",
        setter("failure", {"max_failures": -1}),
        "failure.max_failures: expected an integer >= 0, got -1",
    ),
    (
        "erase-fraction-one",
        setter("models[0]", {"name": "ceae", "params": {"erase_fraction": 1.0}}),
        "models[0].params.erase_fraction: expected a number in (0, 1), got 1.0",
    ),
    (
        "encoder-depth-zero",  # depth 1 means no extra layers; the model refuses 0
        setter("models[0].params.encoder_depth", 0),
        "models[0].params.encoder_depth: expected a positive integer, got 0",
    ),
    (
        "storage-unknown-scheme",
        setter("storage_path", "ftp://host/runs"),
        "storage_path: unknown URI scheme 'ftp' (allowed: s3, gs, gcs, hdfs, viewfs, abfs, "
        "abfss, file), got 'ftp://host/runs'",
    ),
    (
        "storage-relative-file-uri",
        setter("storage_path", "file://runs"),
        "storage_path: a file URI names an absolute local folder: file:///path, got 'file://runs'",
    ),
    (
        "storage-uri-without-bucket",
        setter("storage_path", "s3:///runs"),
        "storage_path: expected s3://<bucket or host>/<path>, got 's3:///runs'",
    ),
    (
        "resources-not-mapping",
        setter("resources", [1]),
        "resources: expected a mapping of resource settings, got [1]",
    ),
    (
        "custom-resource-negative",
        setter("resources", {"custom": {"tpu": -1}}),
        "resources.custom.tpu: expected a number >= 0, got -1",
    ),
    (
        "max-concurrent-zero",
        setter("resources", {"max_concurrent_trials": 0}),
        "resources.max_concurrent_trials: expected a positive integer or null, got 0",
    ),
    (
        "mode-unknown",
        setter("scheduler", {"mode": "up"}),
        "scheduler.mode: expected max or min, got 'up'",
    ),
    (
        "dataset-not-mapping",
        setter("datasets", ["phantom"]),
        "datasets[0]: expected a mapping with name (and label, params), got 'phantom'",
    ),
    (
        "typo-reported-before-the-key-it-hides",  # not "datasets: missing"
        lambda d: d.update(dataset=d.pop("datasets")),
        "dataset: unknown key; did you mean 'datasets'?",
    ),
    (
        "model-image-size",
        setter("models[0].params.image_size", 64),
        "models[0].params.image_size: set by the data (give datasets[i].params.image_size "
        "instead), got 64",
    ),
    (
        "name-with-space",
        setter("name", "my study"),
        "name: expected a study name made of letters, digits, '_', '.', '-', got 'my study'",
    ),
    (
        "datasets-missing",
        lambda d: d.pop("datasets"),
        "datasets: missing (a list of data sets (each with name and params))",
    ),
    (
        "models-not-list",
        setter("models", "ae"),
        "models: expected a non-empty list of models (each with name and params), got 'ae'",
    ),
    (
        "training-not-mapping",
        setter("training", [1, 2]),
        "training: expected a mapping of training keys, got [1, 2]",
    ),
    (
        "dataset-training-bad",
        setter("datasets[0].training", {"epochs": -5}),
        "datasets[0].training.epochs: expected a positive integer, got -5",
    ),
    (
        "medianomaly-no-root",
        setter("datasets", [{"name": "medianomaly", "params": {"dataset": "RSNA"}}]),
        "datasets[0].params.root: medianomaly needs the MedIAnomaly-Data folder: set params.root "
        "or the environment variable AE4AD_DATA, got None",
    ),
    (
        "medianomaly-root-missing",
        setter("datasets", [{"name": "medianomaly", "params": {"root": "/no/such/folder"}}]),
        "datasets[0].params.root: no such folder, got '/no/such/folder'",
    ),
]


@pytest.mark.parametrize(
    ("mutation", "message"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_space_gives_one_line_message(tmp_path, mutation, message):
    path = write(tmp_path, mutated(mutation))
    with pytest.raises(SpaceError) as err:
        load_space(str(path))
    text = str(err.value)
    assert "\n" not in text
    if message is None:
        assert re.fullmatch(r"bad\.yaml: datasets\[0\]\.name: missing \(a data source: .+\)", text)
        assert "phantom" in text
    else:
        assert text == f"bad.yaml: {message}"


RAW_YAML_CASES = [
    (
        "syntax-error",
        "name: t\ndatasets: [\n  {name: phantom\n",
        r"bad\.yaml: not valid YAML: .+ at line \d+, column \d+",
    ),
    (
        "top-level-list",
        "- name: t\n- datasets: []\n",
        re.escape(
            "bad.yaml: not valid YAML: the top level must be a mapping "
            "(name: ..., datasets: ..., models: ...), got a list"
        ),
    ),
    ("empty-file", "# nothing here\n", re.escape("bad.yaml: not valid YAML: the file is empty")),
    (
        "duplicate-key",
        "name: t\nseeds: [0]\ndatasets: [{name: phantom}]\nmodels: [{name: ae}]\nseeds: [1]\n",
        re.escape("bad.yaml: not valid YAML: duplicate key 'seeds' at line 5, column 1"),
    ),
]


@pytest.mark.parametrize(
    ("text", "pattern"), [c[1:] for c in RAW_YAML_CASES], ids=[c[0] for c in RAW_YAML_CASES]
)
def test_invalid_yaml_gives_one_line_message(tmp_path, text, pattern):
    with pytest.raises(SpaceError) as err:
        load_space(str(write(tmp_path, text)))
    assert "\n" not in str(err.value)
    assert re.fullmatch(pattern, str(err.value)), str(err.value)


def test_unknown_model_and_source_list_what_is_allowed(tmp_path):
    path = write(tmp_path, mutated(setter("models[0].name", "vea")))
    with pytest.raises(
        SpaceError,
        match=r"^bad\.yaml: models\[0\]\.name: unknown model "
        r"\(allowed: [a-z_, ]*\bvae\b[a-z_, ]*\), got 'vea'$",
    ):
        load_space(str(path))
    path = write(tmp_path, mutated(setter("datasets[0].name", "phantm")))
    with pytest.raises(
        SpaceError,
        match=r"^bad\.yaml: datasets\[0\]\.name: unknown dataset "
        r"source \(allowed: [a-z_, ]*\bphantom\b[a-z_, ]*\), got 'phantm'$",
    ):
        load_space(str(path))


def test_model_list_falls_back_without_a_model_registry(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ae4ad.models", None)  # import fails
    path = write(tmp_path, mutated(setter("models[0].name", "gan")))
    with pytest.raises(SpaceError) as err:
        load_space(str(path))
    assert str(err.value) == (
        "bad.yaml: models[0].name: unknown model "
        "(allowed: ae, vae, memae, ceae, constrained_ae, ae_spatial), got 'gan'"
    )


def test_model_registry_and_per_model_params_are_used_when_present(tmp_path, monkeypatch):
    fake = types.ModuleType("ae4ad.models")
    fake.MODELS = {"ae": object, "tiny": object}
    fake.MODEL_PARAMS = {
        "ae": {"latent_dim": 16, "hidden_dim": 1024, "image_size": 64},
        "tiny": {"latent_dim": 16, "width": 8, "image_size": 64},
    }
    monkeypatch.setitem(sys.modules, "ae4ad.models", fake)
    ok = load_space(
        str(
            write(
                tmp_path,
                mutated(
                    setter("models[0]", {"name": "tiny", "params": {"latent_dim": 4, "width": 7}})
                ),
                "ok.yaml",
            )
        )
    )
    assert ok.models[0].params["width"].values == [7]
    path = write(tmp_path, mutated(setter("models[0].params.num_blocks", 3)))
    with pytest.raises(SpaceError) as err:
        load_space(str(path))
    assert str(err.value) == (
        "bad.yaml: models[0].params.num_blocks: unknown key; allowed: latent_dim, hidden_dim"
    )
    bad_width = setter("models[0]", {"name": "tiny", "params": {"width": 2.5}})
    with pytest.raises(SpaceError) as err:
        load_space(str(write(tmp_path, mutated(bad_width))))
    assert str(err.value) == "bad.yaml: models[0].params.width: expected an integer, got 2.5"
    path = write(tmp_path, mutated(setter("models[0].name", "vae")))
    with pytest.raises(SpaceError, match=r"unknown model \(allowed: ae, tiny\), got 'vae'$"):
        load_space(str(path))


def test_dataset_params_are_checked_against_the_loader_signature(tmp_path, monkeypatch):
    import ae4ad.data

    def toy(image_size: int = 32, seed: int = 0):
        raise AssertionError("never called by validation")

    monkeypatch.setattr(ae4ad.data, "DATA_SOURCES", {"toy": toy})
    data = mutated(setter("datasets", [{"name": "toy", "params": {"imag_size": 16}}]))
    with pytest.raises(SpaceError) as err:
        load_space(str(write(tmp_path, data)))
    assert str(err.value) == (
        "bad.yaml: datasets[0].params.imag_size: unknown key; did you mean 'image_size'?"
    )


def test_a_list_is_one_fixed_value_where_the_loader_takes_a_sequence(tmp_path, monkeypatch):
    import ae4ad.data

    def toy(lesion_radius: tuple[float, float] = (2.0, 4.0), intrinsic_dim: int = 6):
        raise AssertionError("never called by validation")

    monkeypatch.setattr(ae4ad.data, "DATA_SOURCES", {"toy": toy})
    data = mutated(setter("datasets", [{"name": "toy", "params": {"lesion_radius": [1, 3]}}]))
    space = load_space(str(write(tmp_path, data, "ok.yaml")))
    assert space.datasets[0].params["lesion_radius"] == [1, 3]
    assert len(grid_trials(space)) == 2  # the list did not become a grid axis
    data = mutated(setter("datasets", [{"name": "toy", "params": {"intrinsic_dim": [3, 8]}}]))
    with pytest.raises(SpaceError) as err:
        load_space(str(write(tmp_path, data)))
    assert str(err.value).startswith(
        "bad.yaml: datasets[0].params.intrinsic_dim: data sets are built once"
    )


@pytest.mark.parametrize(
    ("metric", "mode"),
    [
        ("auc", "max"),
        ("val_auc", "max"),
        ("val_ap", "max"),
        ("recon_error_val_normal", "min"),
        ("train_loss", "min"),
        ("mean_score_normal", "min"),
        ("mean_score_abnormal", "max"),
    ],
)
def test_scheduler_mode_defaults_to_the_metric_registry_direction(tmp_path, metric, mode):
    from ae4ad.metrics import direction

    space = load_space(str(write(tmp_path, mutated(setter("scheduler", {"metric": metric})))))
    assert space.scheduler.mode == mode == direction(metric)


def test_scheduler_accepts_every_registered_objective_and_nothing_else(tmp_path):
    from ae4ad.metrics import OBJECTIVES

    for metric in OBJECTIVES:
        data = mutated(setter("scheduler", {"type": "asha", "metric": metric}))
        assert load_space(str(write(tmp_path, data))).scheduler.metric == metric
    data = mutated(setter("scheduler", {"metric": "dice_threshold"}))
    with pytest.raises(SpaceError, match=r"scheduler\.metric: unknown metric \("):
        load_space(str(write(tmp_path, data)))


@pytest.mark.parametrize(
    "uri", ["s3://bucket/ae4ad/runs", "gs://bucket/runs", "abfss://container@acct/runs"]
)
def test_storage_path_takes_a_uri_ray_tune_takes(tmp_path, uri):
    space = load_space(str(write(tmp_path, mutated(setter("storage_path", uri + "/")))))
    assert space.storage_path == uri and space.storage_is_uri
    assert space.to_dict()["storage_path"] == uri
    assert space.run_dir == Path.cwd().resolve() / "runs" / "t"  # the driver's tables
    again = validate_space(yaml.safe_load(yaml.safe_dump(space.to_dict())))
    assert again.storage_path == uri


def test_storage_path_file_uri_is_a_local_folder(tmp_path):
    uri = f"file://{tmp_path}/shared"
    space = load_space(str(write(tmp_path, mutated(setter("storage_path", uri)))))
    assert space.storage_path == tmp_path / "shared" and not space.storage_is_uri
    assert space.run_dir == tmp_path / "shared" / "t"


def test_medianomaly_env_folder_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("AE4AD_DATA", str(tmp_path / "absent"))
    data = mutated(setter("datasets", [{"name": "medianomaly", "params": {"dataset": "RSNA"}}]))
    with pytest.raises(SpaceError) as err:
        load_space(str(write(tmp_path, data)))
    assert str(err.value) == (
        "bad.yaml: datasets[0].params.root: the environment variable AE4AD_DATA names no "
        f"folder, got {str(tmp_path / 'absent')!r}"
    )
    # a dry run skips the file-system checks
    assert load_space(str(write(tmp_path, data)), check_data=False).datasets[0].name == (
        "medianomaly"
    )


# --------------------------------------------------------------------------- shipped spaces


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads(name, fake_data_root):
    space = load_space(name)
    assert space.name == name
    assert space.path == REPO / "search_spaces" / f"{name}.yaml"
    assert space.run_dir == Path.cwd().resolve() / "runs" / name
    plan = estimate_plan(space)
    assert plan["n_trials"] > 0 and plan["trial_epochs"] > 0
    # the resolved space loads back to the same trials
    round_trip = validate_space(yaml.safe_load(yaml.safe_dump(space.to_dict())))
    assert round_trip.to_dict() == space.to_dict()


@pytest.mark.parametrize("name", ["paper", "methods"])
def test_paper_spaces_need_the_data_root_unless_dry_run(name):
    with pytest.raises(SpaceError, match=r"datasets\[0\]\.params\.root: medianomaly needs"):
        load_space(name)
    assert load_space(name, check_data=False).datasets[0].label == "RSNA"


@pytest.mark.parametrize(
    ("name", "n_trials", "n_strata"),
    [("latent", 16, 1), ("smoke", 2, 1), ("paper", 96, 4), ("methods", 48, 16)],
)
def test_grid_trial_counts(name, n_trials, n_strata):
    space = load_space(name, check_data=False)
    configs = grid_trials(space)
    assert len(configs) == n_trials
    assert len({c["stratum"] for c in configs}) == n_strata
    assert estimate_plan(space)["n_trials"] == n_trials


def test_grid_order_datasets_models_params_seeds_innermost():
    space = load_space("methods", check_data=False, overrides=["seeds=[0, 1]"])
    keys = [(c["dataset_label"], c["model_label"], c["seed"]) for c in grid_trials(space)]
    assert keys[:4] == [
        ("RSNA", "ae", 0),
        ("RSNA", "ae", 1),
        ("RSNA", "vae", 0),
        ("RSNA", "vae", 1),
    ]
    assert keys[-1] == ("BraTS2021", "ceae", 1)
    latent = grid_trials(load_space("latent"))
    assert [(c["model_params"]["latent_dim"], c["seed"]) for c in latent[:4]] == [
        (1, 0),
        (1, 1),
        (2, 0),
        (2, 1),
    ]


def test_latent_trial_config_shape_and_defaults():
    config = grid_trials(load_space("latent"))[5]
    assert config["dataset"] == "phantom" and config["model"] == "ae"
    assert config["dataset_params"]["intrinsic_dim"] == 6
    assert config["model_params"] == {
        "latent_dim": 4,
        "num_blocks": 3,
        "base_width": 8,
        "hidden_dim": 256,
    }
    assert (config["epochs"], config["batch_size"], config["lr"]) == (60, 32, 0.001)
    assert (config["eval_every"], config["weight_decay"], config["score"]) == (30, 0.0, "l2")
    assert config["device"] == "auto" and config["threads"] == 1
    assert set(fit_config(config)) <= set(FIT_KEYS)
    assert "stratum" not in fit_config(config)


def test_default_eval_every_follows_epochs(tmp_path):
    space = load_space(str(write(tmp_path, mutated(setter("training", {"epochs": 12})))))
    assert grid_trials(space)[0]["eval_every"] == 2


def test_per_dataset_training_block_overrides_the_study_training():
    configs = grid_trials(load_space("paper", check_data=False))
    epochs = {c["dataset_label"]: c["epochs"] for c in configs}
    assert epochs == {"RSNA": 250, "VinDr-CXR": 250, "BrainTumor": 600, "BraTS2021": 250}
    assert estimate_plan(load_space("paper", check_data=False))["trial_epochs"] == (
        3 * 24 * 250 + 24 * 600
    )


def test_grid_trials_refuses_an_optuna_space():
    with pytest.raises(SpaceError, match="grid_trials needs a grid space"):
        grid_trials(load_space("optuna"))


# --------------------------------------------------------------------------- optuna


def test_optuna_sampling_stays_within_the_specs():
    space = load_space("optuna")
    assert [s.key for s in strata(space)] == ["phantom-k3/ae", "phantom-k8/ae"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for stratum in strata(space):
        st = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3)
        )
        for _ in range(8):
            trial = st.ask()
            config = sample_trial(space, stratum, trial)
            mp = config["model_params"]
            assert isinstance(mp["latent_dim"], int) and 1 <= mp["latent_dim"] <= 256
            assert mp["hidden_dim"] in (256, 512, 1024) and mp["base_width"] in (8, 16, 32)
            assert mp["num_blocks"] == 3
            assert 1e-4 <= config["lr"] <= 3e-3 and config["epochs"] == 30
            assert config["stratum"] == stratum.key
            assert config["dataset_label"] == stratum.dataset.label
            assert set(trial.params) == {
                "model.latent_dim",
                "model.hidden_dim",
                "model.base_width",
                "training.lr",
            }
            assert trial.distributions["model.latent_dim"].log is True
            st.tell(trial, float(mp["latent_dim"]))
    plan = estimate_plan(space)
    assert (plan["n_trials"], plan["n_strata"], plan["trial_epochs"]) == (24, 2, 720)
    assert plan["trial_epochs_upper_bound"] is True


def test_optuna_seeds_cycle_by_trial_number():
    space = load_space("optuna", overrides=["seeds=3"])
    st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seeds = [sample_trial(space, strata(space)[0], st.ask())["seed"] for _ in range(5)]
    assert seeds == [0, 1, 2, 0, 1]


def test_lists_are_categorical_under_optuna(tmp_path):
    space = load_space(str(write(tmp_path, mutated(optuna_base))))
    st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = st.ask()
    assert sample_trial(space, strata(space)[0], trial)["model_params"]["latent_dim"] in (2, 4)
    assert type(trial.distributions["model.latent_dim"]).__name__ == "CategoricalDistribution"


# --------------------------------------------------------------------------- overrides


def test_overrides_set_values_lists_and_new_keys():
    space = load_space(
        "latent",
        [
            "training.epochs=5",
            "seeds=[0]",
            "models[0].params.latent_dim=[4, 8]",
            "training.weight_decay=1e-5",
            "datasets[0].params.intrinsic_dim=3",
            "resources.gpus_per_trial=0",
        ],
    )
    configs = grid_trials(space)
    assert len(configs) == 2
    assert [c["model_params"]["latent_dim"] for c in configs] == [4, 8]
    assert {c["epochs"] for c in configs} == {5}
    assert configs[0]["weight_decay"] == 1e-5 and isinstance(configs[0]["weight_decay"], float)
    assert configs[0]["dataset_params"]["intrinsic_dim"] == 3
    assert space.resources.gpus_per_trial == 0


def test_override_turns_a_grid_into_an_optuna_search():
    space = load_space(
        "smoke",
        [
            "search={type: optuna, n_trials: 3}",
            "models[0].params.latent_dim={int: [1, 32], log: true}",
        ],
    )
    assert space.search.type == "optuna" and space.search.n_trials == 3
    assert space.models[0].params["latent_dim"].kind == "int"


BAD_OVERRIDES = [
    ("training.epocs=5", "latent.yaml: training.epocs: unknown key; did you mean 'epochs'?"),
    (
        "training.epochs=zero",
        "latent.yaml: training.epochs: expected a positive integer, got 'zero'",
    ),
    (
        "models[3].params.latent_dim=4",
        "latent.yaml: override 'models[3].params.latent_dim=4': models[3]: no such entry "
        "(models has 1), got index 3",
    ),
    (
        "datasets.label=x",
        "latent.yaml: override 'datasets.label=x': datasets: is a list; give an index like "
        "datasets[0], got key 'label'",
    ),
    (
        "training.epochs.max=5",
        "latent.yaml: override 'training.epochs.max=5': training.epochs: is not a mapping, got 60",
    ),
    (
        "epochs",
        "latent.yaml: override 'epochs': expected KEY=VALUE with a dotted key path, "
        "e.g. training.epochs=5 or models[0].params.latent_dim=[4,8]",
    ),
    ("seeds=[0,", None),
]


@pytest.mark.parametrize(("override", "message"), BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_bad_override_fails(override, message):
    with pytest.raises(SpaceError) as err:
        load_space("latent", [override])
    if message is None:
        assert re.fullmatch(
            r"latent\.yaml: override 'seeds=\[0,': the value is not valid YAML: .+ at line \d+, "
            r"column \d+",
            str(err.value),
        )
    else:
        assert str(err.value) == message


def test_apply_overrides_leaves_the_input_alone():
    raw = {"training": {"epochs": 60}}
    assert apply_overrides(raw, ["training.epochs=5"]) == {"training": {"epochs": 5}}
    assert raw == {"training": {"epochs": 60}}


def test_scientific_notation_is_a_float(tmp_path):
    text = yaml.safe_dump(BASE) + "\n"
    text = text.replace("training:\n  epochs: 2\n", "training:\n  epochs: 2\n  lr: 1e-3\n")
    space = load_space(str(write(tmp_path, text, "sci.yaml")))
    assert space.training["lr"].values == [0.001]


# --------------------------------------------------------------------------- ids, paths


def test_trial_id_is_stable_distinct_and_filesystem_safe():
    first = [trial_id(c) for c in grid_trials(load_space("latent"))]
    again = [trial_id(c) for c in grid_trials(load_space("latent"))]
    assert first == again
    assert len(set(first)) == len(first) == 16
    paper = [trial_id(c) for c in grid_trials(load_space("paper", check_data=False))]
    assert len(set(paper)) == 96
    for tid in first + paper:
        assert re.fullmatch(r"[A-Za-z0-9_.+-]+-[0-9a-f]{10}", tid), tid
    assert first[0].startswith("phantom-ae-d1-s0-")


def test_trial_id_ignores_device_and_threads_but_not_training_values():
    config = grid_trials(load_space("smoke"))[0]
    base = trial_id(config)
    assert trial_id({**config, "device": "cuda", "threads": 8}) == base
    assert trial_id({**config, "lr": 0.002}) != base
    assert trial_id({**config, "seed": 1}) != base


def test_shipped_spaces_are_package_data_of_study():
    from importlib.resources import files

    from study.space import shipped_spaces_dir

    shipped = shipped_spaces_dir()
    assert shipped == Path(str(files("study") / "spaces"))
    for name in SHIPPED:
        assert (shipped / f"{name}.yaml").resolve() == REPO / "search_spaces" / f"{name}.yaml"


def test_bare_names_are_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_space_path("smoke") == REPO / "search_spaces" / "smoke.yaml"
    # a user's own ./search_spaces/ comes first
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "smoke.yaml").write_text("name: mine\n")
    assert resolve_space_path("smoke") == tmp_path / "search_spaces" / "smoke.yaml"


def test_resolve_space_path_finds_bare_names_and_lists_what_exists():
    assert resolve_space_path("latent") == REPO / "search_spaces" / "latent.yaml"
    assert resolve_space_path("optuna.yaml") == REPO / "search_spaces" / "optuna.yaml"
    with pytest.raises(SpaceError) as err:
        resolve_space_path("nope")
    assert re.fullmatch(
        r"nope: no such file \(looked in \./ and search_spaces/; available: "
        r"(?=.*\blatent\.yaml)(?=.*\bsmoke\.yaml)(?=.*\bpaper\.yaml).*\)",
        str(err.value),
    ), str(err.value)


def test_module_docstring_examples_run():
    result = doctest.testmod(space_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


@pytest.mark.parametrize("name", ["study.schema", "study.params", "study.plan", "study.preflight"])
def test_schema_module_docstring_examples_run(name):
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- command line


CLI_CASES = [
    (
        "epochs-not-int",
        setter("training.epochs", "ten"),
        "error: bad.yaml: training.epochs: expected a positive integer, got 'ten'",
    ),
    (
        "unknown-key",
        setter("models[0].params.latnt_dim", 4),
        "error: bad.yaml: models[0].params.latnt_dim: unknown key; did you mean 'latent_dim'?",
    ),
    (
        "range-under-grid",
        setter("models[0].params.latent_dim", {"float": [1.0, 2.0]}),
        "error: bad.yaml: models[0].params.latent_dim: a range needs search.type: optuna "
        "(under grid give a list of values), got {'float': [1.0, 2.0]}",
    ),
]


@pytest.mark.parametrize(
    ("mutation", "line"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_rejects_a_bad_space_with_exit_code_2(tmp_path, capsys, mutation, line):
    from study.cli import main

    path = write(tmp_path, mutated(mutation))
    assert main(["--space", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip() == line
