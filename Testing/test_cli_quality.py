"""``--quality``: the working grid and TTO schedule each preset sets, and what it refuses."""

from __future__ import annotations

import pytest

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.frontends.cli import _policy_and_options, build_parser


def parse(*extra: str):
    return build_parser().parse_args(
        ["register", "f.nii.gz", "m.nii.gz", "-o", "t.h5", "--device", "cpu", *extra]
    )


def test_standard_is_the_2mm_capped_grid_and_the_4_gib_cap():
    args = parse()
    policy, options = _policy_and_options(args)
    assert (options.working_spacing_mm, options.max_working_voxels, options.max_memory_gib) == (
        2.0,
        112**3,
        4.0,
    )
    assert policy.config.pyramid == (2, 2, 2, 1)


def test_fine_is_the_1mm_uncapped_grid_with_four_steps_ending_at_1mm():
    args = parse("--quality", "fine")
    policy, options = _policy_and_options(args)
    assert (options.working_spacing_mm, options.max_working_voxels, options.max_memory_gib) == (
        1.0,
        None,
        8.0,
    )
    assert policy.config.pyramid == (4, 4, 2, 1) and policy.config.ncc_window == 5
    assert args.steps == 4
    args = parse("--quality", "fine", "--steps", "6")  # the user's steps win; the last level repeats
    _policy_and_options(args)
    assert args.steps == 6


def test_explicit_spacing_and_memory_cap_win_over_the_preset():
    _, options = _policy_and_options(parse("--quality", "fine", "--spacing", "1.5", "--max-memory", "12"))
    assert (options.working_spacing_mm, options.max_memory_gib) == (1.5, 12.0)


def test_fine_is_refused_for_other_policies():
    with pytest.raises(InputError, match="--quality fine sets the tto schedule: use it with --policy tto"):
        _policy_and_options(parse("--quality", "fine", "--policy", "spac-brain-synth+tto"))


def test_fine_is_never_finer_than_the_fixed_image():
    import SimpleITK as sitk

    from RLRegistrationLib.frontends.cli import no_finer_than_the_image

    coarse = sitk.Image(8, 8, 8, sitk.sitkFloat32)
    coarse.SetSpacing((2.0, 2.5, 3.0))
    args = parse("--quality", "fine")
    policy, options = _policy_and_options(args)
    no_finer_than_the_image(args, policy, options, coarse)
    assert options.working_spacing_mm == 2.0
    assert policy.config.pyramid == (2, 2, 1, 1)  # steps at 4, 4, 2 and 2 mm
    args = parse("--quality", "fine", "--spacing", "1.0")  # asked for: kept
    policy, options = _policy_and_options(args)
    no_finer_than_the_image(args, policy, options, coarse)
    assert options.working_spacing_mm == 1.0 and policy.config.pyramid == (4, 4, 2, 1)


def test_followup_is_fine_with_regularization_6_unless_the_user_gives_one():
    args = parse("--quality", "followup")
    policy, options = _policy_and_options(args)
    assert (options.working_spacing_mm, options.max_working_voxels) == (1.0, None)
    assert policy.config.pyramid == (4, 4, 2, 1) and policy.config.ncc_window == 5
    assert policy.config.regularization == 6.0 and args.steps == 4
    policy, _ = _policy_and_options(parse("--quality", "followup", "--regularization", "3"))
    assert policy.config.regularization == 3.0
    policy, _ = _policy_and_options(parse("--quality", "fine"))
    assert policy.config.regularization == 2.0
