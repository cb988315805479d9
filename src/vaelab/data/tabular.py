"""Mixed-type tables: a CSV with a header, a type per column, missing cells kept as NaN.

``load_table("patients.csv")`` (what ``load_data(..., tabular=True)`` and
``vaelab train --likelihood mixed`` call) reads a CSV whose first row names the columns and
gives :class:`~vaelab.data.splits.DataSplits` of kind ``"mixed"``: x ``[N, C]`` float32 with
one value per column (a numeric value, 0/1, a level id 0..K-1, a count), NaN for a missing
cell, and ``columns``, the :class:`~vaelab.distributions.mixed.Column` of each (its type,
its level names, the training split's mean and standard deviation). Rows with missing cells
are kept: the likelihood masks those cells out.

Missing cells: empty, or (any case) ``NA``, ``N/A``, ``NaN``, ``null`` or ``?``.

Column types, when not declared, are read off the observed cells of the whole file:

* any cell that is not a number: ``categorical``, levels in sorted order;
* only 0 and 1: ``binary``;
* whole numbers (written without a decimal point) with at most :data:`AUTO_LEVELS`
  distinct values: ``categorical``, levels in numeric order;
* other non-negative whole numbers: ``count``;
* anything else (decimals, negative whole numbers with many values): ``numeric``.

``column_types="age=numeric,visits=count"`` overrides the types of the columns it names (a
type that does not fit a cell is an error naming column, line and value); statistics given
with a type (``age=numeric(45;12)``: mean and standard deviation; ``visits=count(7.5)``: mean)
are kept instead of the training split's; an entry that lists its levels (``city=categorical(Oslo|Paris|Rome)``, as a model spec keeps them) fixes
the level ids, and a cell outside them is an error. A ``label`` column holds class labels and
covariates asked for by name are taken out of the features, as for plain CSV files (a
covariate of text values is categorical). Levels are read over every row (train and test);
a level that the validation or test split holds but training never saw is refused, since
the model cannot learn it.

>>> s = load_table("patients.csv")  # doctest: +SKIP
>>> s.kind, [c.type for c in s.columns]  # doctest: +SKIP
('mixed', ['numeric', 'binary', 'categorical', 'count'])
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vaelab.data.splits import DataSplits, make_splits
from vaelab.distributions.mixed import Column, declared_statistics, format_columns, parse_column_types
from vaelab.errors import VaelabError
from vaelab.spec import ModelSpec, PartSpec

__all__ = ["AUTO_LEVELS", "MISSING", "Table", "read_table", "load_table", "missing_cells", "missing_note",
           "decode_rows", "table_csv", "table_spec"]

# bytes that reading a table takes per cell, at least: each cell is a Python string in lists first (8-byte
# references to shared one-character strings, more for others), then float64 values (measured: 35 for one-digit
# cells, 96 for decimals like 0.123456, on a table of 20,000 x 200)
TABLE_BYTES_PER_NUMBER = 32
AUTO_LEVELS = 10  # whole-number columns with at most this many distinct values are read as categorical
MISSING = frozenset({"", "na", "n/a", "nan", "null", "?"})  # cells that mark a missing value (any case)
_WHOLE = re.compile(r"^[+-]?[0-9]+$")  # ASCII digits only: \d matches the digits of every script


@dataclass
class Table:
    """A CSV table as read, before splitting: x ``[N, C]`` float64 (NaN: missing), the columns
    (types and levels; no statistics yet), and the label and covariate columns."""

    x: np.ndarray
    columns: tuple[Column, ...]
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    covariates: np.ndarray | None = None  # [N, P] float64
    covariate_classes: tuple[tuple[str, ...], ...] = ()
    lines: np.ndarray | None = None  # [N] the file line of each row, for messages


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _number(cell: str) -> float | None:
    """The number a cell holds, written as numpy's CSV reader reads numbers (ASCII digits, a
    sign, a point, an exponent, ``inf``, ``nan``), else None. Python's ``float()`` also reads
    ``1_000`` and other scripts' digits (``٣``), which numpy does not: see :func:`foreign_number`."""
    if not cell.isascii() or "_" in cell:
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def foreign_number(cell: str) -> str | None:
    """How ``cell`` is written when Python's ``float()`` reads it as a number and vaelab does
    not (``'1_000'``: with '_' between digits; ``'٣'``, ``'１２'``: with digits other than ASCII
    0-9), with the number as vaelab would read it; None for any other cell. Such a cell is
    refused, naming its line and column: it is a number to one reader and text (a header
    name, a level) to another, so neither reading is safe to pick silently."""
    if cell.isascii() and "_" not in cell:
        return None
    try:
        value = float(cell)
    except ValueError:
        return None
    how = ["with '_' between digits"] if "_" in cell else []
    odd = next((ch for ch in cell if not ch.isascii()), None)
    if odd is not None:
        how.append(f"with the non-ASCII digit {odd!r} (U+{ord(odd):04X})")
    plain = str(int(value)) if abs(value) < 2**53 and value == int(value) else repr(value)  # 1000, 0.5, 1e+300
    return (f"a number written {' and '.join(how)}, which vaelab does not read as a number; write it in ASCII "
            f"digits 0-9 without separators, as {plain}")


