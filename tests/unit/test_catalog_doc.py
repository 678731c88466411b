"""docs/catalog.md lists exactly what catalog.yaml holds."""

from __future__ import annotations

from pathlib import Path

from proxy import catalog
from proxy.catalog import doc

DOC = Path(__file__).resolve().parents[2] / "docs" / "catalog.md"


def test_docs_catalog_is_generated_from_the_data_file() -> None:
    assert DOC.read_text(encoding="utf-8") == doc.render(catalog.builtin()), (
        "regenerate it: .venv/bin/python -m proxy.catalog.doc > docs/catalog.md"
    )


def test_every_entry_has_a_row() -> None:
    text = DOC.read_text(encoding="utf-8")
    for entry in catalog.builtin():
        assert f"| `{entry.name}` |" in text and f"[{entry.repo}]({entry.source})" in text
