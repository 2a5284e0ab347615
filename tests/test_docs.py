"""The documentation holds together: every relative link of README.md and docs/*.md
points to a file that exists (and an anchor to a heading of it), README.md is a landing
page of at most 300 lines with the Quick start's two commands, docs/search_spaces.md
documents every key of the space schema, and docs/data.md every parameter of the data
sources it describes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ae4ad.data
from study import schema
from study.params import TRAINING_RULES

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")

# The Quick start's two commands, exactly as a new user copies them.
RUN_MAIN_STUDY = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    "pip install -e . && python run_study.py --space latent.yaml"
)
RUN_TESTS = (
    "(command -v chromium && command -v chromedriver || (apt-get update && apt-get install -y "
    "chromium chromium-driver)) && python3 -m venv .venv && . .venv/bin/activate && pip "
    "install torch==2.13.0 && pip install -e '.[test,cluster]' && python -m pytest"
)


def prose(text: str) -> str:
    """``text`` without its fenced code blocks (links there are examples, not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and
    underscores kept), spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    return [
        target
        for target in _LINK.findall(prose(page.read_text()))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_slug_follows_github():
    assert slug("Keys") == "keys"
    assert (
        slug("### `folder` — your own images (MVTec-style folders, explicit folders, or a CSV)")
        == "-folder--your-own-images-mvtec-style-folders-explicit-folders-or-a-csv"
    )
    assert slug("`folder` — your own (a CSV)") == "folder--your-own-a-csv"
    assert slug("Scoring new images (predict)") == "scoring-new-images-predict"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    assert links(page) or page.name != "README.md"
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_readme_is_a_landing_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    blocks = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    assert blocks[:2] == [RUN_MAIN_STUDY, RUN_TESTS]
    heads = re.findall(r"^## (.*)$", text, flags=re.M)
    for section in ("Quick start", "What it found", "Your own data", "Search spaces"):
        assert section in heads
    # the key-by-key reference lives in docs/search_spaces.md only
    assert "| `grace_period` |" not in text and "| `max_failures` |" not in text


def _documented(text: str, key: str) -> bool:
    return f"| `{key}` |" in text or re.search(rf"\| `[^|]*\b{re.escape(key)}\b[^|]*` \|", text)


def test_search_spaces_doc_has_every_schema_key():
    text = (REPO / "docs" / "search_spaces.md").read_text()
    sections = {
        "top level": schema.Space,
        "datasets[i]": schema.DatasetSpec,
        "models[i]": schema.ModelSpec,
        "search": schema.SearchSpec,
        "scheduler": schema.SchedulerSpec,
        "resources": schema.ResourceSpec,
        "failure": schema.FailureSpec,
    }
    missing = [
        f"{where}: {key}"
        for where, model in sections.items()
        for key in model.model_fields
        if not _documented(text, key)
    ]
    missing += [f"training: {k}" for k in TRAINING_RULES if not _documented(text, k)]
    assert not missing, f"docs/search_spaces.md lacks {missing}"


def test_data_doc_has_every_source_parameter():
    """Every source documented in docs/data.md (the phantom has its own page)."""
    text = (REPO / "docs" / "data.md").read_text()
    missing = [
        f"{name}: {param}"
        for name in sorted(set(ae4ad.data.DATA_SOURCES) - {"phantom"})
        for param in ae4ad.data.source_params(name)
        if f"`{param}`" not in text
    ]
    assert not missing, f"docs/data.md lacks {missing}"
