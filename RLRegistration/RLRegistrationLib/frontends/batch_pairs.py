"""The pairs of a batch, from a CSV table or a BIDS dataset, each a ``batch.BatchPair``.

**CSV** (``pairs_from_csv``): a header row, then one pair per row. ``fixed`` and ``moving`` are required;
``id`` (the pair's folder; default: the moving file's name without its extension), ``fixed_labels``,
``moving_labels``, ``fixed_mask`` and ``moving_mask`` are optional, and any other column is a run option
for that row: a ``RunSpec`` field (``steps``, ``regularization``, ``quality``, ``initialization``,
``spacing_mm``, ``dice_labels``...) or its option's name (``spacing``, ``max-memory``). An empty cell
leaves the batch's option as it is. Relative paths are relative to the CSV file's folder. Every row is
checked before any pair runs (a bad value or an unknown column stops the batch with one line naming the
CSV line and column); a file that cannot be read fails only its pair, when it runs.

**BIDS** (``pairs_from_bids``): a light reader of the BIDS layout (no pybids): ``sub-<label>/
[ses-<label>/]anat/sub-<label>[_ses-<label>]_..._<suffix>.nii[.gz]``, one image per session (``filters``:
keep only file names holding each text, e.g. ``acq-mprage``). Without a template, each subject's later
sessions are registered onto its first (sessions ordered by ``acq_time`` in ``sub-<label>_sessions.tsv``
where every session has one, else by label, numbers in numeric order); with a template, every subject's
image (each session's) onto the template. Ids: ``sub-<label>[_ses-<label>]``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import fields
from pathlib import Path

from ..errors import InputError
from ..options import INTEGER_OPTIONS, RANGES
from ..registration.run_spec import OptionError, RunSpec
from .batch_pair import ID_PATTERN, BatchPair
from .pair_run import PairFiles

FILE_COLUMNS = ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_mask", "moving_mask")
#: option names (as on the command line, without dashes) -> RunSpec field
COLUMN_ALIASES = {"spacing": "spacing_mm", "max_memory": "max_memory_gib"}
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _column_name(name: str) -> str:
    key = (name or "").strip().lower().lstrip("-").replace("-", "_")
    return COLUMN_ALIASES.get(key, key)


def image_stem(path: str | Path) -> str:
    """A file's name without its image extension (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _option_value(field: str, text: str):
    if field == "dice_labels":
        try:
            return tuple(int(v) for v in re.split(r"[\s,;]+", text) if v)
        except ValueError:
            raise ValueError("positive integer labels are required, e.g. '2 3 4'") from None
    if field in INTEGER_OPTIONS:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"must be an integer, got '{text}'") from None
    if field in RANGES:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"must be a number, got '{text}'") from None
    return text


def pairs_from_csv(path: str | Path, base: RunSpec | None = None) -> list[BatchPair]:
    """The pairs of a CSV table (see the module doc); ``base``: the options of the rows' empty cells."""
    name = f"pairs '{path}'"
    path = Path(path).expanduser().absolute()
    base = base or RunSpec()
    known_options = {f.name for f in fields(RunSpec)}
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as error:
        raise InputError(f"{name}: cannot be read ({error.strerror or error})") from None
    pairs: list[BatchPair] = []
    derived: dict[str, int] = {}
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
        except (csv.Error, UnicodeDecodeError) as error:
            raise InputError(f"{name}: not a CSV table ({error})") from None
        if not header:
            raise InputError(f"{name}: empty (a header row with fixed and moving columns is required)")
        columns = [_column_name(c) for c in header]
        for original, column in zip(header, columns):
            if column not in FILE_COLUMNS and column != "id" and column not in known_options:
                known = ", ".join(["id", *FILE_COLUMNS, *sorted(known_options)])
                raise InputError(f"{name}: unknown column '{original.strip()}' (known: {known})")
        repeated = next((c for c in columns if columns.count(c) > 1), None)
        if repeated:
            raise InputError(f"{name}: the column '{repeated}' is given twice")
        for required in ("fixed", "moving"):
            if required not in columns:
                raise InputError(f"{name}: the column '{required}' is required (header: {', '.join(header)})")
        try:
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(columns):
                    raise InputError(f"{name} line {line}: {len(row)} cells, the header has {len(columns)}")
                cells = {c: v.strip() for c, v in zip(columns, row)}
                pairs.append(_row_pair(cells, path.parent, base, f"{name} line {line}", derived))
        except (csv.Error, UnicodeDecodeError) as error:
            raise InputError(f"{name} line {reader.line_num}: not a CSV row ({error})") from None
    if not pairs:
        raise InputError(f"{name}: holds no pairs")
    repeated = [i for i, n in derived.items() if n > 1]
    if repeated:
        raise InputError(
            f"{name}: {derived[repeated[0]]} rows have the moving image name '{repeated[0]}'; give each "
            "pair a name of its own in an 'id' column"
        )
    from .batch import check_ids

    check_ids(pairs)
    return pairs