def first_foreign(cells: Sequence[str]) -> tuple[int, str] | None:
    """The position of the first cell of ``cells`` that :func:`foreign_number` describes, and
    its description; None when there is none (a fast pass: most cells are plain ASCII)."""
    for i, cell in enumerate(cells):
        if not cell.isascii() or "_" in cell:
            how = foreign_number(cell)
            if how is not None:
                return i, how
    return None


def utf8_problem(path: Path, what: str) -> str | None:
    """The message for a text file that is not UTF-8: the first byte that is not (its offset in
    the text, decompressed for a ``.gz``, and its line), what it is in Latin-1 / Windows-1252
    (the usual other encoding of a spreadsheet's CSV) and how to save the file as UTF-8; None
    when the file reads as UTF-8 (or cannot be read at all: the caller says so)."""
    gz = path.name.lower().endswith(".gz")
    offset, line, carry = 0, 1, b""
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            while True:
                block = f.read(2**20)
                data = carry + block
                if not data:
                    return None
                if offset == 0 and data[:2] in (b"\xff\xfe", b"\xfe\xff"):
                    return (f"{what} is UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8; save it as "
                            f"UTF-8, e.g. {_reencode(path, 'UTF-16')}")
                try:
                    data.decode("utf-8")
                    good = len(data)
                except UnicodeDecodeError as err:
                    cut_short = err.reason == "unexpected end of data" and err.end == len(data)
                    if not (cut_short and block):  # a bad byte (or a sequence cut short at the end of the file)
                        bad = offset + err.start
                        line += data[:err.start].count(b"\n")
                        byte = data[err.start]
                        where = "of its decompressed text " if gz else ""
                        return (f"{what} is not UTF-8 text: byte 0x{byte:02x} at offset {bad:,} {where}(line {line}) "
                                f"{_other_encoding(byte)}; save it as UTF-8, e.g. "
                                f"{_reencode(path, 'WINDOWS-1252' if 0x80 <= byte < 0xA0 else 'LATIN1')}")
                    good = err.start  # a character split between two blocks: read on
                line += data[:good].count(b"\n")
                offset += good
                carry = data[good:]
    except (OSError, EOFError, zlib.error):
        return None


def _other_encoding(byte: int) -> str:
    try:
        char = bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:
        return "is not a character of UTF-8 nor of Windows-1252"
    return f"is {char!r} in Latin-1 / Windows-1252, so the file is probably in that encoding"


def _reencode(path: Path, encoding: str) -> str:
    if path.name.lower().endswith(".gz"):
        stem = path.name[:-len(".csv.gz")] if path.name.lower().endswith(".csv.gz") else path.name[:-3]
        return f"zcat '{path}' | iconv -f {encoding} -t UTF-8 | gzip > '{stem}-utf8.csv.gz'"
    stem = path.name[:-4] if path.name.lower().endswith(".csv") else path.name
    return f"iconv -f {encoding} -t UTF-8 '{path}' > '{stem}-utf8.csv' (or save it from the spreadsheet as CSV UTF-8)"


def not_utf8(path: Path, what: str, err: BaseException) -> VaelabError:
    """The error for a CSV file that failed to read: where it is not UTF-8 (:func:`utf8_problem`)
    when a decoding error says so, else that it is not readable, with the reader's reason."""
    problem = utf8_problem(path, what) if isinstance(err, UnicodeDecodeError) else None
    return VaelabError(problem or f"{what} is not a readable UTF-8 CSV file ({' '.join(str(err).split())[:200]})")


