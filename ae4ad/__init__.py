"""ae4ad: reconstruction-based anomaly detection with autoencoders, in plain PyTorch.

The science of ae4ad-study: the paper's autoencoder and its variants, data sources,
training, scoring and latent-entropy estimators. No Ray, Optuna or Plotly here:
everything runs from a notebook.

Example:
    >>> import ae4ad
    >>> model = ae4ad.build_model("ae", latent_dim=16, image_size=64)
    >>> ae4ad.count_parameters(model)
    2351184
"""

from ae4ad.data import DATA_SOURCES, AnomalyDataset, DataError, load_dataset
from ae4ad.fused import fit_many
from ae4ad.models import MODEL_PARAMS, MODELS, ModelError, build_model, count_parameters
from ae4ad.train import ConfigError, TrainConfig, fit
from ae4ad.trained import Preprocessing, TrainedModel, TrainedModelError, load_trained

__version__ = "0.1.0"

__all__ = [
    "DATA_SOURCES",
    "MODELS",
    "MODEL_PARAMS",
    "AnomalyDataset",
    "ConfigError",
    "DataError",
    "ModelError",
    "Preprocessing",
    "TrainConfig",
    "TrainedModel",
    "TrainedModelError",
    "build_model",
    "count_parameters",
    "fit",
    "fit_many",
    "load_dataset",
    "load_trained",
]
