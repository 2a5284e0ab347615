"""The bookkeeping of one session of a run (one ``run_study`` call) in its folder: the
space it ran (``space.yaml``) and an entry in ``meta.json``'s ``sessions`` (when, where,
how many trials it started and finished, how it ended); the run's ``status`` follows.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from study.space import load_space
    >>> space = load_space("smoke", [f"storage_path={tempfile.mkdtemp()}"])
    >>> session = RunSession(space, address=None, resumed=False, already=0, keep_models="all")
    >>> session.open()
    >>> read_meta(space.run_dir)["status"], session.number
    ('running', 1)
    >>> session.close("finished", started=2, finished=2)
    >>> meta = read_meta(space.run_dir)
    >>> meta["status"], meta["sessions"][-1]["trials_finished"]
    ('finished', 2)
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import yaml

from study.results import SPACE_FILE, atomic_write_text, read_meta, update_meta, utc_now

if TYPE_CHECKING:
    from study.schema import Space

__all__ = ["RunSession"]


class RunSession:
    """One session of ``space``'s run: :meth:`open` before the first trial, :meth:`close`
    at the end, whatever happened in between."""

    def __init__(
        self,
        space: Space,
        address: str | None,
        resumed: bool,
        already: int,
        keep_models: str,
    ) -> None:
        self.space = space
        self.run_dir = space.run_dir
        self.number = len(read_meta(self.run_dir).get("sessions", [])) + 1
        self.entry = {
            "session": self.number,
            "started_at": None,
            "hostname": socket.gethostname(),
            "ray_address": address or os.environ.get("RAY_ADDRESS") or "local",
            "resumed": bool(resumed and already),
            "trials_already_finished": already,
            "trials_started": 0,
            "trials_finished": 0,
            "keep_models": keep_models,
        }
        self.is_open = False

    def open(self) -> None:
        """Write the space the session runs and its entry in meta.json (status running)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(self.space.to_dict(), sort_keys=False)
        atomic_write_text(self.run_dir / SPACE_FILE, text)
        meta = read_meta(self.run_dir)
        self.entry["started_at"] = utc_now()
        update_meta(
            self.run_dir,
            study=self.space.name,
            status="running",
            started_at=meta.get("started_at") or utc_now(),
            finished_at=None,
            sessions=[*meta.get("sessions", []), self.entry],
        )
        self.is_open = True

    def close(self, status: str, started: int | None = None, finished: int | None = None) -> None:
        """Record how the session ended (``finished`` or ``interrupted``) and how many
        trials it started and finished; the run's status becomes ``status``."""
        if not self.is_open:
            return
        sessions = list(read_meta(self.run_dir).get("sessions", []))
        if sessions and sessions[-1].get("session") == self.number:
            sessions[-1].update(finished_at=utc_now(), status=status)
            if started is not None:
                sessions[-1].update(trials_started=started, trials_finished=finished)
        update_meta(self.run_dir, status=status, finished_at=utc_now(), sessions=sessions)
