"""How every benchmark writes its results: one way to lay out a markdown table, and one way to save
a run's record as JSON with its markdown beside it (bench/results/NAME.json and NAME.md)."""
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def table(header, rows):
    """The lines of a markdown table: `header`'s cells, then each row's cells."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def save(record, markdown, name, folder=RESULTS, default=None):
    """Write `name`.json (the record) and `name`.md (its markdown) into `folder`; returns the
    markdown file's path. `default`: json.dumps's, for records that hold more than JSON's types."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2, default=default) + "\n")
    (folder / f"{name}.md").write_text(markdown + "\n")
    return folder / f"{name}.md"
