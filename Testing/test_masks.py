"""Masks restricting the similarity: checks of a mask against its image, the weighted similarities, the
session's ``fixed_mask`` / ``moving_mask`` and its ``initialization`` option (with the older ``affine``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.fields.similarity import MINDSSC, MSE, LocalNCC
from RLRegistrationLib.io.masks import MaskWarning, conform_mask
from RLRegistrationLib.policies.registry import make_policy
from RLRegistrationLib.registration.session import RegistrationSession, SessionOptions


def _image(blob_array, seed=0, shape=(32, 32, 32)):
    image = sitk.GetImageFromArray(blob_array(shape, seed=seed, blobs=20))
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((-30.0, -30.0, -30.0))
    return image


def _box_mask(image, lo=8, hi=24, dtype=np.uint8, value=1):
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype)
    array[lo:hi, lo:hi, lo:hi] = value
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    return mask


def test_conform_mask_on_the_same_grid_gives_zero_one_uint8(blob_array):
    image = _image(blob_array)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaskWarning)
        mask = conform_mask(_box_mask(image, value=7, dtype=np.int16), image, "fixed mask")
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) == {0, 1}


def test_mask_on_another_grid_is_resampled_with_a_warning(blob_array):
    image = _image(blob_array)
    coarse = sitk.Image([16, 16, 16], sitk.sitkUInt8)
    coarse.SetSpacing((4.0, 4.0, 4.0))
    coarse.SetOrigin((-30.0, -30.0, -30.0))
    coarse[4:12, 4:12, 4:12] = 1
    with pytest.warns(MaskWarning, match="resampled"):
        mask = conform_mask(coarse, image, "fixed mask 'm.nii.gz'")
    assert mask.GetSize() == image.GetSize()
    assert sitk.GetArrayViewFromImage(mask).sum() > 0


@pytest.mark.parametrize(
    "kind, message",
    [("empty", "empty"), ("fractional", "non-integer"), ("elsewhere", "does not overlap")],
)
def test_bad_masks_are_clear_errors(kind, message, blob_array):
    image = _image(blob_array)
    if kind == "empty":
        mask = _box_mask(image, value=0)
    elif kind == "fractional":
        mask = _box_mask(image, dtype=np.float32, value=0.5)
    else:
        mask = _box_mask(image)
        mask.SetOrigin((500.0, 0.0, 0.0))  # far away from the image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaskWarning)
        with pytest.raises(InputError, match=message) as error:
            conform_mask(mask, image, "fixed mask 'm.nii.gz'")
    assert "fixed mask 'm.nii.gz'" in str(error.value)


@pytest.mark.parametrize("similarity", [LocalNCC(window=5), MSE(), MINDSSC()])
def test_weighted_similarity_ignores_what_is_outside_the_weight(similarity):
    g = torch.Generator().manual_seed(0)
    fixed = torch.rand((1, 1, 16, 16, 16), generator=g)
    warped = fixed + 0.1 * torch.rand((1, 1, 16, 16, 16), generator=g)
    weight = torch.zeros_like(fixed)
    weight[..., :, :, :8] = 1.0
    spoiled = warped.clone()
    spoiled[..., 12:] = torch.rand((1, 1, 16, 16, 4), generator=g)  # far from the weighted half
    torch.testing.assert_close(similarity(fixed, warped, torch.ones_like(fixed)), similarity(fixed, warped))
    torch.testing.assert_close(similarity(fixed, spoiled, weight), similarity(fixed, warped, weight))
    assert not torch.allclose(similarity(fixed, spoiled), similarity(fixed, warped))


def test_initialization_option(blob_array):
    fixed = _image(blob_array)
    policy = make_policy("tto")
    assert RegistrationSession(fixed, fixed, policy).initialization == "affine"
    rigid = SessionOptions(initialization="rigid", device="cpu")
    assert RegistrationSession(fixed, fixed, policy, rigid).initialization == "rigid"
    none = SessionOptions(initialization="none", device="cpu")
    assert RegistrationSession(fixed, fixed, policy, none).initialization == "none"
    with pytest.raises(InputError, match="initialization 'bspline'"):
        RegistrationSession(fixed, fixed, policy, SessionOptions(initialization="bspline"))


def test_session_with_masks_restricts_the_loss_to_them(blob_array):
    """A region of the moving image spoiled outside the masks changes nothing of the masked run."""
    fixed = _image(blob_array, seed=1)
    moving = _image(blob_array, seed=2)
    spoiled = sitk.GetArrayFromImage(moving)
    # far outside the masks (slices 14..27) and beyond the similarity's reach; a flip keeps the histogram
    # (and so the intensity normalization)
    spoiled[:4] = spoiled[:4, ::-1, ::-1]
    spoiled_moving = sitk.GetImageFromArray(spoiled)
    spoiled_moving.CopyInformation(moving)
    masks = {"fixed_mask": _box_mask(fixed, 14, 28), "moving_mask": _box_mask(moving, 14, 28)}
    options = SessionOptions(working_spacing_mm=2.0, initialization="none", device="cpu", seed=0)

    def run(moving_image, **kwargs):
        session = RegistrationSession(fixed, moving_image, make_policy("tto"), options, **kwargs)
        list(session.run(2))
        return session

    masked, masked_spoiled = run(moving, **masks), run(spoiled_moving, **masks)
    assert masked.fixed_mask_tensor is not None and masked.moving_mask_tensor is not None
    unmasked, unmasked_spoiled = run(moving), run(spoiled_moving)
    # not bit-identical (the fields differ by a few hundredths of a voxel), but far less than unmasked
    masked_change = (masked.field_at() - masked_spoiled.field_at()).abs().max()
    unmasked_change = (unmasked.field_at() - unmasked_spoiled.field_at()).abs().max()
    assert masked_change < 0.1 * unmasked_change
    assert masked.reports[-1].similarity == pytest.approx(masked_spoiled.reports[-1].similarity, abs=1e-3)


def test_session_mask_outside_the_working_grid_is_an_error(blob_array):
    """The images overlap (same content), but the moving mask covers only a part of the moving image that lies
    beyond the fixed field of view: nothing of it reaches the registered grid."""
    fixed = _image(blob_array)
    pad = 30
    moving = sitk.ConstantPad(fixed, (0, 0, 0), (pad, 0, 0), 0.0)  # more voxels along i, beyond the fixed
    inside = np.zeros(sitk.GetArrayViewFromImage(moving).shape, np.uint8)
    inside[:, :, -pad // 2 :] = 1  # only in the padding
    mask = sitk.GetImageFromArray(inside)
    mask.CopyInformation(moving)
    options = SessionOptions(working_spacing_mm=4.0, initialization="none", device="cpu")
    session = RegistrationSession(fixed, moving, make_policy("tto"), options, moving_mask=mask)
    with pytest.raises(InputError, match="moving mask: no voxel of it falls inside the registered field"):
        session.prepare()
