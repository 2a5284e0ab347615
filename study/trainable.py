"""The Ray Tune trainable of a study: one trial is one ``ae4ad.fit``, each record
reported to Tune with a checkpoint to continue from.

Plain records travel as they are; the few things Tune needs on top (a finite objective,
where the trial ran, which checkpoint it continued from) are added here, and nowhere
else. The driver's side of the same records is :mod:`study.tuner`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ae4ad.metrics import FINITE_WORST, METRICS
from study.space import fit_config

__all__ = ["device_settings", "objective_stand_in", "reported", "train_trial"]


def objective_stand_in(metric: str, mode: str) -> float:
    """A finite, worst-possible value reported in place of a NaN/missing objective: the
    bound on the wrong side for a metric bounded in [0, 1] (see :mod:`ae4ad.metrics`),
    else a huge finite number.

    >>> objective_stand_in("auc", "max"), objective_stand_in("train_loss", "min")
    (0.0, 1e+30)
    """
    if metric in METRICS:
        return METRICS[metric].worst(mode, finite=True)
    return -FINITE_WORST if mode == "max" else FINITE_WORST


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _start_state(sources: Sequence[Any]) -> tuple[dict | None, list[dict], str | None]:
    """The training state and records of the first readable checkpoint of
    ``sources`` (``ray.tune.Checkpoint``s, newest first), and why the ones before it
    did not read; (None, [], why) when none reads."""
    from ae4ad.trained import load_checkpoint
    from study.checkpoints import RECORDS_FILE

    errors = []
    for source in sources:
        try:
            with source.as_directory() as folder:
                state = load_checkpoint(folder)
                records = json.loads((Path(folder) / RECORDS_FILE).read_text("utf-8"))
            records = [r for r in records if int(r["epoch"]) <= int(state["epoch"])]
            return state, records, "; ".join(errors) or None
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint: try the next one
            errors.append(f"{source.path}: {type(exc).__name__}: {exc}"[:300])
    return None, [], "; ".join(errors) or None


def device_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``device`` and ``gpu_memory_fraction`` a trial's ``ae4ad.fit`` config gets
    from the GPUs Ray assigned this worker (:mod:`study.devices`): ``auto`` is the CPU
    when Ray assigned none; the memory fraction is the trial's GPU share below one GPU,
    unless the space sets ``training.gpu_memory_fraction``."""
    import ray

    from study.devices import memory_fraction, noset_visible_devices, trial_device

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    device = trial_device(
        str(config.get("device", "auto")), ray.get_gpu_ids(), visible, noset_visible_devices()
    )
    share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    fraction = memory_fraction(device, share, config.get("gpu_memory_fraction"))
    return {"device": device, "gpu_memory_fraction": fraction}


def train_trial(
    config: dict,
    datasets: Mapping[str, Any],
    objective: tuple[str, str] = ("auc", "max"),
    resume_from: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """The Ray Tune trainable: train one trial with ``ae4ad.fit`` and report each record
    with a checkpoint.

    ``datasets`` maps data set labels to object references of the data sets the driver
    built (from ``tune.with_parameters``); ``objective`` is (metric, mode) of the
    scheduler. Records are reported as they are, except: lists and mappings only on the
    final record (scores, labels, examples); a NaN or missing objective is replaced by
    a finite worst value with ``metric_replaced: True`` (schedulers and Optuna cannot
    take NaN); ``node_id`` says where the trial ran; ``resumed_from_epoch`` the epoch
    of the checkpoint it continued from (0: trained from scratch; ``resume_error`` says
    why a checkpoint it was given could not be read).

    Every record comes with a ``ray.tune.Checkpoint`` (:mod:`study.checkpoints`): the
    model, the training state and the records so far. The trial continues from
    ``tune.get_checkpoint()`` when Tune restarts it, else from the newest readable of
    ``resume_from[trial_id]`` (checkpoints an earlier session left, for ``--resume``).
    When the storage cannot take checkpoints (a local ``storage_path`` that a worker
    node does not share) the trial goes on without them.
    """
    import ray
    from ray import tune

    import ae4ad
    from study.fusion import is_bundle

    if is_bundle(config):
        _train_bundle(config, datasets, objective)
        return
    data = datasets[config["dataset_label"]]
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    tid = str(config.get("trial_id") or "")
    sources = [tune.get_checkpoint()]
    sources += [tune.Checkpoint(p) for p in (resume_from or {}).get(tid, [])]
    start_state, history, resume_error = _start_state([s for s in sources if s is not None])
    extra = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "resumed_from_epoch": int(start_state["epoch"]) if start_state is not None else 0,
    }
    if resume_error:
        extra["resume_error"] = resume_error
    if ray.get_gpu_ids():
        extra["gpu_ids"] = ",".join(str(g) for g in ray.get_gpu_ids())
    states: list[dict] = []
    fit = ae4ad.fit(
        fit_config(config) | device_settings(config),
        dataset=data,
        start_state=start_state,
        state_out=lambda state, record: states.append(state),
    )
    del start_state
    reporter = _Reporter(tid, objective, history)
    for record in fit:
        reporter.report({**reported(record, objective), **extra}, states.pop() if states else None)


