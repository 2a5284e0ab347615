"""Data sources: each returns an :class:`AnomalyDataset` held in memory.

>>> from ae4ad.data import load_dataset, DATA_SOURCES
>>> sorted(DATA_SOURCES)
['digits', 'folder', 'medianomaly', 'medmnist', 'nifti', 'phantom']
"""

from ae4ad.data import (  # noqa: F401  (register sources)
    digits,
    folder,
    medianomaly,
    medmnist,
    nifti,
    phantom,
)
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
