"""Catalogue cases on the command line: options, outputs and links, permissions, ``evaluate``, ``view``,
and legitimate successes."""

from __future__ import annotations

import os
import shutil

import numpy as np
from catalogue_support import (  # Testing/ is on sys.path, as for conftest
    CASES,
    NAN,
    NOT_READABLE,
    Expect,
    _dicom_series,
    _image,
    _with_nan,
    _write,
    case,
    refuse,
)

# ----------------------------------------------------------------------------------------------- options
OPTION_CASES = {
    "steps_huge": (["--steps", "100000"], "--steps", "must be an integer from 0 to 500, got 100000"),
    "steps_negative": (["--steps", "-1"], "--steps", "got -1"),
    "steps_not_an_integer": (["--steps", "1.5"], "--steps", "invalid int value"),
    "iterations_zero": (["--iterations", "0"], "--iterations", "must be an integer from 1 to 500"),
    "iterations_negative": (["--iterations", "-5"], "--iterations", "got -5"),
    "regularization_nan": (["--regularization", "nan"], "--regularization", "got nan"),
    "regularization_inf": (["--regularization", "inf"], "--regularization", "got inf"),
    "regularization_negative": (["--regularization", "-1"], "--regularization", "from 0 to 100"),
    "spacing_zero": (["--spacing", "0"], "--spacing", "from 0.25 to 20, got 0"),
    "spacing_negative": (["--spacing", "-2"], "--spacing", "got -2"),
    "spacing_nan": (["--spacing", "nan"], "--spacing", "got nan"),
    "max_memory_zero": (["--max-memory", "0"], "--max-memory", "got 0"),
    "max_memory_inf": (["--max-memory", "inf"], "--max-memory", "got inf"),
    "samples_zero": (["--samples", "0"], "--samples", "got 0"),
    "temperature_negative": (["--temperature", "-1"], "--temperature", "got -1"),
    "seed_negative": (["--seed", "-1"], "--seed", "got -1"),
    "quality_unknown": (["--quality", "best"], "--quality", "invalid choice"),
    "similarity_unknown": (["--similarity", "mi"], "--similarity", "invalid choice"),
    "initialization_unknown": (["--initialization", "bspline"], "--initialization", "invalid choice"),
    "device_unknown": (["--device", "tpu"], "--device", "got 'tpu'"),
    "device_bad_index": (["--device", "cuda:x"], "--device", "got 'cuda:x'"),
    "policy_unknown": (["--policy", "magic"], "--policy", "unknown policy 'magic'"),
    "samples_with_tto": (["--samples", "2"], "--samples", "does not sample trajectories"),
    "no_affine_contradicts": (["--no-affine", "--initialization", "affine"], "--no-affine", "contradicts"),
    "unknown_option": (["--bogus"], "--bogus", "unrecognized arguments"),
    "option_without_value": (["--steps"], "--steps", "expected one argument"),
    "uncertainty_without_samples": (["--uncertainty", "u.nii.gz"], "--uncertainty", "needs --samples K > 1"),
}


def _option_case(extra, name, problem):
    def make(f):
        argv = ["register", f / "fixed.nii.gz", f / "moving.nii.gz", "-o", f / "t.h5", *extra]
        if "--device" not in extra:
            argv += ["--device", "cpu"]
        # refused before any image is read: the images need not even exist
        return refuse(argv, name, problem=problem)

    return make


for _name, (_extra, _option, _problem) in OPTION_CASES.items():
    CASES[f"option_{_name}"] = ("options", _option_case(_extra, _option, _problem))


@case("options")
def missing_output_option(f):
    return refuse(["register", f.fixed, f.moving], "-o/--output", problem="required")


@case("options")
def no_arguments_at_all(f):
    return refuse(["register"], "required")


@case("options")
def config_file_missing(f):
    return refuse(f.register(None, None, "--config", f / "run.json"), "run.json", problem="cannot be read")


@case("options")
def config_file_not_json(f):
    (f / "run.json").write_text("{steps: 3")
    return refuse(f.register(None, None, "--config", f / "run.json"), "run.json", problem="not valid JSON")


@case("options")
def config_file_unknown_setting(f):
    (f / "run.json").write_text('{"stepz": 3}')
    return refuse(f.register(None, None, "--config", f / "run.json"), "run.json", problem="'stepz'")


@case("options")
def config_file_steps_out_of_range(f):
    (f / "run.json").write_text('{"steps": 100000}')
    return refuse(f.register(None, None, "--config", f / "run.json"), "--steps", problem="got 100000")


@case("options")
def config_file_is_a_list(f):
    (f / "run.json").write_text("[1, 2]")
    return refuse(f.register(None, None, "--config", f / "run.json"), "run.json", problem="JSON object")


