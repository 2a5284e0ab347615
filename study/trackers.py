"""Experiment trackers of a study: MLflow, TensorBoard and Weights & Biases, fed by Ray
Tune's own logger callbacks.

The harness keeps Tune's automatic loggers off (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``)
and writes its own tables; the trackers named in the space's ``logging.trackers`` (or
with ``--log``) are added as explicit callbacks:

- ``mlflow``: ``ray.air.integrations.mlflow.MLflowLoggerCallback``; store
  ``logging.mlflow.tracking_uri`` (default ``sqlite:///<run dir>/mlflow.db``),
  experiment ``logging.mlflow.experiment`` (default: the study's name).
- ``tensorboard``: ``ray.tune.logger.TBXLoggerCallback``; event files in
  ``<logging.tensorboard.logdir>/<trial id>/`` (default ``<run dir>/tensorboard``),
  scalars named ``ray/tune/<key>``.
- ``wandb``: ``ray.air.integrations.wandb.WandbLoggerCallback``; project
  ``logging.wandb.project`` (default: the study's name), ``mode`` offline (default: the
  run is written under ``<run dir>/wandb/``, ``wandb sync`` uploads it), online or
  disabled.

Each trial is one tracker run named by its trial id, with the trial's config as its
parameters, and every numeric scalar of every record (the very records that become
``history.parquet``) as a metric at step = the record's ``epoch``. A NaN objective that
the trainable replaced for the scheduler is logged as NaN (TensorBoard skips NaN).

A tracker whose package is missing is a :class:`TrackerError` raised before Ray starts
(the command line prints it as one line and exits with 2).

Example:
    >>> from study.space import load_space
    >>> space = with_trackers(load_space("smoke"), ["mlflow", "tensorboard"])
    >>> space.logging.trackers
    ['mlflow', 'tensorboard']
    >>> tracker_metrics({"epoch": 3, "auc": 0.7, "status": "running", "is_final": False})
    {'epoch': 3, 'auc': 0.7, 'is_final': 0, 'training_iteration': 3}
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from study.schema import TRACKERS  # mlflow, tensorboard, wandb

__all__ = [
    "PACKAGES",
    "TRACKERS",
    "TrackerError",
    "callbacks",
    "check",
    "describe",
    "mlflow_uri",
    "tensorboard_dir",
    "tracker_metrics",
    "wandb_dir",
    "with_trackers",
]

# tracker -> (module the callback imports, pip extra of ae4ad-study that installs it)
PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboardX", "wandb": "wandb"}
# Tune's step key: every tracker callback logs a result at step result[STEP_KEY]
STEP_KEY = "training_iteration"

# (record, whether the objective was replaced by a stand-in) of a Tune result
ToRecord = Callable[[Mapping[str, Any]], tuple[dict[str, Any], bool]]


class TrackerError(ValueError):
    """A tracker cannot be used as asked (its package is missing, W&B online without an
    API key, an MLflow store that does not open): a one-line message."""


# --------------------------------------------------------------------------- options


def with_trackers(space: Any, names: Sequence[str]) -> Any:
    """``space`` with ``names`` added to its ``logging.trackers`` (``--log``)."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise TrackerError(
            f"--log: unknown tracker {unknown[0]!r} (allowed: {', '.join(TRACKERS)})"
        )
    merged = list(dict.fromkeys([*space.logging.trackers, *names]))
    logging_spec = space.logging.model_copy(update={"trackers": merged})
    return space.model_copy(update={"logging": logging_spec})


def mlflow_uri(space: Any) -> str:
    """The MLflow tracking URI of a study: ``logging.mlflow.tracking_uri``, else a SQLite
    store in the run folder. A plain path becomes an absolute one (MLflow reads it as a
    file store)."""
    uri = space.logging.mlflow.tracking_uri
    if not uri:
        return f"sqlite:///{Path(space.run_dir).resolve() / 'mlflow.db'}"
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri):
        return uri
    return str(Path(uri).expanduser().resolve())


def tensorboard_dir(space: Any) -> Path:
    """The folder of the TensorBoard event files (one subfolder per trial)."""
    logdir = space.logging.tensorboard.logdir
    return Path(logdir).expanduser().resolve() if logdir else Path(space.run_dir) / "tensorboard"


def wandb_dir(space: Any) -> Path:
    """The folder W&B writes its ``wandb/`` folder into (the run folder)."""
    return Path(space.run_dir)


def describe(space: Any) -> list[str]:
    """One line per tracker of the study: where its runs go."""
    lines = []
    for name in space.logging.trackers:
        if name == "mlflow":
            experiment = space.logging.mlflow.experiment or space.name
            lines.append(f"tracking: mlflow {mlflow_uri(space)} (experiment {experiment})")
        elif name == "tensorboard":
            lines.append(f"tracking: tensorboard --logdir {tensorboard_dir(space)}")
        elif name == "wandb":
            spec = space.logging.wandb
            where = f" in {wandb_dir(space) / 'wandb'}" if spec.mode == "offline" else ""
            lines.append(
                f"tracking: wandb project {spec.project or space.name} ({spec.mode}){where}"
            )
    return lines


# --------------------------------------------------------------------------- checks


def check(space: Any) -> None:
    """Check, before Ray starts, that every tracker of ``space`` can run: its package
    is installed, W&B online has an API key, a local MLflow store opens. Raises
    :class:`TrackerError` with a one-line message."""
    for name in space.logging.trackers:
        module = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise TrackerError(
                f"logging: the {name} tracker needs the package '{module}', which is not "
                f"installed (pip install 'ae4ad-study[{name}]', or from a clone: "
                f"pip install -e '.[{name}]')"
            )
    if "mlflow" in space.logging.trackers:
        _check_mlflow(space)
    if "wandb" in space.logging.trackers and space.logging.wandb.mode == "online":
        _check_wandb_key()