def reported(record: Mapping[str, Any], objective: tuple[str, str]) -> dict[str, Any]:
    """What Tune gets of one of ``fit``'s records: lists and mappings only on the final
    record; a NaN or missing objective replaced by a finite worst value, marked with
    ``metric_replaced: True``."""
    from study.searcher import REPLACED_KEY

    metric, mode = objective
    final = bool(record.get("is_final"))
    out = {k: v for k, v in record.items() if final or _is_scalar(v)}
    value = out.get(metric)
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        out[metric] = objective_stand_in(metric, mode)
        out[REPLACED_KEY] = True
    return out


class _Reporter:
    """Reports a trial's records to Tune, each with a checkpoint of the training state
    and the records so far, until the storage refuses one (then without)."""

    def __init__(self, tid: str, objective: tuple[str, str], history: list[dict]) -> None:
        self.tid, self.metric = tid, objective[0]
        self.history = history
        self.checkpoints = True

    def report(self, out: dict[str, Any], state: dict | None) -> None:
        from ray import tune

        from ae4ad.trained import save_checkpoint
        from study.checkpoints import RECORDS_FILE
        from study.searcher import REPLACED_KEY

        if state is None or not self.checkpoints:
            tune.report(out)
            return
        kept = {k: v for k, v in out.items() if _is_scalar(v) and k != REPLACED_KEY}
        if out.get(REPLACED_KEY):
            kept[self.metric] = float("nan")  # as the tables record it
        self.history.append(kept)
        with tempfile.TemporaryDirectory(prefix="ae4ad-checkpoint-") as folder:
            save_checkpoint(folder, state, extra={"trial_id": self.tid})
            text = json.dumps(self.history, default=str, allow_nan=True)
            (Path(folder) / RECORDS_FILE).write_text(text, encoding="utf-8")
            del state
            try:
                tune.report(out, checkpoint=tune.Checkpoint.from_directory(folder))
            except RuntimeError as exc:
                if "storage" not in str(exc).lower():
                    raise
                self.checkpoints = False  # storage not reachable from this node
                tune.report({**out, "checkpoint_error": " ".join(str(exc).split())[:300]})


def _train_bundle(
    config: Mapping[str, Any], datasets: Mapping[str, Any], objective: tuple[str, str]
) -> None:
    """A bundle of member configs (:mod:`study.fusion`) trained as one fused module by
    ``ae4ad.fused.fit_many``: each member's records reported with ``member`` (its trial
    id) and ``bundle_id``; at every evaluation one checkpoint holds a folder per member
    (a trial checkpoint of its own)."""
    import ray

    from study.fusion import MEMBERS_KEY

    members = list(config[MEMBERS_KEY])
    data = datasets[config["dataset_label"]]
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    extra = {
        "node_id": ray.get_runtime_context().get_node_id(),
        "resumed_from_epoch": 0,
        "bundle_id": config["trial_id"],
    }
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    if gpu_ids:
        extra["gpu_ids"] = ",".join(gpu_ids)
    settings = device_settings(members[0])  # the bundle's GPU share, not a member's
    report_bundle([fit_config(m) | settings for m in members], data, members, objective, extra)