# ------------------------------------------------------------------------------------- outputs and links
NEVER = "an output never replaces an input"
OUTPUT_TYPES = {
    "transform_as_image": (["-o", "t.nii.gz"], "-o/--output", "must end in .h5, .hdf5, .tfm, .txt"),
    "transform_as_mat": (["-o", "t.mat"], "-o/--output", "must end in .h5"),  # .mat: linear only
    "warped_xyz": (["--warped", "w.xyz"], "--warped", "must end in .nii.gz, .nii, .nrrd, .mha"),
    "warped_mhd": (["--warped", "w.mhd"], "--warped", "must end in .nii.gz"),
    "displacement_h5": (["--displacement", "d.h5"], "--displacement", "must end in .nii.gz"),
    "qc_nifti": (["--qc", "q.nii.gz"], "--qc", "must end in .png, .jpg, .jpeg, .pdf, .svg"),
    "report_txt": (["--report", "r.txt"], "--report", "must end in .json"),
    "save_config_yaml": (["--save-config", "c.yaml"], "--save-config", "must end in .json"),
    "weight_map_tfm": (["--weight-map", "w.tfm"], "--weight-map", "must end in .nii.gz"),
}


def _output_type_case(extra, name, problem):
    def make(f):
        if extra[0] == "-o":
            argv = [
                "register",
                f / "fixed.nii.gz",
                f / "moving.nii.gz",
                "-o",
                f / extra[1],
                "--device",
                "cpu",
            ]
        else:
            argv = [
                "register",
                f / "fixed.nii.gz",
                f / "moving.nii.gz",
                "-o",
                f / "t.h5",
                extra[0],
                f / extra[1],
            ]
        return refuse(argv, name, problem=problem)

    return make


for _name, (_extra, _option, _problem) in OUTPUT_TYPES.items():
    CASES[f"output_{_name}"] = ("outputs", _output_type_case(_extra, _option, _problem))


@case("outputs")
def output_folder_missing(f):
    argv = f.register(out="nowhere/t.h5")
    return refuse(argv, "-o/--output", f / "nowhere", problem="does not exist")


@case("outputs")
def output_is_a_folder(f):
    (f / "t.h5").mkdir()
    return refuse(f.register(None, None, "--overwrite"), f / "t.h5", problem="is a folder")


@case("outputs")
def output_folder_is_a_file(f):
    (f / "notdir").write_text("x")
    return refuse(f.register(out="notdir/t.h5"), "notdir", problem="is not a folder")


@case("outputs")
def existing_output_without_overwrite(f):
    (f / "t.h5").write_bytes(b"precious")
    return refuse(f.register(), "-o/--output", problem="file exists (use --overwrite")


@case("outputs")
def existing_warped_without_overwrite(f):
    (f / "w.nii.gz").write_bytes(b"precious")
    return refuse(f.register(None, None, "--warped", f / "w.nii.gz"), "--warped", problem="file exists")


@case("outputs")
def dangling_link_as_output(f):
    (f / "t.h5").symlink_to(f / "elsewhere.h5")
    return refuse(f.register(), "-o/--output", problem="file exists")


@case("outputs")
def loop_of_links_as_output(f):
    (f / "t.h5").symlink_to(f / "t.h5")
    return refuse(f.register(None, None, "--overwrite"), "-o/--output", problem="a loop of symbolic links")


@case("outputs")
def warped_onto_the_moving_image(f):
    argv = f.register(None, None, "--warped", f.moving, "--overwrite")
    return refuse(argv, "--warped", "moving image", problem=NEVER)


@case("outputs")
def displacement_onto_fixed_through_a_link(f):
    (f / "link.nii.gz").symlink_to(f.fixed)
    argv = f.register(None, None, "--displacement", f / "link.nii.gz", "--overwrite")
    return refuse(argv, "--displacement", "fixed image", problem=NEVER)


@case("outputs")
def weight_map_onto_hard_linked_labels(f):
    os.link(f.fixed_labels, f / "hard.nii.gz")
    argv = f.register(None, None, *f.labels(), "--weight-map", f / "hard.nii.gz", "--overwrite")
    return refuse(argv, "--weight-map", "fixed labels", problem=NEVER)


@case("outputs")
def warped_onto_the_raw_file_of_an_mhd(f):
    path = _write(_image(np.roll(f.array, 1, axis=1)), f / "m.mhd")
    argv = f.register(None, path, "--warped", f / "m.raw", "--overwrite")
    return refuse(argv, "--warped", problem=NEVER)


@case("outputs")
def two_outputs_one_file(f):
    argv = f.register(None, None, "--warped", f / "w.nii.gz", "--displacement", f / "w.nii.gz")
    return refuse(argv, "--displacement", "--warped", problem="the same file is also given")


