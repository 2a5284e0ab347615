"""Progress of a running study on the console: one line per finished trial (status,
stratum, the parameters that tell trials apart, the objective, time left) and a summary
line every ``progress_interval_s`` seconds."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
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
    ) -> None:
        self.total = total
        self.out = out
        self.interval_s = interval_s
        self.metric = space.scheduler.metric
        self.mode = space.scheduler.mode
        self.counts = {s: int(already_done.get(s, 0)) for s in FINISHED_STATUSES}
        self.done_before = sum(self.counts.values())
        self.best: dict[str, float] = dict(best)
        self.running = 0
        self.started = time.monotonic()
        self.last_line = self.started
        self.show = _shown_keys(space)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def _better(self, new: float, old: float | None) -> bool:
        if old is None:
            return True
        return new > old if self.mode == "max" else new < old

    def finished(self, row: Mapping[str, Any]) -> None:
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

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        done_now = self.done - self.done_before
        remaining = max(0, self.total - self.done)
        if done_now > 0 and remaining > 0:
            left = f", ~{_clock(elapsed / done_now * remaining)} left"
        elif remaining == 0:
            left = ""
        else:
            left = ", time left: estimated after the first trial"
        return f"{_clock(elapsed)} elapsed{left}"

    def summary(self) -> str:
        parts = [f"{self.done}/{self.total} done", f"{self.running} running"]
        for status in ("errored", "diverged", "early-stopped"):
            if self.counts.get(status):
                parts.append(f"{self.counts[status]} {status}")
        best = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.best.items()))
        line = ", ".join(parts)
        if best:
            line += f" | best {self.metric}: {best}"
        return f"{line} | {self._eta()}"

    def tick(self, running: int) -> None:
        self.running = running
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
