"""Catalogue cases on inputs: file formats and values, geometry, label maps, masks and pairs."""

from __future__ import annotations

import os
import struct

import numpy as np
import SimpleITK as sitk
from catalogue_support import (  # Testing/ is on sys.path, as for conftest
    NAN,
    NOT_READABLE,
    RUN,
    _blobs,
    _dicom_series,
    _edit_text_header,
    _image,
    _nifti,
    _with_nan,
    _write,
    case,
    refuse,
)

# ------------------------------------------------------------------------------------ formats and values


@case("format")
def nifti_gz_nan(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.nii.gz")
    return refuse(f.with_moving(path), "moving image", path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_nan(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.nii")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_gz_inf(f):
    path = _write(_image(_with_nan(f.array, np.inf)), f / "inf.nii.gz")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_minus_inf_and_nan(f):
    array = _with_nan(_with_nan(f.array, -np.inf, (1, 1, 1)))
    path = _write(_image(array), f / "two.nii")
    return refuse(f.with_moving(path), path, problem=f"contains 2 {NAN}")


@case("format")
def nifti_float64_nan(f):
    path = _write(_image(_with_nan(f.array.astype(np.float64))), f / "nan64.nii.gz")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_big_endian_nan(f):
    path = _nifti(f / "big.nii", _with_nan(f.array), order=">")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_hdr_img_pair_nan(f):
    path = _nifti(f / "pair.hdr", _with_nan(f.array), pair=True)
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_nan_in_the_fixed_image(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.nii.gz")
    return refuse(f.register(path), "fixed image", path, problem=f"contains 1 {NAN}")


@case("format")
def nifti_nan_in_the_fixed_labels(f):
    path = _write(_image(_with_nan(f.labels_array.astype(np.float32))), f / "labels_nan.nii.gz")
    argv = f.register(None, None, "--fixed-labels", path, "--moving-labels", f.moving_labels)
    return refuse(argv, "fixed labels", path, problem=NAN)


@case("format")
def nifti_nan_in_a_mask(f):
    path = _write(_image(_with_nan(f.labels_array.astype(np.float32))), f / "mask_nan.nii")
    return refuse(f.register(None, None, "--fixed-mask", path), "fixed mask", path, problem=NAN)


@case("format")
def mha_nan(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.mha")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def mha_compressed_inf(f):
    path = _write(_image(_with_nan(f.array, np.inf)), f / "inf.mha", compress=True)
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nrrd_nan(f):
    path = _write(_image(_with_nan(f.array)), f / "nan.nrrd")
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def nrrd_gzip_nan(f):
    path = _write(_image(_with_nan(f.array)), f / "nan_gz.nrrd", compress=True)
    return refuse(f.with_moving(path), path, problem=f"contains 1 {NAN}")


@case("format")
def complex_fixed_image(f):
    """The issue's case: named as a problem of the moving image, after a numpy ComplexWarning."""
    path = _write(_image(f.array.astype(np.complex64) * (1 + 1j)), f / "complex.nii.gz")
    return refuse(f.register(path), "fixed image", path, problem="complex-valued voxels")


@case("format")
def complex_moving_image(f):
    path = _write(_image(f.array.astype(np.complex64)), f / "complex.nrrd")
    return refuse(f.with_moving(path), "moving image", path, problem="complex-valued voxels")


@case("format")
def text_file_named_nii_gz(f):
    (f / "notes.nii.gz").write_text("this is not an image")
    return refuse(f.with_moving(f / "notes.nii.gz"), f / "notes.nii.gz", problem=NOT_READABLE)


@case("format")
def empty_file(f):
    (f / "empty.nii").write_bytes(b"")
    return refuse(f.with_moving(f / "empty.nii"), f / "empty.nii", problem=NOT_READABLE)


@case("format")
def random_bytes_nrrd(f):
    (f / "noise.nrrd").write_bytes(np.random.default_rng(1).bytes(5000))
    return refuse(f.with_moving(f / "noise.nrrd"), f / "noise.nrrd", problem=NOT_READABLE)


@case("format")
def html_page_named_mha(f):
    (f / "page.mha").write_text("<html><body>404 Not Found</body></html>")
    return refuse(f.with_moving(f / "page.mha"), f / "page.mha", problem=NOT_READABLE)


@case("format")
def unknown_suffix(f):
    path = f / "image.xyz"
    path.write_bytes(f.moving.read_bytes())
    return refuse(f.with_moving(path), path, problem=NOT_READABLE)


@case("format")
def png_picture(f):
    path = _write(sitk.Cast(_image(255 * f.array[0] / f.array.max()), sitk.sitkUInt8), f / "slice.png")
    return refuse(f.with_moving(path), path, problem="a 3D image is required, this one is 2D")


@case("format")
def image_4d(f):
    path = _write(sitk.GetImageFromArray(np.stack([f.array] * 2), isVector=False), f / "four.nii.gz")
    return refuse(f.with_moving(path), path, problem="a 3D image is required, this one is 4D")


@case("format")
def vector_image(f):
    path = _write(_image(np.stack([f.array] * 3, -1), vector=True), f / "rgb.nrrd")
    return refuse(f.with_moving(path), path, problem="a scalar image is required")


@case("format")
def one_slice(f):
    path = _write(_image(f.array[:1]), f / "one.nrrd")
    return refuse(f.with_moving(path), path, problem="has a flat axis")


@case("format")
def constant_image(f):
    path = _write(_image(np.full_like(f.array, 7.0)), f / "const.nii.gz")
    return refuse(f.with_moving(path), path, problem="image is empty or constant")


@case("format")
def all_zero_int_image(f):
    path = _write(_image(np.zeros(f.array.shape, np.int16)), f / "zero.nrrd")
    return refuse(f.with_moving(path), path, problem="image is empty or constant")


@case("format")
def nifti_gz_cut_short(f):
    data = _write(_image(f.array), f / "full.nii.gz").read_bytes()
    (f / "full.nii.gz").unlink()
    (f / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    return refuse(f.with_moving(f / "cut.nii.gz"), f / "cut.nii.gz", problem="compressed data is cut short")


@case("format")
def nifti_cut_short(f):
    data = _write(_image(f.array), f / "full.nii").read_bytes()
    (f / "full.nii").unlink()
    (f / "cut.nii").write_bytes(data[:-100])
    return refuse(f.with_moving(f / "cut.nii"), f / "cut.nii", problem="file is cut short")


@case("format")
def nrrd_header_without_data(f):
    data = _write(_image(f.array), f / "full.nrrd").read_bytes()
    (f / "full.nrrd").unlink()
    (f / "head.nrrd").write_bytes(data[: data.index(b"\n\n") + 2])
    return refuse(f.with_moving(f / "head.nrrd"), f / "head.nrrd", problem="file is cut short")


@case("format")
def mhd_without_its_raw_file(f):
    path = _write(_image(f.array), f / "m.mhd")
    (f / "m.raw").unlink()
    return refuse(f.with_moving(path), path, problem="its data file 'm.raw' is missing")


@case("format")
def gzip_crc_corrupt(f):
    data = bytearray(f.moving.read_bytes())
    data[-8] ^= 0xFF
    (f / "crc.nii.gz").write_bytes(bytes(data))
    return refuse(f.with_moving(f / "crc.nii.gz"), f / "crc.nii.gz", problem="compressed data is corrupt")


@case("format")
def folder_without_dicom_series(f):
    """The issue's case: two ITK WARNING lines came first."""
    (f / "empty").mkdir()
    return refuse(f.with_moving(f / "empty"), f / "empty", problem="folder holds no DICOM series")


@case("format")
def folder_of_junk_dcm_files(f):
    (f / "junk").mkdir()
    (f / "junk" / "a.dcm").write_bytes(np.random.default_rng(2).bytes(3000))
    (f / "junk" / "b.dcm").write_bytes(b"DICM" * 200)
    return refuse(f.with_moving(f / "junk"), f / "junk", problem="folder holds no DICOM series")


@case("format")
def dicom_series_with_a_missing_slice(f):
    folder = _dicom_series(f / "series", f.array)
    (folder / "slice007.dcm").unlink()
    return refuse(f.with_moving(folder), folder, problem="DICOM series has 1 missing slice(s)")


@case("format")
def device_file_as_input(f):
    return refuse(f.with_moving("/dev/null"), "/dev/null", problem="not a regular file")


@case("format")
def named_pipe_as_input(f):
    """A pipe nobody writes to: opening it would wait forever."""
    os.mkfifo(f / "pipe.nii")
    return refuse(f.with_moving(f / "pipe.nii"), f / "pipe.nii", problem="not a regular file")


@case("format")
def loop_of_symbolic_links(f):
    (f / "a.nii").symlink_to(f / "b.nii")
    (f / "b.nii").symlink_to(f / "a.nii")
    return refuse(f.with_moving(f / "a.nii"), f / "a.nii", problem="cannot be read")


@case("format")
def dangling_symbolic_link(f):
    (f / "gone.nii.gz").symlink_to(f / "deleted.nii.gz")
    return refuse(f.with_moving(f / "gone.nii.gz"), f / "gone.nii.gz", problem="file not found")


@case("format")
def missing_file(f):
    return refuse(f.with_moving(f / "nope.nii.gz"), f / "nope.nii.gz", problem="file not found")


@case("format")
def empty_file_name(f):
    argv = ["register", f.fixed, "", "-o", f / "t.h5", *RUN]
    return refuse(argv, "moving image", problem="the file name is empty")


# ---------------------------------------------------------------------------------------------- geometry
SPACING = "in its header"


@case("geometry")
def nifti_pixdim_zero(f):
    """The issue's case: ITK registered it on a 1 mm guess after 6 warning lines."""
    path = _nifti(f / "pix0.nii", f.array, pixdim=(0.0, 2.0, 2.0))
    return refuse(f.with_moving(path), path, "pixdim", problem="voxel spacing 0x2x2 mm")


@case("geometry")
def nifti_pixdim_negative(f):
    path = _nifti(f / "pixneg.nii", f.array, pixdim=(2.0, -2.0, 2.0))
    return refuse(f.with_moving(path), path, "pixdim", problem="voxel spacing 2x-2x2 mm")


@case("geometry")
def nifti_pixdim_nan(f):
    path = _nifti(f / "pixnan.nii", f.array, pixdim=(2.0, 2.0, float("nan")))
    return refuse(f.with_moving(path), path, "pixdim", problem="is not a positive number")


@case("geometry")
def nifti_gz_pixdim_zero_in_the_fixed_image(f):
    path = _nifti(f / "pix0.nii.gz", f.array, pixdim=(2.0, 2.0, 0.0))
    return refuse(f.register(path), "fixed image", path, problem="voxel spacing 2x2x0 mm")


@case("geometry")
def nifti_big_endian_pixdim_zero(f):
    path = _nifti(f / "big0.nii", f.array, pixdim=(0.0, 0.0, 0.0), order=">")
    return refuse(f.with_moving(path), path, problem="voxel spacing 0x0x0 mm")


@case("geometry")
def nifti_written_by_itk_with_pixdim_zero(f):
    """A header with an sform too (ITK's own files): pixdim 0 still refused."""
    path = _write(_image(f.array), f / "sform.nii")
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 80, 0.0)  # pixdim[1]
    path.write_bytes(bytes(data))
    return refuse(f.with_moving(path), path, problem="voxel spacing 0x2x2 mm")


@case("geometry")
def nrrd_zero_direction_vector(f):
    path = _write(_image(f.array), f / "zero.nrrd")
    _edit_text_header(path, b"(2,0,0) (0,2,0)", b"(0,0,0) (0,2,0)")
    return refuse(f.with_moving(path), path, "space directions", problem="voxel spacing 0x2x2 mm")


@case("geometry")
def nrrd_nan_direction_vector(f):
    path = _write(_image(f.array), f / "nandir.nrrd")
    _edit_text_header(path, b"(0,0,2)", b"(0,0,nan)")
    return refuse(f.with_moving(path), path, problem="is not a positive number")


@case("geometry")
def nrrd_spacings_zero(f):
    path = _write(_image(f.array), f / "spacings.nrrd")
    _edit_text_header(path, b"space directions: (2,0,0) (0,2,0) (0,0,2)\n", b"spacings: 2 0 2\n")
    _edit_text_header(path, b"space: left-posterior-superior\n", b"")
    _edit_text_header(path, b"space origin: (-20,10,5)\n", b"")
    return refuse(f.with_moving(path), path, "spacings", problem="voxel spacing 2x0x2 mm")


@case("geometry")
def mha_spacing_zero(f):
    path = _write(_image(f.array), f / "zero.mha")
    _edit_text_header(path, b"ElementSpacing = 2 2 2", b"ElementSpacing = 2 0 2")
    return refuse(f.with_moving(path), path, "ElementSpacing", problem="voxel spacing 2x0x2 mm")


@case("geometry")
def mha_spacing_negative(f):
    path = _write(_image(f.array), f / "neg.mha")
    _edit_text_header(path, b"ElementSpacing = 2 2 2", b"ElementSpacing = -2 2 2")
    return refuse(f.with_moving(path), path, problem="voxel spacing -2x2x2 mm")


@case("geometry")
def mhd_spacing_nan(f):
    path = _write(_image(f.array), f / "nan.mhd")
    _edit_text_header(path, b"ElementSpacing = 2 2 2", b"ElementSpacing = 2 nan 2")
    return refuse(f.with_moving(path), path, problem="is not a positive number")


@case("geometry")
def spacing_in_metres(f):
    path = _write(_image(f.array, spacing=(0.002, 0.002, 0.002)), f / "metres.mha")
    return refuse(f.with_moving(path), path, problem="outside 0.01-50 mm")


@case("geometry")
def spacing_too_coarse(f):
    path = _write(_image(f.array, spacing=(2.0, 2.0, 80.0)), f / "coarse.nrrd")
    return refuse(f.with_moving(path), path, problem="outside 0.01-50 mm")


@case("geometry")
def singular_direction(f):
    path = _write(_image(f.array), f / "singular.nrrd")
    _edit_text_header(path, b"(2,0,0) (0,2,0) (0,0,2)", b"(2,0,0) (2,0,0) (0,0,2)")
    return refuse(f.with_moving(path), path, problem="direction matrix is singular")


@case("geometry")
def skewed_direction(f):
    path = _write(_image(f.array), f / "skew.nrrd")
    _edit_text_header(path, b"(2,0,0) (0,2,0) (0,0,2)", b"(2,0,0) (1,2,0) (0,0,2)")
    return refuse(f.with_moving(path), path, problem="direction matrix is not orthonormal")


@case("geometry")
def too_small_for_the_pyramid(f):
    path = _write(_image(_blobs((18, 20, 6))), f / "small.nii.gz")
    return refuse(f.register(path), "fixed image", path, problem="too small for the registration pyramid")


@case("geometry")
def no_overlap_without_initialization(f):
    path = _write(_image(f.array, origin=(980.0, 10.0, 5.0)), f / "far.nii.gz")
    argv = f.with_moving(path, "--initialization", "none")
    return refuse(argv, "moving image", problem="does not overlap the fixed image")


# ------------------------------------------------------------------------------ label maps, masks, pairs
@case("values")
def labels_with_fractions(f):
    path = _write(_image(f.array * 1.5), f / "soft.nii.gz")
    argv = f.register(None, None, "--fixed-labels", f.fixed_labels, "--moving-labels", path)
    return refuse(argv, "moving labels", path, problem="non-integer values")


@case("values")
def labels_all_zero(f):
    path = _write(_image(np.zeros(f.array.shape, np.int16)), f / "zero_labels.nii.gz")
    argv = f.register(None, None, "--fixed-labels", path, "--moving-labels", f.moving_labels)
    return refuse(argv, "fixed labels", path, problem="holds no labels")


@case("values")
def labels_off_the_grid(f):
    path = _write(_image(f.labels_array, origin=(0.0, 0.0, 0.0)), f / "off.nii.gz")
    argv = f.register(None, None, "--fixed-labels", path, "--moving-labels", f.moving_labels)
    return refuse(argv, "fixed labels", path, problem="not on the same grid")


@case("values")
def labels_2d(f):
    path = _write(_image(f.labels_array[0]), f / "flat_labels.nrrd")
    argv = f.register(None, None, "--fixed-labels", f.fixed_labels, "--moving-labels", path)
    return refuse(argv, "moving labels", path, problem="a 3D image is required")


@case("values")
def only_the_fixed_labels(f):
    return refuse(f.register(None, None, "--fixed-labels", f.fixed_labels), "--moving-labels")


@case("values")
def empty_mask(f):
    path = _write(_image(np.zeros(f.array.shape, np.uint8)), f / "mask.nii.gz")
    return refuse(f.register(None, None, "--moving-mask", path), "moving mask", path, problem="empty")


@case("values")
def mask_with_fractions(f):
    path = _write(_image(f.array), f / "soft_mask.nii.gz")
    return refuse(f.register(None, None, "--fixed-mask", path), "fixed mask", path, problem="non-integer")


@case("values")
def fixed_and_moving_are_one_file(f):
    return refuse(f.register(f.fixed, f.fixed), "moving image", "fixed image", problem="is the same file")


@case("values")
def fixed_and_moving_one_file_through_a_link(f):
    (f / "link.nii.gz").symlink_to(f.fixed)
    return refuse(f.register(f.fixed, f / "link.nii.gz"), f / "link.nii.gz", problem="is the same file")