@case("outputs")
def two_outputs_one_file_through_a_link(f):
    (f / "w_link.nii.gz").symlink_to(f / "w.nii.gz")
    argv = f.register(None, None, "--warped", f / "w.nii.gz", "--displacement", f / "w_link.nii.gz")
    return refuse(argv, "--displacement", problem="the same file is also given")


@case("outputs")
def transform_and_report_refused_by_the_last_output(f):
    """Only the last of several outputs is wrong: nothing at all is written."""
    argv = f.register(None, None, "--warped", f / "w.nii.gz", "--report", f / "r.json", "--qc", f / "q.tif")
    return refuse(argv, "--qc", problem="must end in .png")


# ------------------------------------------------------------------------------------------- permissions
@case("permissions")
def unreadable_moving_image(f):
    f.moving.chmod(0)
    return refuse(
        f.register(),
        "moving image",
        f.moving,
        problem="cannot be read (Permission denied)",
        unprivileged=True,
    )


@case("permissions")
def unreadable_fixed_labels(f):
    f.fixed_labels.chmod(0)
    argv = f.register(None, None, *f.labels())
    return refuse(argv, "fixed labels", problem="cannot be read (Permission denied)", unprivileged=True)


@case("permissions")
def unlistable_dicom_folder(f):
    folder = _dicom_series(f / "series", f.array)
    folder.chmod(0)
    return refuse(
        f.with_moving(folder), folder, problem="cannot be read (Permission denied)", unprivileged=True
    )


@case("permissions")
def input_in_a_folder_not_to_be_entered(f):
    (f / "locked").mkdir()
    shutil.copy(f.moving, f / "locked" / "m.nii.gz")
    (f / "locked").chmod(0o600)
    path = f / "locked" / "m.nii.gz"
    return refuse(f.with_moving(path), path, problem="cannot be read (Permission denied)", unprivileged=True)


@case("permissions")
def read_only_output_folder(f):
    """The issue's case: found at write time, with earlier outputs left behind and HDF5 diagnostics."""
    (f / "ro").mkdir()
    (f / "ro").chmod(0o555)
    argv = f.register(None, None, out="ro/t.h5")
    return refuse(
        argv, "-o/--output", f / "ro", problem="is not writable (Permission denied)", unprivileged=True
    )


@case("permissions")
def read_only_folder_of_one_output(f):
    (f / "ro").mkdir()
    (f / "ro").chmod(0o555)
    argv = f.register(None, None, "--warped", f / "ro" / "w.nii.gz", "--report", f / "r.json")
    return refuse(argv, "--warped", problem="is not writable", unprivileged=True)


@case("permissions")
def output_folder_not_to_be_entered(f):
    (f / "locked").mkdir()
    (f / "locked").chmod(0)
    argv = f.register(out="locked/t.h5")
    return refuse(argv, "-o/--output", problem="Permission denied", unprivileged=True)


@case("permissions")
def unreadable_config(f):
    (f / "run.json").write_text('{"steps": 1}')
    (f / "run.json").chmod(0)
    argv = f.register(None, None, "--config", f / "run.json")
    return refuse(argv, "run.json", problem="cannot be read (Permission denied)", unprivileged=True)


@case("permissions")
def unreadable_transform_to_evaluate(f):
    path = f.transform()
    path.chmod(0)
    return refuse(
        f.evaluate(path), "transform", path, problem="cannot be read (Permission denied)", unprivileged=True
    )


