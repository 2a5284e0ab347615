"""Progress of a running study on the console: one line per finished trial (status,
stratum, the parameters that tell trials apart, the objective, time left) and a summary
line every ``progress_interval_s`` seconds.

Time left comes from training epochs: the epochs the session has trained so far (every
trial's, a fused bundle's members each, as their evaluations report them) over the time
it took up to the latest evaluation, against the epochs still to train, less the time
since that evaluation (so between evaluations it counts down instead of growing). So it
is there from the first evaluation on, also while bundles run, and it does not jump when
a bundle's members finish together (their epochs were counted at their evaluations)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from study.results import FINISHED_STATUSES

if TYPE_CHECKING:
    from study.schema import Space

__all__ = ["Progress", "best_so_far"]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _clock(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Compact progress lines: one per finished trial, a summary now and then."""

    def __init__(
        self,
        space: Space,
        total: int,
        already_done: Mapping[str, int],
        best: Mapping[str, float],
        out: TextIO,
        interval_s: float,
        epochs: Mapping[str, int] | None = None,
    ) -> None:
        """``epochs``: the planned epochs of each trial id to run (an Optuna search's
        trials not yet asked for count as their mean)."""
        self.total = total
        self.out = out
        self.interval_s = interval_s
        self.metric = space.scheduler.metric
        self.mode = space.scheduler.mode
        self.counts = {s: int(already_done.get(s, 0)) for s in FINISHED_STATUSES}
        self.done_before = sum(self.counts.values())
        self.best: dict[str, float] = dict(best)
        self.running: list[int] = []  # trials in each running Ray Tune trial
        self.planned = {str(k): int(v) for k, v in (epochs or {}).items()}
        self.typical = sum(self.planned.values()) / len(self.planned) if self.planned else None
        self.trained: dict[str, int] = {}  # epochs trained in this session, by trial id
        self.resumed_from: dict[str, int] = {}
        self.ended: set[str] = set()
        self.started = time.monotonic()
        self.measured_at = self.started  # when the epochs trained last grew
        self.last_line = self.started
        self.show = _shown_keys(space)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def _better(self, new: float, old: float | None) -> bool:
        if old is None:
            return True
        return new > old if self.mode == "max" else new < old

    def advanced(self, trial_id: str, epoch: int, resumed_from: int = 0) -> None:
        """Trial ``trial_id`` reported its record of ``epoch``, continuing from a
        checkpoint of epoch ``resumed_from`` (0: from scratch)."""
        self.resumed_from[trial_id] = int(resumed_from)
        trained = max(0, int(epoch) - int(resumed_from))
        if trained > self.trained.get(trial_id, 0):
            self.measured_at = time.monotonic()
        self.trained[trial_id] = trained

    def finished(self, row: Mapping[str, Any]) -> None:
        self.ended.add(str(row.get("trial_id")))
        status = row["status"]
        self.counts[status] = self.counts.get(status, 0) + 1
        value = row.get(self.metric)
        stratum = str(row.get("stratum"))
        if (
            status == "completed"
            and isinstance(value, (int, float))
            and math.isfinite(value)
            and self._better(float(value), self.best.get(stratum))
        ):
            self.best[stratum] = float(value)
        params = " ".join(f"{k}={_short(row.get(k))}" for k in self.show if row.get(k) is not None)
        if status == "completed" or status == "early-stopped":
            what = f"{self.metric}={value:.3f}" if isinstance(value, (int, float)) else ""
            if status == "early-stopped":
                what += f" (stopped at epoch {row.get('epochs_done')})"
        else:
            what = str(row.get("error") or "").splitlines()[0][:120] if row.get("error") else ""
        wall = row.get("wall_s")
        took = f" {wall:.1f} s" if isinstance(wall, (int, float)) else ""
        width = len(str(self.total))
        self._print(
            f"[{self.done:>{width}}/{self.total}] {status:<13} {row.get('stratum')} {params} "
            f"{what}{took} | {self._eta()}"
        )

    def _epochs_left(self, remaining: int) -> float | None:
        """Epochs still to train for the ``remaining`` unfinished trials (None when the
        planned epochs are unknown)."""
        if self.typical is None:
            return None
        under_way = [t for t in self.trained if t not in self.ended]
        left = 0.0
        for tid in under_way:
            planned = self.planned.get(tid, self.typical)
            left += max(0.0, planned - self.resumed_from.get(tid, 0) - self.trained[tid])
        return left + max(0, remaining - len(under_way)) * self.typical

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        done_now = self.done - self.done_before
        remaining = max(0, self.total - self.done)
        trained = sum(self.trained.values())
        epochs_left = self._epochs_left(remaining)
        if remaining == 0:
            left = ""
        elif trained > 0 and epochs_left is not None:
            measured = self.measured_at - self.started
            since = time.monotonic() - self.measured_at
            left = f", ~{_clock(max(0.0, measured / trained * epochs_left - since))} left"
        elif done_now > 0:
            left = f", ~{_clock(elapsed / done_now * remaining)} left"
        else:
            left = ", time left: estimated after the first evaluation"
        return f"{_clock(elapsed)} elapsed{left}"

    def _running_text(self) -> str:
        bundles = [n for n in self.running if n > 1]
        if not bundles:
            return f"{len(self.running)} running"
        alone = len(self.running) - len(bundles)
        plural = "s" if len(bundles) != 1 else ""
        text = f"running: {len(bundles)} bundle{plural} ({sum(bundles)} trials)"
        return text + (f", {alone} trial{'s' if alone != 1 else ''}" if alone else "")

    def summary(self) -> str:
        parts = [f"{self.done}/{self.total} done", self._running_text()]
        for status in ("errored", "diverged", "early-stopped"):
            if self.counts.get(status):
                parts.append(f"{self.counts[status]} {status}")
        best = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.best.items()))
        line = ", ".join(parts)
        if best:
            line += f" | best {self.metric}: {best}"
        return f"{line} | {self._eta()}"

    def tick(self, running: int | Sequence[int]) -> None:
        """``running``: how many Ray Tune trials run, or the number of trials each
        running one trains (a fused bundle's members)."""
        self.running = [1] * running if isinstance(running, int) else [int(n) for n in running]
        if time.monotonic() - self.last_line >= self.interval_s:
            self._print(self.summary())

    def _print(self, line: str) -> None:
        self.last_line = time.monotonic()
        print(line.rstrip(), file=self.out, flush=True)