def _is_missing(cell: str) -> bool:
    return cell.lower() in MISSING


def separator_problem(what: str, path: Path, rows: list[list[str]]) -> str | None:
    """The message for a table separated by semicolons or tabs where vaelab reads commas, or None.

    ``rows``: the first (up to two) non-blank rows as read with commas. Each must split into
    the same number of fields at the other separator, more than at commas, or into numbers
    once a decimal comma is read as a point (``0,5;1,25`` of a European spreadsheet). A header
    cell that merely holds a semicolon (``"dose; mg",weight`` over ``1,2``) is not flagged."""
    for sep, name in ((";", "semicolon"), ("\t", "tab")):
        counts, decimal = set(), False
        for cells in rows:
            line = ",".join(cells)
            fields = [f.strip() for f in line.split(sep)]
            commas = len(fields) > 1 and all(_number(f.replace(",", ".")) is not None for f in fields)
            if sep not in line or not (len(fields) > len(cells) or commas):
                break
            counts.add(len(fields))
            decimal = decimal or (commas and "," in line)
        else:
            if rows and len(counts) == 1:
                shown = repr(",".join(rows[0])[:60])
                how = f"sep={sep!r}" + (", decimal=','" if decimal else "")
                return (f"{what} looks {name}-separated{' with decimal commas' if decimal else ''} (first row {shown}); "
                        f"vaelab reads comma-separated values with '.' decimals: save it with commas, e.g. "
                        f"pandas.read_csv('{path}', {how}).to_csv('{path.stem.removesuffix('.csv')}-commas.csv', "
                        "index=False)")
    return None


def _reads_as_data(header: list[str], rows: list[list[str]], look: int = 1000) -> bool:
    """Whether the first row is one more example rather than names: a number over every column
    of numbers, and over every other column one of its own values (``41.2,Oslo`` above ages
    and cities). A header that names its columns has at least one name that is neither."""
    for j, name in enumerate(header):
        column = [row[j] for row in rows[:look] if j < len(row) and row[j] and not _is_missing(row[j])]
        numeric = bool(column) and all(_number(c) is not None for c in column)
        if _number(name) is not None:
            if not numeric:
                return False
        elif numeric or name not in column:
            return False
    return True


