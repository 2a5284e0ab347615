"""Data sources: each returns an :class:`AnomalyDataset` held in memory.

>>> from ae4ad.data import load_dataset, DATA_SOURCES
>>> sorted(DATA_SOURCES)
['digits', 'medianomaly', 'medmnist', 'phantom']
"""

from ae4ad.data import digits, medianomaly, medmnist, phantom  # noqa: F401  (register sources)
from ae4ad.data.base import (
    DATA_SOURCES,
    AnomalyDataset,
    DataError,
    load_dataset,
    register_source,
    source_params,
)

__all__ = [
    "DATA_SOURCES",
    "AnomalyDataset",
    "DataError",
    "load_dataset",
    "register_source",
    "source_params",
]
