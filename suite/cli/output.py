"""Machine-readable output: what ``--format json|csv`` prints instead of a rich table.

JSON and CSV go to stdout alone (progress and warnings are on stderr), so that
``depthbench measure ... --format json | jq`` and ``... --format csv > out.csv`` work. JSON is one
document: a list of rows for tabular commands, an object for single results. CSV has one header
row, the union of the rows' keys in first-seen order; nested values are written as JSON.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import RenderableType

from suite.cli.options import OutputFormat
from suite.console import console


def emit(
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    fmt: OutputFormat,
    table: Callable[[], RenderableType],
) -> None:
    """Print ``rows`` as JSON or CSV, or ``table()`` for ``--format table``.

    A mapping is one result: JSON prints it as an object, CSV as a single row.
    """
    if fmt is OutputFormat.table:
        console.print(table())
    elif fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(_jsonable(rows), indent=2) + "\n")
    else:
        write_csv([rows] if isinstance(rows, Mapping) else rows)


def write_csv(rows: Sequence[Mapping[str, Any]], stream: Any = None) -> None:
    """``rows`` as CSV on ``stream`` (default stdout): nested values as JSON, None as empty."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(stream or sys.stdout, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_cell(value) for key, value in row.items()})


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return json.dumps(_jsonable(value))
    return "" if value is None else value


def _jsonable(value: Any) -> Any:
    """Plain JSON: sets as sorted lists, NaN as null, numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(item) for item in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "item") and callable(value.item):  # numpy and pandas scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
