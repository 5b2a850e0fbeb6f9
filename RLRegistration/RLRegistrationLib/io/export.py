"""Writing results: ITK transforms (.h5), displacement fields and images.

Written transforms map a fixed point to a moving point (LPS mm): ``sitk.ReadTransform(path)`` gives back
``A o (id + u)`` and ``sitk.Resample(moving, fixed, transform)`` reproduces the warped image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import SimpleITK as sitk

from ..errors import OutputError
from ..fields.geometry import Grid

TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")


def check_output_paths(
    paths: Iterable[str | Path | None],
    overwrite: bool = False,
    inputs: Mapping[str, str | Path | None] | None = None,
) -> None:
    """Refuse, before any work is done, outputs that exist (unless ``overwrite``) or whose folder is missing,
    two outputs on one file, and (with or without ``overwrite``) an output that is one of the ``inputs``
    ({name: path}, e.g. {"moving image": "m.nii.gz"}), also through symbolic or hard links."""
    protected = _input_files(inputs or {})
    seen = set()
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        for name, source in protected:
            if _same_file(path, source):
                raise OutputError(
                    f"output '{path}': is the same file as the {name} '{source}'; an output never replaces an input "
                    "(choose another file name)"
                )
        if path.resolve() in seen:
            raise OutputError(f"output '{path}': the same path is given for two outputs")
        seen.add(path.resolve())
        if path.exists() and not overwrite:
            raise OutputError(f"output '{path}': file exists (use --overwrite to replace it)")
        if path.is_dir():
            raise OutputError(f"output '{path}': is a folder, a file name is needed")
        if not path.parent.exists():
            raise OutputError(f"output '{path}': folder '{path.parent}' does not exist")


def _input_files(inputs: Mapping[str, str | Path | None]) -> list[tuple[str, Path]]:
    """(name, file) of every file an input consists of: the file, its detached data file (MHD, NRRD,
    Analyze/NIfTI pair), or the files of a DICOM folder."""
    from .integrity import data_files

    files = []
    for name, source in inputs.items():
        if source is not None:
            files.extend((name, file) for file in data_files(Path(source)))
    return files


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)  # hard links
    except OSError:
        return False


def check_transform_suffix(path: str | Path) -> None:
    """Refuse a transform file name ITK cannot write (it must end in one of ``TRANSFORM_SUFFIXES``)."""
    if Path(path).suffix.lower() not in TRANSFORM_SUFFIXES:
        raise OutputError(f"output '{path}': transform files end in {', '.join(TRANSFORM_SUFFIXES)}")


def write_transform(transform: sitk.Transform, path: str | Path, overwrite: bool = False) -> Path:
    """Write an ITK transform file (``.h5`` recommended: holds affine + displacement field)."""
    path = Path(path)
    check_transform_suffix(path)
    check_output_paths([path], overwrite)
    _atomic_write(path, lambda tmp: sitk.WriteTransform(transform, str(tmp)))
    return path


def write_image(image: sitk.Image, path: str | Path, overwrite: bool = False) -> Path:
    """Write an image (format from the suffix, compressed where the format allows)."""
    path = Path(path)
    check_output_paths([path], overwrite)
    _atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))
    return path


def _atomic_write(path: Path, writer) -> None:
    """Write to a temporary name next to ``path`` and rename, so a failure never leaves half a file."""
    suffixes = "".join(path.suffixes)
    tmp = path.with_name(f".{path.name[: len(path.name) - len(suffixes)]}.partial{suffixes}")
    try:
        writer(tmp)
        tmp.replace(path)
    except RuntimeError as error:
        raise OutputError(
            f"output '{path}': could not be written ({str(error).strip().splitlines()[-1]})"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def total_displacement(transform: sitk.Transform, grid: Grid) -> sitk.Image:
    """One displacement field (LPS mm, sitkVectorFloat64) on ``grid`` equal to ``transform(x) - x``:
    the affine and deformable parts flattened into a single field."""
    return sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        [int(s) for s in grid.size],
        grid.origin,
        grid.spacing,
        grid.direction,
    )