def _read_rows(path: Path, what: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows of stripped cells and their line numbers (blank lines skipped)."""
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            rows, lines = [], []
            for row in reader:
                # a blank line is skipped; a row of empty cells ("," ...) is a row whose cells are all missing,
                # kept, so that every output row (reconstruct, encode) still matches its input row
                if len(row) > 1 or any(cell.strip() for cell in row):
                    rows.append([cell.strip() for cell in row])
                    lines.append(reader.line_num)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, csv.Error) as err:
        raise not_utf8(path, what, err) from None
    if not rows:
        raise VaelabError(f"{what} is empty; a table needs a header row naming its columns, then one row per example")
    problem = separator_problem(what, path, rows[:2])
    if problem:
        raise VaelabError(problem)
    header, rows, lines = rows[0], rows[1:], lines[1:]
    foreign = first_foreign(header)
    if foreign is not None and all(_number(c) is not None or foreign_number(c) for c in header):
        raise VaelabError(f"{what}: line 1, column {foreign[0] + 1} is {header[foreign[0]]!r}, {foreign[1]}")
    if all(_number(c) is not None for c in header):
        raise VaelabError(f"{what} has no header row (its first row is all numbers); the mixed likelihood needs "
                          "the first row to name the columns")
    if _reads_as_data(header, rows):
        raise VaelabError(f"{what} has no header row: its first row ({', '.join(header)[:80]}) reads as data (a number "
                          "over each numeric column, a level of each other column); the mixed likelihood needs the "
                          "first row to name the columns")
    if any(not c for c in header):
        raise VaelabError(f"{what}: header column {header.index('') + 1} has no name; name every column")
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise VaelabError(f"{what}: column name(s) {', '.join(map(repr, twice))} appear more than once in the header")
    if not rows:
        raise VaelabError(f"{what} has a header but no data rows")
    for row, line in zip(rows, lines):
        if len(row) != len(header):
            raise VaelabError(f"{what}: line {line} has {len(row)} cells but the header names {len(header)} columns; "
                              "make them match (an empty cell is a missing value)")
    return header, rows, lines


def _level_order(values: set[str]) -> list[str]:
    """Levels sorted as numbers when they all are, else as text."""
    if all(_number(v) is not None for v in values):
        return sorted(values, key=lambda v: (float(v), v))
    return sorted(values)


def _canonical(cell: str) -> str:
    """A numeric level's name: ``"3"`` for ``3``, ``03`` and ``3.0``; text as it is."""
    v = _number(cell)
    if v is None or not math.isfinite(v):
        return cell
    return str(int(v)) if v == int(v) else repr(v)


def _infer_type(name: str, cells: list[str]) -> str:
    numbers = [_number(c) for c in cells]
    if any(v is None for v in numbers):
        return "categorical"
    values = set(numbers)
    if values <= {0.0, 1.0}:
        return "binary"
    if all(_WHOLE.match(c) for c in cells):
        if len(values) <= AUTO_LEVELS:
            return "categorical"
        if min(values) >= 0:  # type: ignore[type-var]
            return "count"
    return "numeric"


def _encode(name: str, kind: str, cells: list[str], lines: list[int], what: str,
            levels: tuple[str, ...] = ()) -> tuple[np.ndarray, Column]:
    """One column's cells as float64 values (NaN: missing) and its Column (no statistics)."""
    out = np.full(len(cells), np.nan)
    observed = [i for i, c in enumerate(cells) if not _is_missing(c)]

    def bad(i: int, need: str) -> VaelabError:
        return VaelabError(f"{what}: column '{name}' is {kind} but holds {cells[i]!r} at line {lines[i]}; {need}")

    if kind == "categorical":
        names = [_canonical(cells[i]) for i in observed]
        order = list(levels) if levels else _level_order(set(names))
        ids = {v: k for k, v in enumerate(order)}
        for i, v in zip(observed, names):
            if v not in ids:
                raise bad(i, f"its levels are {', '.join(order)}: mark the cell missing, or declare the level "
                             "(--column-types NAME=categorical(LEVEL|...)) and train anew")
            out[i] = ids[v]
        return out, Column(name, kind, levels=tuple(order))
    for i in observed:
        v = _number(cells[i])
        if v is None or not math.isfinite(v):
            hint = {"numeric": "declare it categorical (--column-types NAME=categorical) or fix the cell",
                    "count": "a count column holds 0, 1, 2, ...", "binary": "a binary column holds 0 or 1"}[kind]
            raise bad(i, f"{'a finite number' if v is not None else 'not a number'}: {hint}")
        if kind == "binary" and v not in (0.0, 1.0):
            raise bad(i, "a binary column holds 0 or 1 (declare a column of other levels categorical)")
        if kind == "count" and (v < 0 or v != round(v)):
            raise bad(i, "a count column holds whole numbers 0, 1, 2, ... (declare it numeric for other values)")
        out[i] = v
    return out, Column(name, kind)


def read_table(path: str | os.PathLike[str], *, column_types: str = "", covariates: Sequence[str] = ()) -> Table:
    """Read a mixed-type CSV table (see the module docstring); every problem is a one-line
    :class:`~vaelab.errors.VaelabError` naming the file, the column and the line."""
    path = Path(path)
    what = f"data file '{path}'"
    name = path.name.lower()
    if not (name.endswith(".csv") or name.endswith(".csv.gz")):
        raise VaelabError(f"{what}: the mixed likelihood reads a CSV table (.csv or .csv.gz) with a header row; "
                          "for other data choose another --likelihood")
    from vaelab.data.paths import check_data_path

    check_data_path(path)  # a FIFO, a device, a link loop: not "not found"
    if not path.is_file():
        raise VaelabError(f"{what} not found; pass --data with an existing .csv file")
    from vaelab.data.sources import check_text_fits

    # a table too large for memory (each cell a Python string first), a .csv.gz that inflates past it: refused unparsed
    check_text_fits(path, what, per_number=TABLE_BYTES_PER_NUMBER,
                    fix="use a smaller table (the mixed likelihood reads its table into memory)")
    header, rows, lines = _read_rows(path, what)
    cells_of = {h: [row[j] for row in rows] for j, h in enumerate(header)}
    label = next((h for h in header if h.lower() == "label"), None)
    for cov in covariates:
        if cov not in header or cov == label:
            raise VaelabError(f"--condition-on {cov}: {what} has no column '{cov}' (columns: {', '.join(header)})")
    features = [h for h in header if h != label and h not in covariates]
    if not features:
        raise VaelabError(f"{what} has no feature columns besides the label and covariates; add some")
    declared = parse_column_types(column_types)
    if set(declared) == set(features):  # every column declared (e.g. a model's own): in the declared order
        features = list(declared)
    for col in declared:
        if col not in features:
            role = " (it is the label column)" if col == label else " (it is a covariate)" if col in covariates else ""
            raise VaelabError(f"--column-types names column '{col}' but {what} has no feature column of that "
                              f"name{role}; its columns: {', '.join(features)}")
    for h in header:  # '1_000', '٣': a number to Python's float(), not to numpy; refused, not read either way
        if h not in features or (declared.get(h) or ("",))[0] != "categorical":
            _refuse_foreign(cells_of[h], lines, what, header.index(h), h, h in features)
    values, columns = [], []
    for h in features:
        cells = cells_of[h]
        observed = [c for c in cells if not _is_missing(c)]
        if not observed:
            raise VaelabError(f"{what}: column '{h}' has no values (every cell is missing); drop the column")
        kind, levels = declared.get(h) or (_infer_type(h, observed), ())
        v, col = _encode(h, kind, cells, lines, what, levels)
        values.append(v)
        columns.append(col)
    labels, class_names = None, None
    if label is not None:
        labels, class_names = _labels(cells_of[label], lines, what)
    cov, classes = None, ()
    if covariates:
        parts = [_covariate(c, cells_of[c], lines, what) for c in covariates]
        cov = np.stack([p[0] for p in parts], 1)
        classes = tuple(p[1] for p in parts)
    return Table(np.stack(values, 1), tuple(columns), labels, class_names, cov, classes, np.asarray(lines))


def _refuse_foreign(cells: Sequence[str], lines: Sequence[int], what: str, index: int, name: str,
                    feature: bool) -> None:
    """Refuse the first cell of a column that :func:`foreign_number` describes, naming its line
    and column (``index`` from 0); a feature column may instead be declared categorical."""
    found = first_foreign(cells)
    if found is not None:
        i, how = found
        other = (f"; or, if the column holds names, declare it categorical (--column-types {name}=categorical)"
                 if feature else "")
        raise VaelabError(f"{what}: line {lines[i]}, column {index + 1} ({name!r}) is {cells[i]!r}, {how}{other}")


def _labels(cells: list[str], lines: list[int], what: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    for i, c in enumerate(cells):
        if _is_missing(c):
            raise VaelabError(f"{what}: the label at line {lines[i]} is missing; give every example a label")
    if all(_number(c) is not None for c in cells):
        return np.asarray([float(c) for c in cells]), None
    names = sorted(set(cells))
    return np.searchsorted(np.asarray(names), np.asarray(cells)).astype(np.int64), tuple(names)


def _covariate(name: str, cells: list[str], lines: list[int], what: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """A covariate column: numbers (continuous) or level ids of its sorted text levels (categorical)."""
    for i, c in enumerate(cells):
        if _is_missing(c):
            raise VaelabError(f"{what}: covariate '{name}' is missing at line {lines[i]}; every example needs a value "
                              "(fill it in or drop that row)")
    numbers = [_number(c) for c in cells]
    if all(v is not None and math.isfinite(v) for v in numbers):
        return np.asarray(numbers, dtype=np.float64), ()
    levels = sorted(set(cells))
    return np.searchsorted(np.asarray(levels), np.asarray(cells)).astype(np.float64), tuple(levels)


def load_table(
    source: str | os.PathLike[str],
    *,
    column_types: str = "",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    covariates: Sequence[str] = (),
) -> DataSplits:
    """Read a mixed-type table (:func:`read_table`) and split it as :func:`~vaelab.data.load_data`
    splits every source (seeded, stratified by label). The columns' numeric statistics are the
    training split's; a level that only the validation or test split holds is an error."""
    if not isinstance(source, (str, os.PathLike)):
        raise VaelabError(f"the mixed likelihood reads a CSV table; got a {type(source).__name__}")
    declared = declared_statistics(column_types)  # a bad number fails before the file is read
    table = read_table(source, column_types=column_types, covariates=covariates)
    name = os.fspath(source)
    splits = make_splits(
        name, table.x, table.labels, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
        covariates=table.covariates, covariate_names=tuple(covariates), class_names=table.class_names,
        covariate_classes=table.covariate_classes, columns=table.columns,
    )
    _check_levels_seen(splits, table.columns, name)
    return dataclasses.replace(splits, columns=_with_statistics(table.columns, splits.train, declared))


def _check_levels_seen(splits: DataSplits, columns: Sequence[Column], name: str) -> None:
    for j, col in enumerate(columns):
        if col.type != "categorical":
            continue
        seen = set(_ids(splits.train[:, j]))
        for part in ("val", "test"):
            unseen = sorted(set(_ids(getattr(splits, part)[:, j])) - seen)
            if unseen:
                raise VaelabError(f"data file '{name}': column '{col.name}' has level {col.levels[unseen[0]]!r} in the "
                                  f"{part} split but never in training, so the model cannot learn it; add training rows "
                                  "with it, merge it into another level, or mark those cells missing")


def _ids(v: torch.Tensor) -> list[int]:
    return v[~torch.isnan(v)].long().tolist()


def _with_statistics(columns: Sequence[Column], train: torch.Tensor,
                     declared: dict[str, tuple[float, float]] | None = None) -> tuple[Column, ...]:
    """The columns with the training split's mean (numeric, count) and standard deviation
    (numeric) of their observed cells; 0 and 1 when a column has none, a std of 1 when it is 0.
    Statistics ``declared`` by name (``--column-types age=numeric(45;12)``) are kept instead."""
    out = []
    x = train.double()
    declared = declared or {}
    for j, col in enumerate(columns):
        v = x[:, j][~torch.isnan(x[:, j])]
        if col.name in declared and col.type in ("numeric", "count"):
            mean, std = declared[col.name]
            col = dataclasses.replace(col, mean=mean, std=std)
        elif col.type in ("numeric", "count") and len(v):
            std = float(v.std(unbiased=False)) if col.type == "numeric" else 1.0
            col = dataclasses.replace(col, mean=float(v.mean()), std=std if std > 0 else 1.0)
        out.append(col)
    return tuple(out)


def missing_cells(x: torch.Tensor | np.ndarray, columns: Sequence[Column]) -> dict[str, int]:
    """The number of missing (NaN) cells of each column of x ``[N, C]`` that has any."""
    counts = torch.isnan(torch.as_tensor(x)).reshape(-1, len(columns)).sum(0).tolist()
    return {col.name: int(n) for col, n in zip(columns, counts) if n}


def missing_note(x: torch.Tensor | np.ndarray, columns: Sequence[Column]) -> str | None:
    """One line saying how many cells of x are missing and where, or None when none is."""
    per_column = missing_cells(x, columns)
    if not per_column:
        return None
    total = int(torch.as_tensor(x).numel())
    listed = ", ".join(f"{name} {n}" for name, n in per_column.items())
    return (f"{sum(per_column.values())} of {total} cells are missing ({listed}); the ELBO and log p(x) score the "
            "observed cells only")


def decode_rows(x: torch.Tensor | np.ndarray, columns: Sequence[Column]) -> list[list[str]]:
    """Rows of x ``[N, C]`` as text cells: level names for categorical columns, whole numbers
    for binary and count ones, numbers for numeric ones, "" for a missing cell (e.g. to write
    decoded samples as CSV under the header ``[c.name for c in columns]``)."""
    rows = []
    for row in np.asarray(torch.as_tensor(x).detach().cpu().double()).reshape(-1, len(columns)):
        cells = []
        for v, col in zip(row.tolist(), columns):
            if math.isnan(v):
                cells.append("")
            elif col.type == "categorical":
                cells.append(col.levels[int(round(v))])
            elif col.type == "numeric":
                cells.append(f"{v:.6g}")
            else:
                cells.append(str(int(round(v))))
        rows.append(cells)
    return rows


def table_spec(spec: ModelSpec, columns: Sequence[Column]) -> ModelSpec:
    """``spec`` with the mixed likelihood's ``column_types`` set to every column of the table,
    with its levels and statistics: what a loaded model rebuilds its likelihood from."""
    likelihood = PartSpec(spec.likelihood.name, {**spec.likelihood.options, "column_types": format_columns(columns)})
    return dataclasses.replace(spec, likelihood=likelihood)


def table_csv(x: torch.Tensor | np.ndarray, columns: Sequence[Column]) -> str:
    """x ``[N, C]`` as CSV text under a header of the column names (:func:`decode_rows`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.name for c in columns])
    writer.writerows(decode_rows(x, columns))
    return buf.getvalue()
