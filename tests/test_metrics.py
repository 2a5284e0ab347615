"""The metric registry: one entry per metric name, each with a direction, a label, a unit
and whether it lies in [0, 1]."""

import doctest

import pytest

import ae4ad.metrics as metrics_module
from ae4ad.metrics import METRICS, OBJECTIVES, direction, get_metric


def test_module_docstring_examples_run():
    result = doctest.testmod(metrics_module)
    assert result.attempted > 3 and result.failed == 0


def test_every_entry_is_complete_and_named_by_its_key():
    for name, metric in METRICS.items():
        assert metric.name == name
        assert metric.direction in ("max", "min")
        assert metric.label and isinstance(metric.unit, str)
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