def _check_mlflow(space: Any) -> None:
    """Open a local MLflow store (a SQLite file or a folder) once: a store MLflow
    refuses fails here rather than in the middle of a study. Servers are not
    contacted (MLflow retries for minutes before it gives up)."""
    uri = mlflow_uri(space)
    if re.match(r"(https?|databricks|uc)([:+]|$)", uri):
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    _quiet_mlflow()
    try:
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except (MlflowException, OSError, ValueError) as exc:
        message = " ".join(str(getattr(exc, "message", exc)).split())
        raise TrackerError(
            f"logging.mlflow.tracking_uri: MLflow cannot open {uri}: {message[:400]}"
        ) from None


def _quiet_mlflow() -> None:
    """No INFO lines from MLflow (creating tables, creating the experiment); MLflow sets
    its logger's level when it is imported, so after that."""
    import mlflow  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)


def _check_wandb_key() -> None:
    if os.environ.get("WANDB_API_KEY"):
        return
    import wandb

    try:  # a key from `wandb login` (~/.netrc), not checked with the server
        key = wandb.login(prompt=False, verify=False)
    except TypeError:  # wandb before prompt=: its older API
        key = None
        with contextlib.suppress(Exception):
            wandb.ensure_configured()
            key = wandb.api.api_key
    except Exception:  # noqa: BLE001 - no usable login
        key = None
    if not key:
        raise TrackerError(
            "logging.wandb.mode: online needs a W&B API key (set WANDB_API_KEY or run "
            "'wandb login'), or use mode: offline and 'wandb sync' later"
        )


# --------------------------------------------------------------------------- callbacks


def tracker_metrics(record: Mapping[str, Any]) -> dict[str, Any]:
    """The numeric scalars of a record (booleans as 0/1), at step = its epoch
    (``training_iteration``, the step key of Tune's logger callbacks)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float)):
            out[key] = value
        elif type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
            out[key] = value.item()
    epoch = record.get("epoch")
    if isinstance(epoch, (int, float)) and not isinstance(epoch, bool):
        out[STEP_KEY] = int(epoch)
    return out


def _on_epochs(base: type, to_record: ToRecord, metric: str) -> type:
    """``base`` (a Tune LoggerCallback) fed with the records' scalars at their epoch."""

    class Tracker(base):
        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            record, replaced = to_record(result)
            if replaced:
                record[metric] = math.nan
            metrics = tracker_metrics(record)
            metrics.setdefault(STEP_KEY, result.get(STEP_KEY, iteration))
            super().log_trial_result(iteration, trial, metrics)

    Tracker.__name__ = Tracker.__qualname__ = f"Study{base.__name__}"
    return Tracker


def callbacks(space: Any, to_record: ToRecord) -> list[Any]:
    """Ray Tune logger callbacks for the trackers of ``space`` (empty when none).

    ``to_record(result)`` turns a Tune result into the record the run's tables keep and
    whether its objective was replaced (``study.runner``'s own function)."""
    metric = space.scheduler.metric
    out: list[Any] = []
    for name in space.logging.trackers:
        if name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            _quiet_mlflow()
            cls = _on_epochs(MLflowLoggerCallback, to_record, metric)
            out.append(
                cls(
                    tracking_uri=mlflow_uri(space),
                    experiment_name=space.logging.mlflow.experiment or space.name,
                    tags={"study": space.name},
                )
            )
        elif name == "tensorboard":
            out.append(_tensorboard_callback(tensorboard_dir(space), to_record, metric))
        elif name == "wandb":
            out.append(_wandb_callback(space, to_record, metric))
    return out


def _tensorboard_callback(logdir: Path, to_record: ToRecord, metric: str) -> Any:
    from ray.tune.logger import TBXLoggerCallback

    base = _on_epochs(TBXLoggerCallback, to_record, metric)

    class StudyTBXLoggerCallback(base):
        """Event files in ``<logdir>/<trial id>/`` (not in Tune's per-session trial
        folders): a trial resumed in a later session continues its own folder."""

        def log_trial_start(self, trial: Any) -> None:
            if trial in self._trial_writer:
                self._trial_writer[trial].close()
            folder = logdir / str(trial)
            folder.mkdir(parents=True, exist_ok=True)
            self._trial_writer[trial] = self._summary_writer_cls(str(folder), flush_secs=30)
            self._trial_result[trial] = {}

    return StudyTBXLoggerCallback()


def _wandb_callback(space: Any, to_record: ToRecord, metric: str) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback

    spec = space.logging.wandb
    base = _on_epochs(WandbLoggerCallback, to_record, metric)

    class StudyWandbLoggerCallback(base):
        def setup(self, *args: Any, **kwargs: Any) -> None:
            # Ray asks for an API key unless WANDB_MODE says offline/disabled
            previous = os.environ.get("WANDB_MODE")
            if spec.mode != "online":
                os.environ["WANDB_MODE"] = spec.mode
            try:
                super().setup(*args, **kwargs)
            finally:
                if previous is None:
                    os.environ.pop("WANDB_MODE", None)
                else:
                    os.environ["WANDB_MODE"] = previous

        def __del__(self) -> None:
            try:  # Ray's __del__ fails when it runs at interpreter exit
                super().__del__()
            except Exception:  # noqa: BLE001
                pass

    folder = wandb_dir(space)
    folder.mkdir(parents=True, exist_ok=True)
    extra = {"entity": spec.entity} if spec.entity else {}
    return StudyWandbLoggerCallback(
        project=spec.project or space.name,
        group=spec.group or space.name,
        mode=spec.mode,
        dir=str(folder),
        **extra,
    )
