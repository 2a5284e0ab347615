"""Reading a run folder: the result tables, space.yaml, meta.json, optuna.db and the
paper's reference tables. A missing or unreadable optional table is ``None`` with a note
saying why, never an error."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from study.results import (
    EXAMPLES_FILE,
    HISTORY_FILE,
    META_FILE,
    OPTUNA_FILE,
    SCORES_FILE,
    SPACE_FILE,
    TRIALS_CSV,
    TRIALS_FILE,
)

MAX_CHECKED_EXAMPLES = 5_000_000  # examples.json up to this many characters is parsed whole


class Examples:
    """examples.json, decoded one trial at a time.

    The file maps trial ids to small dicts of nested lists; it grows with the number of
    trials (hundreds of MB for a large study), so only the trials shown are decoded.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._cache: dict[str, dict | None] = {}
        # top-level entries are "<trial id>":{...}; inside them no value is an object, so
        # every '":{' (or '": {') closes a top-level key
        self._pos: dict[str, int] = {}
        for sep in ('":{', '": {'):
            pos = text.find(sep)
            while pos != -1:
                start = text.rfind('"', 0, pos)
                self._pos[text[start + 1 : pos]] = pos + len(sep) - 1
                pos = text.find(sep, pos + len(sep))

    def __contains__(self, trial_id: object) -> bool:
        return str(trial_id) in self._pos

    def __len__(self) -> int:
        return len(self._pos)

    def get(self, trial_id: str) -> dict | None:
        trial_id = str(trial_id)
        if trial_id not in self._cache:
            obj = None
            if trial_id in self._pos:
                try:
                    obj, _ = json.JSONDecoder().raw_decode(self._text, self._pos[trial_id])
                except ValueError:
                    obj = None
            self._cache[trial_id] = obj if isinstance(obj, dict) else None
        return self._cache[trial_id]


@dataclass
class RunData:
    """Everything a report is drawn from; a missing table is None and noted in ``notes``."""

    run_dir: Path
    name: str
    trials: pd.DataFrame | None = None
    history: pd.DataFrame | None = None
    scores: pd.DataFrame | None = None
    examples: Examples | None = None
    space: dict | None = None
    space_text: str | None = None
    meta: dict | None = None
    optuna_db: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)


def read_table(path: Path, notes: dict[str, str], key: str) -> pd.DataFrame | None:
    """A parquet or CSV table, or None (with the reason in ``notes[key]``)."""
    if not path.is_file():
        notes[key] = f"{path.name} is missing"
        return None
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - a broken optional table is reported, not raised
        notes[key] = f"{path.name} could not be read ({type(exc).__name__}: {exc})"
        return None


def read_run(run_dir: Path | str, cls: type[RunData] = RunData) -> RunData:
    """Read the result tables of ``run_dir`` into a ``cls``; optional ones may be missing.

    Raises ``FileNotFoundError`` when ``run_dir`` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"{run_dir}: no such run folder (expected <storage_path>/<study name>/ holding "
            "trials.parquet)"
        )
    notes: dict[str, str] = {}
    run = cls(run_dir=run_dir, name=run_dir.name, notes=notes)
    trials_path = run_dir / TRIALS_FILE
    if not trials_path.is_file() and (run_dir / TRIALS_CSV).is_file():
        trials_path = run_dir / TRIALS_CSV
    run.trials = read_table(trials_path, notes, "trials")
    run.history = read_table(run_dir / HISTORY_FILE, notes, "history")
    run.scores = read_table(run_dir / SCORES_FILE, notes, "scores")
    run.examples = _read_examples(run_dir / EXAMPLES_FILE, notes)
    run.space_text, run.space = _read_space(run_dir / SPACE_FILE, notes)
    run.meta = _read_meta(run_dir / META_FILE, notes)
    if (run_dir / OPTUNA_FILE).is_file():
        run.optuna_db = run_dir / OPTUNA_FILE
    if run.space and isinstance(run.space.get("name"), str):
        run.name = run.space["name"]
    elif run.trials is not None and "study" in run.trials.columns and len(run.trials):
        run.name = str(run.trials["study"].iloc[0])
    return run


def _read_examples(path: Path, notes: dict[str, str]) -> Examples | None:
    if not path.is_file():
        notes["examples"] = f"{path.name} is missing"
        return None
    try:
        text = path.read_text(encoding="utf-8")
        if len(text) <= MAX_CHECKED_EXAMPLES:  # small enough to check it all
            json.loads(text)
        examples = Examples(text)
        if not len(examples) and text.strip() != "{}":
            raise ValueError("no trial entries found")
        return examples
    except (OSError, ValueError) as exc:
        notes["examples"] = f"{path.name} could not be read ({exc})"
        return None


def _read_space(path: Path, notes: dict[str, str]) -> tuple[str | None, dict | None]:
    if not path.is_file():
        notes["space"] = f"{path.name} is missing"
        return None, None
    text = None
    try:
        text = path.read_text(encoding="utf-8")
        loaded = yaml.safe_load(text)
        return text, loaded if isinstance(loaded, dict) else None
    except (OSError, yaml.YAMLError) as exc:
        notes["space"] = f"{path.name} could not be read ({exc})"
        return text, None


def _read_meta(path: Path, notes: dict[str, str]) -> dict | None:
    if not path.is_file():
        notes["meta"] = f"{path.name} is missing"
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
        return loaded if isinstance(loaded, dict) else None
    except (OSError, ValueError) as exc:
        notes["meta"] = f"{path.name} could not be read ({exc})"
        return None


def paper_tables() -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """The paper's Table 1 (AUC/AP/... per latent_dim) and Table 2 (methods), with a
    ``_norm`` column of normalised data-set labels; (None, None) when they cannot be read."""
    reference = resources.files("study") / "reference"
    try:
        with resources.as_file(reference / "paper_table1_latent_dim.csv") as path:
            t1 = pd.read_csv(path, comment="#")
        with resources.as_file(reference / "paper_table2_methods.csv") as path:
            t2 = pd.read_csv(path, comment="#")
    except (OSError, ValueError):
        return None, None
    t1["_norm"] = t1["dataset"].map(norm_label)
    t2["_norm"] = t2["dataset"].map(norm_label)
    return t1, t2


def norm_label(label: str) -> str:
    """A data-set label for matching: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", str(label).lower())