def _row_pair(cells: dict, folder: Path, base: RunSpec, where: str, derived: dict) -> BatchPair:
    for required in ("fixed", "moving"):
        if not cells.get(required):
            raise InputError(f"{where}: the {required} image is empty")
    paths = {}
    for column in FILE_COLUMNS:
        if cells.get(column):
            value = Path(cells[column]).expanduser()
            paths[column] = value if value.is_absolute() else folder / value
    values = base.to_dict()
    for column, text in cells.items():
        if column in FILE_COLUMNS or column == "id" or text == "":
            continue
        try:
            values[column] = _option_value(column, text)
        except ValueError as error:
            raise InputError(f"{where}, column {column}: {error}") from None
    try:
        spec = RunSpec.from_dict(values, where)
    except OptionError as error:
        raise InputError(f"{where}, column {error.option}: {error.problem}") from None
    ident = cells.get("id") or ""
    if not ident:
        ident = re.sub(r"[^A-Za-z0-9._-]", "_", image_stem(paths["moving"])).lstrip("._-") or "pair"
        derived[ident] = derived.get(ident, 0) + 1
    elif not ID_PATTERN.match(ident) or ident in (".", ".."):
        raise InputError(
            f"{where}, column id: '{ident}': use letters, digits, '.', '_' and '-' (it names a folder)"
        )
    files = PairFiles(**paths)
    try:
        files.check()
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    return BatchPair(ident, files, spec)


# ----------------------------------------------------------------------------------------------------
# BIDS


def _natural(label: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)]


def _session_order(subject: Path, sessions: list[Path]) -> list[Path]:
    """Sessions by acq_time (sub-X_sessions.tsv, when every session has one), else by label."""
    table = subject / f"{subject.name}_sessions.tsv"
    times: dict[str, str] = {}
    if table.is_file():
        try:
            with open(table, newline="", encoding="utf-8-sig") as handle:
                for row in csv.DictReader(handle, delimiter="\t"):
                    if row.get("session_id") and row.get("acq_time") not in (None, "", "n/a"):
                        times[row["session_id"].strip()] = row["acq_time"].strip()
        except (OSError, csv.Error, UnicodeDecodeError):
            times = {}
    if sessions and all(s.name in times for s in sessions):
        return sorted(sessions, key=lambda s: (times[s.name], _natural(s.name)))
    return sorted(sessions, key=lambda s: _natural(s.name))


def _session_image(folder: Path, suffix: str, filters: tuple[str, ...], where: str) -> Path | None:
    anat = folder / "anat"
    if not anat.is_dir():
        return None
    found = sorted(
        p
        for p in anat.iterdir()
        if p.name.startswith("sub-")
        and (p.name.endswith(f"_{suffix}.nii.gz") or p.name.endswith(f"_{suffix}.nii"))
        and all(f in p.name for f in filters)
    )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise InputError(
            f"--bids {where}: {len(found)} {suffix} images ({names}); keep one with --bids-filter "
            "(a text its name holds, e.g. run-1 or acq-mprage)"
        )
    return found[0] if found else None


def pairs_from_bids(
    root: str | Path,
    base: RunSpec | None = None,
    template: str | Path | None = None,
    suffix: str = "T1w",
    filters: tuple[str, ...] = (),
) -> tuple[list[BatchPair], list[str]]:
    """The pairs of a BIDS dataset (see the module doc) and notes on what was left out (subjects with a
    single session, sessions without an image)."""
    name = str(root)
    root = Path(root).expanduser().absolute()
    template = None if template is None else Path(template).expanduser().absolute()
    base = base or RunSpec()
    if not root.is_dir():
        raise InputError(f"--bids '{name}': folder not found")
    if not (root / "dataset_description.json").is_file():
        raise InputError(f"--bids '{name}': no dataset_description.json, not a BIDS dataset")
    if template is not None and not Path(template).exists():
        raise InputError(f"--template '{template}': file not found")
    subjects = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-")),
        key=lambda p: _natural(p.name),
    )
    if not subjects:
        raise InputError(f"--bids '{name}': no sub-* folders")
    pairs: list[BatchPair] = []
    notes: list[str] = []
    for subject in subjects:
        sessions = [p for p in subject.iterdir() if p.is_dir() and p.name.startswith("ses-")]
        images: list[tuple[str, Path]] = []
        for session in _session_order(subject, sessions) if sessions else [subject]:
            where = subject.name if session is subject else f"{subject.name} {session.name}"
            image = _session_image(session, suffix, tuple(filters), where)
            if image is None:
                notes.append(f"{where}: no {suffix} image")
                continue
            ident = subject.name if session is subject else f"{subject.name}_{session.name}"
            images.append((ident, image))
        if template is not None:
            pairs.extend(BatchPair(i, PairFiles(template, image), base) for i, image in images)
        elif len(images) < 2:
            notes.append(
                f"{subject.name}: {len(images)} session{'s' if len(images) != 1 else ''} with a {suffix} image, nothing to register"
            )
        else:
            baseline = images[0][1]
            pairs.extend(BatchPair(i, PairFiles(baseline, image), base) for i, image in images[1:])
    if not pairs:
        raise InputError(f"--bids '{name}': no pairs ({'; '.join(notes[:3]) or 'no images'})")
    return pairs, notes