# ---------------------------------------------------------------------------------------------- evaluate
@case("evaluate")
def evaluate_corrupt_h5(f):
    """The issue's case: 25-40 lines of HDF5-DIAG."""
    data = f.transform().read_bytes()
    (f / "cut.h5").write_bytes(data[: len(data) // 2])
    (f / "t3d.h5").unlink()
    return refuse(f.evaluate(f / "cut.h5"), "transform", f / "cut.h5", problem="not a readable ITK transform")


@case("evaluate")
def evaluate_text_named_h5(f):
    (f / "t.h5").write_text("not a transform")
    return refuse(f.evaluate(f / "t.h5"), f / "t.h5", problem="not a readable ITK transform")


@case("evaluate")
def evaluate_2d_transform(f):
    """The issue's case: a traceback."""
    path = f.transform("t2d.h5", dimension=2)
    return refuse(f.evaluate(path), path, problem="a 3D transform is required, this one is 2D")


@case("evaluate")
def evaluate_2d_tfm(f):
    path = f.transform("t2d.tfm", dimension=2)
    return refuse(f.evaluate(path), path, problem="this one is 2D")


@case("evaluate")
def evaluate_transform_is_a_folder(f):
    (f / "t.h5").mkdir()
    return refuse(f.evaluate(f / "t.h5"), f / "t.h5", problem="is a folder")


@case("evaluate")
def evaluate_missing_transform(f):
    return refuse(f.evaluate(f / "none.h5"), f / "none.h5", problem="file not found")


@case("evaluate")
def evaluate_labels_word(f):
    return refuse(f.evaluate(f.transform(), "--labels", "cortex"), "--labels", problem="got 'cortex'")


@case("evaluate")
def evaluate_labels_negative(f):
    return refuse(f.evaluate(f.transform(), "--labels", "1,-2"), "--labels", problem="positive integers")


@case("evaluate")
def evaluate_label_in_neither_map(f):
    """Scored as NaN (and invalid JSON) before."""
    return refuse(f.evaluate(f.transform(), "--labels", "99"), "--labels", problem="label 99 is in neither")


@case("evaluate")
def evaluate_maps_share_no_label(f):
    path = _write(_image((f.labels_array * 7).astype(np.int16)), f / "sevens.nii.gz")
    return refuse(f.evaluate(f.transform(), moving_labels=path), path, problem="shares no label")


@case("evaluate")
def evaluate_image_as_labels(f):
    return refuse(f.evaluate(f.transform(), fixed_labels=f.fixed), "fixed labels", problem="non-integer")


@case("evaluate")
def evaluate_nan_nifti_labels(f):
    path = _write(_image(_with_nan(f.labels_array.astype(np.float32))), f / "nan_labels.nii")
    return refuse(f.evaluate(f.transform(), moving_labels=path), "moving labels", path, problem=NAN)


@case("evaluate")
def evaluate_without_transform_option(f):
    return refuse(["evaluate", "--fixed-labels", f.fixed_labels], "--transform", problem="required")


# -------------------------------------------------------------------------------------------------- view
@case("view")
def view_file_that_is_not_an_image(f):
    """The issue's case: served a page with an empty Fixed field."""
    (f / "notimage.nii.gz").write_text("hello")
    argv = ["view", f / "notimage.nii.gz", f.moving]
    return refuse(argv, "fixed image", f / "notimage.nii.gz", problem=NOT_READABLE, needs_web=True)


@case("view")
def view_fixed_equals_moving(f):
    return refuse(["view", f.fixed, f.fixed], "moving image", problem="is the same file", needs_web=True)


@case("view")
def view_nan_nifti(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.nii.gz")
    return refuse(["view", f.fixed, path], "moving image", path, problem=NAN, needs_web=True)


@case("view")
def view_label_map_that_is_an_image(f):
    argv = ["view", f.fixed, f.moving, "--fixed-labels", f.fixed_labels, "--moving-labels", f.moving]
    return refuse(argv, "moving labels", problem="non-integer values", needs_web=True)


@case("view")
def view_one_label_map_twice(f):
    argv = ["view", f.fixed, f.moving, "--fixed-labels", f.fixed_labels, "--moving-labels", f.fixed_labels]
    return refuse(argv, "moving labels", problem="is the same file", needs_web=True)


@case("view")
def view_missing_moving(f):
    return refuse(
        ["view", f.fixed, f / "nope.nii.gz"], f / "nope.nii.gz", problem="file not found", needs_web=True
    )


@case("view")
def view_steps_out_of_range(f):
    return refuse(["view", "--steps", "100000"], "--steps", problem="got 100000")


@case("view")
def view_regularization_nan(f):
    return refuse(["view", "--regularization", "nan"], "--regularization", problem="got nan")


@case("view")
def view_half_pair(f):
    return refuse(["view", f.fixed], "FIXED and MOVING")


@case("view")
def view_port_out_of_range(f):
    return refuse(["view", "--port", "70000"], "--port", problem="got 70000")


@case("view")
def view_data_dir_missing(f):
    return refuse(["view", "--data-dir", f / "none"], "--data-dir", problem="No such file", needs_web=True)


# -------------------------------------------------------------------------------- legitimate successes
@case("success")
def success_every_output_with_upper_case_suffixes(f):
    """ITK picks formats by lower-case suffixes only: T.H5 and W.NII.GZ are written and renamed."""
    names = ("T.H5", "W.NII.GZ", "D.MHA", "Q.PNG", "R.JSON")
    more = [
        "--warped",
        f / names[1],
        "--displacement",
        f / names[2],
        "--qc",
        f / names[3],
        "--report",
        f / names[4],
    ]
    return Expect(f.register(None, None, "--steps", "1", *more, out=names[0]), success=True, outputs=names)


@case("success")
def success_text_transform_replacing_an_old_one(f):
    (f / "t.tfm").write_text("old")
    argv = f.register(None, None, "--steps", "1", "--overwrite", out="t.tfm")
    return Expect(argv, success=True, outputs=("t.tfm",), changed=("t.tfm",))


@case("success")
def success_evaluate(f):
    return Expect(f.evaluate(f.transform()), success=True, json_stdout=True)
