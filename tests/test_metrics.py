"""The metric registry: one entry per metric name, each with a direction, a label, a unit
and whether it lies in [0, 1]."""

import doctest

import pytest

import ae4ad.metrics as metrics_module
from ae4ad.metrics import GROUPS, METRICS, OBJECTIVES, direction, get_metric, names


def test_module_docstring_examples_run():
    result = doctest.testmod(metrics_module)
    assert result.attempted > 3 and result.failed == 0


def test_every_entry_is_complete_and_named_by_its_key():
    for name, metric in METRICS.items():
        assert metric.name == name
        assert metric.direction in ("max", "min", None)
        assert metric.label and isinstance(metric.unit, str)
        assert metric.split in ("train", "val", "test") and metric.group in GROUPS
        assert metric.description
    assert set(OBJECTIVES) <= set(METRICS)


@pytest.mark.parametrize(
    ("name", "way", "bounded"),
    [
        ("auc", "max", True),
        ("ap", "max", True),
        ("val_auc", "max", True),
        ("val_ap", "max", True),
        ("pixel_ap", "max", True),
        ("best_dice", "max", True),
        ("train_loss", "min", False),
        ("recon_error_val_normal", "min", False),
        ("recon_error_test_abnormal", "max", False),
        ("latent_entropy_gaussian", "max", False),
    ],
)
def test_directions_and_bounds(name, way, bounded):
    assert direction(name) == way
    assert get_metric(name).bounded is bounded


def test_worst_values():
    assert get_metric("auc").worst() == 0.0
    assert get_metric("recon_error_val_normal").worst() == float("inf")
    with pytest.raises(KeyError, match="did you mean 'best_dice'"):
        get_metric("best_dise")


def test_directionless_metrics_are_descriptions_not_objectives():
    described = [name for name, m in METRICS.items() if m.direction is None]
    assert described == [
        "dice_threshold", "image_intrinsic_dim_twonn", "image_intrinsic_dim_mle", "known_dim",
    ]  # fmt: skip
    assert not set(described) & set(OBJECTIVES)
    assert set(OBJECTIVES) | set(described) == set(METRICS)
    with pytest.raises(ValueError, match="no direction"):
        get_metric("dice_threshold").worst()
    assert get_metric("dice_threshold").worst("max", finite=True) == -1e30


def test_best_follows_the_direction_and_skips_what_is_not_a_number():
    values = [0.3, None, float("nan"), float("inf"), True, "x", 0.1, 0.2]
    assert get_metric("auc").best(values) == 0.3
    assert get_metric("recon_error_val_normal").best(values) == 0.1
    assert get_metric("auc").best([None, float("nan")]) is None
    with pytest.raises(ValueError, match="no direction"):
        get_metric("image_intrinsic_dim_mle").best([1.0])


def test_splits_and_groups():
    on_test = {name for name, m in METRICS.items() if m.on_test}
    assert on_test == {
        "auc", "ap", "pixel_ap", "pixel_auc", "best_dice", "dice_threshold",
        "mean_score_normal", "mean_score_abnormal",
        "recon_error_test_normal", "recon_error_test_abnormal",
    }  # fmt: skip
    assert {name for name, m in METRICS.items() if m.split == "val"} == {
        "val_auc",
        "val_ap",
        "recon_error_val_normal",
    }
    assert names("latent") == tuple(n for n in METRICS if n.startswith("latent_"))
    assert sum(len(names(g)) for g in GROUPS) == len(METRICS)
    with pytest.raises(KeyError, match="unknown metric group"):
        names("latents")


# Keys of a record that are not metrics: progress, timings, facts about the model or the
# device, the per-image payload of the final record, and the companion of dice_threshold.
NOT_METRICS = {
    "epoch", "status", "is_final", "error", "device", "elapsed_s", "train_time_s",
    "images_per_s", "latent_size", "latent_statistics_reason", "n_parameters", "scores",
    "labels", "examples", "dice_threshold_source",
}  # fmt: skip


def test_fit_reports_every_registered_metric_and_no_other():
    from ae4ad.train import fit

    config = {
        "dataset": "phantom", "model": "ae", "epochs": 2, "eval_every": 1, "seed": 0,
        "threads": 1,
        # a labelled validation split (val_auc, val_ap) and masks (pixel metrics)
        "dataset_params": {"image_size": 32, "n_train": 32, "n_val": 4, "n_val_abnormal": 4,
                           "n_test_normal": 8, "n_test_abnormal": 8},
        "model_params": {"latent_dim": 4, "num_blocks": 3, "hidden_dim": 32},
    }  # fmt: skip
    records = list(fit(config))
    assert records[-1]["status"] == "completed"
    reported = set().union(*records) - NOT_METRICS
    assert reported == set(METRICS)
    for record in records:
        for name, value in record.items():
            if name in METRICS and value is not None:
                assert isinstance(value, float), name
                if METRICS[name].bounded:
                    assert 0.0 <= value <= 1.0, name
