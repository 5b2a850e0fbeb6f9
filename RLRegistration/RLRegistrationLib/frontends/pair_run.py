"""One pair from files to files, as ``rlreg register`` and ``rlreg batch`` both run it: the pair's files
(``PairFiles``), the session built from a ``RunSpec``, and a writer for each output of an ``OutputSet``
(written all or nothing).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..io.outputs import OutputSet, write_json
from ..registration.run_spec import RunSpec

#: register's output options, by output kind
OUTPUT_OPTIONS = {
    "transform": "-o/--output",
    "warped": "--warped",
    "displacement": "--displacement",
    "jacobian": "--jacobian",
    "weight_map": "--weight-map",
    "uncertainty": "--uncertainty",
    "qc": "--qc",
    "report": "--report",
    "config": "--save-config",
}


@dataclass(frozen=True)
class PairFiles:
    """The files of one pair: images, optional label maps (Dice per step) and masks (the similarity's
    region), and how messages name each (``"fixed image 'f.nii.gz'"``)."""

    fixed: str | Path
    moving: str | Path
    fixed_labels: str | Path | None = None
    moving_labels: str | Path | None = None
    fixed_mask: str | Path | None = None
    moving_mask: str | Path | None = None
    prefix: str = ""  # "sample " for the embedded pair

    def roles(self) -> dict[str, str | Path | None]:
        """{role: path} with roles "fixed image", "moving image", "fixed labels", ... (None: not given)."""
        return {
            f"{self.prefix}fixed image": self.fixed,
            f"{self.prefix}moving image": self.moving,
            f"{self.prefix}fixed labels": self.fixed_labels,
            f"{self.prefix}moving labels": self.moving_labels,
            f"{self.prefix}fixed mask": self.fixed_mask,
            f"{self.prefix}moving mask": self.moving_mask,
        }

    def check(self) -> None:
        """Label maps come in pairs, and the moving image is not the fixed one (checked before anything is
        read)."""
        from ..io.outputs import same_file

        for role, path in self.roles().items():
            if path is not None and not str(path):
                raise InputError(f"{role}: the file name is empty")
        if bool(self.fixed_labels) != bool(self.moving_labels):
            raise InputError("labels: give both --fixed-labels and --moving-labels, or neither")
        if same_file(Path(self.fixed), Path(self.moving)):
            raise InputError(
                f"{self.prefix}moving image '{self.moving}': is the same file as the fixed image "
                f"'{self.fixed}' (registering an image to itself gives the identity)"
            )

    def read(self) -> dict:
        """``build_session``'s image keywords, ``names`` and ``pair`` (what DICOM headers say of the pair,
        or None), every file read and checked."""
        from ..io.dicom_tags import pair_kind_from_tags, series_tags
        from ..io.imaging import read_image, read_label_map
        from ..registration.session_options import InputNames

        names = {}
        images = {}
        for key, (role, path) in zip(
            ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_mask", "moving_mask"),
            self.roles().items(),
        ):
            names[key] = f"{role} '{path}'" if path is not None else role
            if path is None:
                continue
            reader = read_image if key in ("fixed", "moving") else read_label_map
            images[key] = reader(path, role)
        pair = pair_kind_from_tags(series_tags(self.fixed), series_tags(self.moving))
        return {**images, "names": InputNames(**names), "pair": pair}


def report_dict(result) -> dict:
    """The per-step numbers of ``--report`` (every step run), the do-no-harm verdicts, and the step kept."""
    return {
        "steps": [
            {
                "step": r.index,
                "similarity_ncc": r.similarity,
                "dice": r.dice,
                "step_seconds": r.step_seconds,
                "max_displacement_mm": r.max_displacement_mm,
                "uncertainty_mean_mm": r.uncertainty_mean_mm,
                "uncertainty_max_mm": r.uncertainty_max_mm,
            }
            for r in (result.steps_run or result.reports)
        ],
        "kept_step": result.reports[-1].index,
        "verdicts": [
            {
                "stage": v.stage,
                "accepted": v.accepted,
                "gradient_alignment_before": v.previous_score,
                "gradient_alignment_after": v.score,
                "summary": v.summary(),
            }
            for v in result.verdicts
        ],
    }


def result_writers(
    result, fixed, moving, outputs: OutputSet, spec: RunSpec, title: str, report: dict
) -> dict:
    """A writer (temporary path -> file) for each output the set holds; outputs the result cannot give
    (no weight map or uncertainty from this policy) are dropped from the set with a warning."""
    import SimpleITK as sitk

    from ..fields.metrics import jacobian_image

    def image(get: Callable[[], sitk.Image]) -> Callable[[Path], None]:
        return lambda path: sitk.WriteImage(get(), str(path), useCompression=True)

    def qc(path: Path) -> None:
        from .qc import write_qc_picture

        write_qc_picture(path, fixed, moving, result, title=title)

    writers = {
        "transform": result.write,
        "warped": image(lambda: result.warp_image(moving)),
        "displacement": image(lambda: sitk.Cast(result.displacement, sitk.sitkVectorFloat32)),
        "jacobian": image(lambda: jacobian_image(result.displacement)),
        "weight_map": image(lambda: result.weight_map),
        "uncertainty": image(lambda: result.uncertainty_map),
        "qc": qc,
        "report": write_json(report),
        "config": write_json(spec.to_dict()),
    }
    for kind, missing in (
        ("weight_map", result.weight_map is None),
        ("uncertainty", result.uncertainty_map is None),
    ):
        if kind in outputs and missing:
            print(
                f"rlreg: warning: {OUTPUT_OPTIONS[kind]}: this policy gives none; not written",
                file=sys.stderr,
            )
            del outputs.paths[kind]
    return {kind: writers[kind] for kind in outputs.paths}
