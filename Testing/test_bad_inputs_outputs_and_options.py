"""Catalogue of bad inputs, the outputs and options: each case runs ``rlreg register`` as a real subprocess
with an output that would replace an input (directly, through a symbolic or hard link, the raw file of an
``.mhd``, a slice of a DICOM series) or another output, an output that exists or whose folder does not,
label maps that do not fit, or a bad option (policy, uncertainty, steps, memory cap, CUDA without a GPU),
and checks the exact one-line message, exit code 2, and that no file was written or changed (checksums of
every file in the test folder before and after); plus the numbers of the up-front memory check for a
CT-sized pair."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bad_inputs_support import (  # Testing/ is on sys.path, as for conftest
    Cases,
    _image,
    _slices,
    check_refused,
)
from catalogue_support import _blobs, _write

from RLRegistrationLib.registration.memory import GIB, estimate_peak_memory
from RLRegistrationLib.registration.session import SessionOptions

NEVER = "an output never replaces an input (choose another file name)"

CASES = Cases()
case = CASES.case


# ---------------------------------------------------------------------------- outputs onto inputs
@case
def warped_onto_moving_with_overwrite(p):
    """The issue's case: --warped moving.nii.gz --overwrite replaced the user's input."""
    argv = p.register(None, "--warped", p.moving, "--overwrite")
    return argv, [
        f"rlreg: error: --warped '{p.moving}': is the same file as the moving image '{p.moving}'; {NEVER}"
    ]


@case
def warped_onto_moving_without_overwrite(p):
    argv = p.register(None, "--warped", p.moving)
    return argv, [
        f"rlreg: error: --warped '{p.moving}': is the same file as the moving image '{p.moving}'; {NEVER}"
    ]


@case
def displacement_through_symlink_onto_fixed(p):
    link = p.dir / "link.nii.gz"
    link.symlink_to(p.fixed)
    argv = p.register(None, "--displacement", link, "--overwrite")
    return argv, [
        f"rlreg: error: --displacement '{link}': is the same file as the fixed image '{p.fixed}'; {NEVER}"
    ]


@case
def qc_onto_input_given_as_symlink(p):
    link = p.dir / "moving_link.nii.gz"
    link.symlink_to(p.moving)
    argv = p.register(link, "--qc", p.moving, "--overwrite")
    return argv, [f"rlreg: error: --qc '{p.moving}': is the same file as the moving image '{link}'; {NEVER}"]


@case
def weight_map_onto_hard_linked_labels(p):
    hard = p.dir / "hard.nii.gz"
    os.link(p.fixed_labels, hard)
    labels = ["--fixed-labels", p.fixed_labels, "--moving-labels", p.moving_labels]
    argv = p.register(None, *labels, "--weight-map", hard, "--overwrite")
    expected = f"rlreg: error: --weight-map '{hard}': is the same file as the fixed labels '{p.fixed_labels}'; {NEVER}"
    return argv, [expected]


@case
def report_onto_moving_labels(p):
    labels = ["--fixed-labels", p.fixed_labels, "--moving-labels", p.moving_labels]
    argv = p.register(None, *labels, "--report", p.moving_labels, "--overwrite")
    expected = f"rlreg: error: --report '{p.moving_labels}': is the same file as the moving labels '{p.moving_labels}'; {NEVER}"
    return argv, [expected]


@case
def warped_onto_the_raw_file_of_an_mhd(p):
    path = _write(_image(p.moving_array), p.dir / "m.mhd")
    raw = p.dir / "m.raw"
    argv = p.register(path, "--warped", raw, "--overwrite")
    return argv, [f"rlreg: error: --warped '{raw}': is the same file as the moving image '{raw}'; {NEVER}"]


@case
def transform_onto_dicom_slice(p):
    folder = _slices(p)
    target = folder / "slice003.dcm"
    argv = p.register(folder, "--qc", target, "--overwrite")
    return argv, [f"rlreg: error: --qc '{target}': is the same file as the moving image '{target}'; {NEVER}"]


@case
def two_outputs_one_path(p):
    argv = p.register(None, "--warped", p.dir / "w.nii.gz", "--displacement", p.dir / "w.nii.gz")
    return argv, [
        f"rlreg: error: --displacement '{p.dir / 'w.nii.gz'}': the same file is also given to --warped"
    ]


@case
def two_outputs_one_path_through_symlink(p):
    link = p.dir / "w_link.nii.gz"
    link.symlink_to(p.dir / "w.nii.gz")  # dangling until w.nii.gz would be written
    argv = p.register(None, "--warped", p.dir / "w.nii.gz", "--displacement", link)
    return argv, [f"rlreg: error: --displacement '{link}': the same file is also given to --warped"]


@case
def existing_output_without_overwrite(p):
    p.out.write_bytes(b"precious")
    return p.register(), [f"rlreg: error: -o/--output '{p.out}': file exists (use --overwrite to replace it)"]


@case
def output_folder_missing(p):
    out = p.dir / "nowhere" / "t.h5"
    argv = [p.fixed, p.moving, "-o", out]
    return argv, [f"rlreg: error: -o/--output '{out}': folder '{out.parent}' does not exist"]


@case
def transform_suffix(p):
    out = p.dir / "t.nii.gz"
    argv = [p.fixed, p.moving, "-o", out]
    return argv, [f"rlreg: error: -o/--output '{out}': the file name must end in .h5, .hdf5, .tfm, .txt"]


# ---------------------------------------------------------------------------- labels and options
@case
def only_fixed_labels(p):
    argv = p.register(None, "--fixed-labels", p.fixed_labels)
    return argv, ["rlreg: error: labels: give both --fixed-labels and --moving-labels, or neither"]


@case
def labels_not_integer(p):
    path = _write(_image(_blobs() * 1.5), p.dir / "soft.nii.gz")
    argv = p.register(None, "--fixed-labels", p.fixed_labels, "--moving-labels", path)
    return argv, [f"rlreg: error: moving labels '{path}': label map has non-integer values"]


@case
def labels_off_the_image_grid(p):
    path = _write(_image((_blobs() > 0.5).astype(np.int16), origin=(0.0, 0.0, 0.0)), p.dir / "off.nii.gz")
    argv = p.register(None, "--fixed-labels", path, "--moving-labels", p.moving_labels)
    problem = "label map is not on the same grid as its image (size/origin/spacing/direction)"
    return argv, [f"rlreg: error: fixed labels '{path}': {problem}"]


@case
def unknown_policy(p):
    from RLRegistrationLib.policies.registry import available_policies

    names = ", ".join(sorted(available_policies()))
    return p.register(None, "--policy", "magic"), [
        f"rlreg: error: --policy: unknown policy 'magic' (available: {names})"
    ]


@case
def uncertainty_without_samples(p):
    argv = p.register(None, "--uncertainty", p.dir / "u.nii.gz")
    problem = "--uncertainty needs --samples K > 1 (the map is the spread of K sampled trajectories)"
    return argv, [f"rlreg: error: {problem}"]


@case
def negative_steps(p):
    return p.register(None, "--steps", "-1"), [
        "rlreg: error: --steps: must be an integer from 0 to 500, got -1"
    ]


@case
def bad_memory_cap(p):
    return p.register(None, "--max-memory", "-1"), [
        "rlreg: error: --max-memory: must be a number from 0.25 to 4096, got -1"
    ]


@case
def over_the_memory_cap(p):
    estimate = estimate_peak_memory(
        sitk.ReadImage(str(p.fixed)), sitk.ReadImage(str(p.moving)), SessionOptions()
    )
    part, size = estimate.largest_part
    problem = (
        f"registering it would need about {estimate.total_bytes / GIB:.1f} GiB of memory, above the 0.3 GiB "
        f"cap ({part}: {size / GIB:.1f} GiB); write the field on the working grid (--output-grid working) or "
        "raise the cap (--max-memory)"
    )
    return p.register(None, "--max-memory", "0.3"), [f"rlreg: error: fixed image '{p.fixed}': {problem}"]


if not torch.cuda.is_available():

    @case
    def cuda_without_gpu(p):
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        problem = (
            f"CUDA was requested but no usable GPU is available (torch {torch.__version__} is {build}); "
            "use --device cpu or install a CUDA build of PyTorch"
        )
        return p.register(None, "--device", "cuda"), [f"rlreg: error: {problem}"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_exact_line_exit_2_and_nothing_written(name, tmp_path):
    check_refused(CASES[name], tmp_path)


def test_memory_estimate_of_a_ct_sized_pair_fits_by_default_on_the_working_grid():
    """Numbers of the up-front memory check for a 512x512x400 int16 pair (the images are never filled): the
    field on the fixed grid would need 8.2 GiB; by default it is written on the (smaller) working grid."""
    ct = sitk.Image([512, 512, 400], sitk.sitkInt16)
    voxels = 512 * 512 * 400
    default = estimate_peak_memory(ct, ct, SessionOptions())
    fixed = estimate_peak_memory(ct, ct, SessionOptions(output_grid="fixed"))
    working = estimate_peak_memory(ct, ct, SessionOptions(output_grid="working"))
    assert fixed.parts["the two images"] == 2 * 2 * voxels
    assert fixed.parts["the displacement field on the output grid"] == 84 * voxels  # 8.2 GiB
    for estimate in (default, fixed, working):
        assert estimate.total_bytes == sum(estimate.parts.values())
    # only where the field is written differs
    field = "the displacement field on the output grid"
    assert fixed.total_bytes - working.total_bytes == fixed.parts[field] - working.parts[field]
    assert working.parts[field] < fixed.parts[field] / 50
    assert working.total_bytes < default.total_bytes < working.total_bytes + 0.05 * GIB  # one layer more
    assert fixed.total_bytes > 4 * GIB > default.total_bytes