def report_bundle(
    configs: Sequence[Mapping[str, Any]],
    data: Any,
    members: Sequence[Mapping[str, Any]],
    objective: tuple[str, str],
    extra: Mapping[str, Any],
) -> None:
    """Train ``configs`` (the members' fit configs) as one fused bundle and report each
    member's records to Tune (``tune.report``) with ``extra`` and ``member`` (its trial
    id), an evaluation epoch at a time, the epoch's checkpoint holding every member that
    has a state at it.

    ``fit_many`` hands member ``i``'s state to ``state_out`` just before it yields that
    member's record of the same evaluation, so each record is paired with the state
    taken right before it: the checkpoint of evaluation ``e`` holds each member's state
    at ``e`` beside its records up to ``e``."""
    from ae4ad.fused import fit_many

    reporter = _BundleReporter([str(m["trial_id"]) for m in members], objective)
    states: dict[int, dict] = {}
    fits = fit_many(
        list(configs),
        dataset=data,
        state_out=lambda i, state, record: states.__setitem__(i, state),
    )
    for i, record in fits:
        out = {**reported(record, objective), **extra, "member": reporter.ids[i]}
        reporter.add(i, out, states.pop(i, None))
    reporter.flush()


class _BundleReporter:
    """Reports a bundle's records an evaluation epoch at a time, the checkpoint of all
    its members with the epoch's last record: each member's folder holds the state that
    came with its record of that epoch and its records up to it."""

    def __init__(self, ids: list[str], objective: tuple[str, str]) -> None:
        self.ids, self.metric = ids, objective[0]
        self.histories: list[list[dict]] = [[] for _ in ids]
        self.pending: list[tuple[int, dict, dict | None]] = []
        self.alive = set(range(len(ids)))  # members that have not diverged
        self.checkpoints = True

    def add(self, i: int, out: dict[str, Any], state: dict | None) -> None:
        """Member ``i``'s record ``out`` with its training state at that record (None
        when it has none: a diverged member). An epoch's records go to Tune as soon as
        every member still training has reported one (at an evaluation epoch each does),
        else when the next epoch's first record comes."""
        if self.pending and self.pending[-1][1].get("epoch") != out.get("epoch"):
            self.flush()
        self.pending.append((i, out, state))
        complete = {j for j, *_ in self.pending} >= self.alive
        if out.get("status") == "diverged":
            self.alive.discard(i)
        if complete:
            self.flush()

    def flush(self) -> None:
        from ray import tune

        from ae4ad.trained import save_checkpoint
        from study.checkpoints import RECORDS_FILE
        from study.searcher import REPLACED_KEY

        pending, self.pending = self.pending, []
        if not pending:
            return
        for i, out, _ in pending:
            drop = (REPLACED_KEY, "member")
            kept = {k: v for k, v in out.items() if _is_scalar(v) and k not in drop}
            if out.get(REPLACED_KEY):
                kept[self.metric] = float("nan")
            self.histories[i].append(kept)
        for _, out, _ in pending[:-1]:
            tune.report(out)
        last = pending[-1][1]
        if not (self.checkpoints and any(state is not None for *_, state in pending)):
            tune.report(last)
            return
        with tempfile.TemporaryDirectory(prefix="ae4ad-checkpoint-") as folder:
            for i, _, state in pending:
                if state is None:
                    continue
                member = Path(folder) / self.ids[i]
                save_checkpoint(member, state, extra={"trial_id": self.ids[i]})
                text = json.dumps(self.histories[i], default=str, allow_nan=True)
                (member / RECORDS_FILE).write_text(text, encoding="utf-8")
            try:
                tune.report(last, checkpoint=tune.Checkpoint.from_directory(folder))
            except RuntimeError as exc:
                if "storage" not in str(exc).lower():
                    raise
                self.checkpoints = False
                tune.report({**last, "checkpoint_error": " ".join(str(exc).split())[:300]})