def _shown_keys(space: Space) -> list[str]:
    """The config keys that tell trials apart in progress lines."""
    keys: list[str] = []
    for model in space.models:
        keys += [k for k, s in model.params.items() if not s.is_fixed and k not in keys]
    for dataset in space.datasets:
        for k, s in space.training_for(dataset).items():
            if not s.is_fixed and k not in keys:
                keys.append(k)
    if len(space.seeds) > 1 or space.search.type == "optuna":
        keys.append("seed")
    return keys


def best_so_far(
    rows: Iterable[Mapping[str, Any]],
    belongs: Callable[[Mapping[str, Any]], bool],
    metric: str,
    mode: str,
) -> dict[str, float]:
    """The best finite ``metric`` of the completed rows for which ``belongs(row)``, by
    stratum (the progress lines of a resumed run start from them).

    >>> rows = [{"stratum": "a", "status": "completed", "auc": v} for v in (.7, .9, .8)]
    >>> best_so_far(rows, lambda r: True, "auc", "max"), best_so_far(rows, bool, "auc", "min")
    ({'a': 0.9}, {'a': 0.7})
    """
    best: dict[str, float] = {}
    for row in rows:
        value = row.get(metric)
        if not (belongs(row) and row.get("status") == "completed"):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            key, old = str(row.get("stratum")), best.get(str(row.get("stratum")))
            if old is None or (value > old if mode == "max" else value < old):
                best[key] = float(value)
    return best
