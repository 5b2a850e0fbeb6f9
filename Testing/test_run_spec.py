"""``RunSpec``: one checked description of a run, from a command line, a config file or a panel, and the
policy and session options ``plan_run`` makes of it (presets, working grid, memory cap)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from RLRegistrationLib.errors import InputError
from RLRegistrationLib.frontends.cli_parser import build_parser, spec_from_args
from RLRegistrationLib.options import RANGES
from RLRegistrationLib.registration.run_spec import OptionError, RunSpec, plan_run


def fixed_image(spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    image = sitk.Image(16, 16, 16, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    return image


def parse(*extra: str) -> RunSpec:
    args = build_parser().parse_args(
        ["register", "f.nii.gz", "m.nii.gz", "-o", "t.h5", "--device", "cpu", *extra]
    )
    return spec_from_args(args)


def plan(*extra: str, fixed: sitk.Image | None = None):
    return plan_run(parse(*extra), fixed or fixed_image())


def test_standard_is_the_2mm_capped_grid_and_the_4_gib_cap():
    run = plan("--quality", "standard")
    options = run.options
    assert (options.working_spacing_mm, options.max_working_voxels, options.max_memory_gib) == (
        2.0,
        112**3,
        4.0,
    )
    assert run.policy.config.pyramid == (2, 2, 2, 1) and run.steps == 6


def test_fine_is_the_1mm_uncapped_grid_with_four_steps_ending_at_1mm():
    run = plan("--quality", "fine")
    options = run.options
    assert (options.working_spacing_mm, options.max_working_voxels, options.max_memory_gib) == (
        1.0,
        None,
        8.0,
    )
    assert run.policy.config.pyramid == (4, 4, 2, 1) and run.policy.config.ncc_window == 5
    assert run.steps == 4
    assert (
        plan("--quality", "fine", "--steps", "6").steps == 6
    )  # the user's steps win; the last level repeats


def test_explicit_spacing_and_memory_cap_win_over_the_preset():
    options = plan("--quality", "fine", "--spacing", "1.5", "--max-memory", "12").options
    assert (options.working_spacing_mm, options.max_memory_gib) == (1.5, 12.0)


def test_fine_is_refused_for_a_learned_policy_alone(learned_models):
    with pytest.raises(
        OptionError, match="'fine' sets the tto schedule: use it with the policy tto or a chain"
    ):
        plan("--quality", "fine", "--policy", "morphseek-brain-synth-warmup")
    run = plan("--policy", "morphseek-brain-synth-warmup")  # auto: the learned policy's own grid and steps
    assert run.quality == "standard" and "fine schedules are for tto and the chains" in run.notes[-1]


def test_a_chain_at_fine_runs_its_learned_steps_then_the_fine_levels_they_do_not_replace(learned_models):
    # a card without inference.chain.fine: its learned steps, then the levels finer than its 3 mm grid
    run = plan("--quality", "fine", "--policy", "morphseek-brain-synth-warmup+tto")
    chain = run.policy
    assert (chain.first_steps, chain.then.config.pyramid) == (2, (2, 1))  # TTO at 2 and 1 mm
    assert chain.then.config.mapped_iterations == (12, 12) and chain.then.config.ncc_window == 5
    assert chain.then.config.regularization == 2.0  # the fine schedule's, not the standard chain's 4
    assert run.steps == 4 and run.options.working_spacing_mm == 1.0
    # the shipped chain's card: 1 learned step, then the fine levels less the first (4, 2, 1 mm)
    run = plan("--quality", "fine", "--policy", "spac-brain-synth+tto")
    assert (run.policy.first_steps, run.policy.then.config.pyramid, run.steps) == (1, (4, 2, 1), 4)
    assert run.policy.then.config.mapped_iterations == (5, 12, 12)
    followup = plan("--quality", "followup", "--policy", "spac-brain-synth+tto").policy
    assert followup.then.config.regularization == 6.0
    auto = plan("--policy", "spac-brain-synth+tto", "--pair", "different-subjects")
    assert auto.quality == "fine" and auto.policy.then.config.pyramid == (4, 2, 1)


def test_a_cards_fine_block_sets_the_handover(learned_models, tmp_path):
    from RLRegistrationLib.errors import PolicyError
    from RLRegistrationLib.policies.cards import chain_settings

    folder = Path(__file__).resolve().parents[1] / "models" / "spac-brain-synth"
    card = json.loads((folder / "card.json").read_text())
    card["inference"]["chain"]["fine"] = {
        "learned_steps": 3,
        "skip_levels": 3,
        "tto": {"regularization": 1.5},
    }
    (tmp_path / "card.json").write_text(json.dumps(card))
    (tmp_path / card["weights"]).symlink_to(folder / card["weights"])
    learned_models.register_model(tmp_path)
    run = plan("--quality", "fine", "--policy", "spac-brain-synth+tto")
    assert (run.policy.first_steps, run.policy.then.config.pyramid, run.steps) == (3, (1,), 4)
    assert run.policy.then.config.regularization == 1.5
    assert (
        plan(
            "--quality", "fine", "--policy", "spac-brain-synth+tto", "--regularization", "3"
        ).policy.then.config.regularization
        == 3.0
    )
    card["inference"]["chain"]["fine"] = {"learned_steps": 2, "skip_levels": 1, "tto": {"pyramid": [1]}}
    with pytest.raises(PolicyError, match="fine.tto must not set the pyramid"):
        chain_settings(card, tmp_path / "card.json")
    card["inference"]["chain"]["fine"] = {"learned_steps": -1, "skip_levels": 1}
    with pytest.raises(PolicyError, match="learned_steps -1 and skip_levels 1 must be integers"):
        chain_settings(card, tmp_path / "card.json")


def test_fine_is_never_finer_than_the_fixed_image():
    coarse = fixed_image((2.0, 2.5, 3.0))
    run = plan("--quality", "fine", fixed=coarse)
    assert run.options.working_spacing_mm == 2.0
    assert run.policy.config.pyramid == (2, 2, 1, 1)  # steps at 4, 4, 2 and 2 mm
    run = plan("--quality", "fine", "--spacing", "1.0", fixed=coarse)  # asked for: kept
    assert run.options.working_spacing_mm == 1.0 and run.policy.config.pyramid == (4, 4, 2, 1)


def test_followup_is_fine_with_regularization_6_unless_the_user_gives_one():
    run = plan("--quality", "followup")
    assert (run.options.working_spacing_mm, run.options.max_working_voxels) == (1.0, None)
    assert run.policy.config.pyramid == (4, 4, 2, 1) and run.policy.config.ncc_window == 5
    assert run.policy.config.regularization == 6.0 and run.steps == 4
    assert plan("--quality", "followup", "--regularization", "3").policy.config.regularization == 3.0
    assert plan("--quality", "fine").policy.config.regularization == 2.0


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--steps", "100000", "--steps: must be an integer from 0 to 500, got 100000"),
        ("--steps", "-1", "--steps: must be an integer from 0 to 500, got -1"),
        ("--iterations", "0", "--iterations: must be an integer from 1 to 500, got 0"),
        ("--regularization", "nan", "--regularization: must be a number from 0 to 100, got nan"),
        ("--regularization", "inf", "--regularization: must be a number from 0 to 100, got inf"),
        ("--regularization", "-1", "--regularization: must be a number from 0 to 100, got -1"),
        ("--spacing", "0", "--spacing: must be a number from 0.25 to 20, got 0"),
        ("--spacing", "-2", "--spacing: must be a number from 0.25 to 20, got -2"),
        ("--max-memory", "0", "--max-memory: must be a number from 0.25 to 4096, got 0"),
        ("--samples", "0", "--samples: must be an integer from 1 to 16, got 0"),
        ("--temperature", "-0.5", "--temperature: must be a number from 0 to 10, got -0.5"),
        ("--device", "tpu", "--device: choose from auto, cpu, cuda or cuda:N, got 'tpu'"),
    ],
)
def test_every_option_is_checked_with_its_range_in_the_message(option, value, message):
    with pytest.raises(InputError) as caught:
        parse(option, value)
    assert str(caught.value) == message


def test_the_ranges_are_the_ones_the_options_module_declares():
    for name, (low, high) in RANGES.items():
        with pytest.raises(OptionError, match=name):
            RunSpec(**{name: high * 2 + 1})
        RunSpec(**{name: low})  # the bounds themselves are allowed


def test_a_config_file_round_trips_and_options_given_win(tmp_path):
    spec = RunSpec(quality="followup", steps=5, regularization=4.5, initialization="rigid", seed=3)
    path = tmp_path / "run.json"
    spec.save(path)
    assert RunSpec.load(path) == spec
    assert parse("--config", str(path)) == spec.replace(device="cpu")
    assert parse("--config", str(path), "--steps", "2").steps == 2
    path.write_text(json.dumps({"quality": "fine", "stepz": 3}))
    with pytest.raises(InputError, match="unknown setting 'stepz'"):
        parse("--config", str(path))
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        parse("--config", str(path))


def test_no_affine_is_a_deprecated_name_of_initialization_none(capsys):
    assert parse("--no-affine").initialization == "none"
    assert "--no-affine is deprecated" in capsys.readouterr().err
    with pytest.raises(InputError, match="--no-affine contradicts --initialization rigid"):
        parse("--no-affine", "--initialization", "rigid")


def test_sampling_options_only_for_policies_that_sample():
    with pytest.raises(OptionError, match="policy 'tto' does not sample trajectories"):
        plan("--samples", "3")
    with pytest.raises(OptionError, match="unknown policy 'nope'"):
        plan("--policy", "nope")


def test_auto_quality_runs_the_finest_fine_schedule_that_fits_the_memory_cap(learned_models):
    image = fixed_image()  # 16^3 voxels at 1 mm: fine at 1 mm fits any cap
    run = plan(fixed=image)
    assert (
        run.quality == "fine" and run.options.working_spacing_mm == 1.0 and run.options.max_memory_gib == 4.0
    )
    assert run.notes == [
        next(n for n in run.notes if n.startswith("quality auto -> fine: 1 mm working grid"))
    ]
    assert set(run.policies) == {"same-patient"}  # the kind is found after the pre-alignment
    assert (
        run.policies["same-patient"].config.regularization == 6.0 and run.policy.config.regularization == 2.0
    )
    from RLRegistrationLib.registration.memory import GIB, estimate_peak_memory

    big = sitk.Image(256, 256, 170, sitk.sitkInt16)  # a 1 mm field of view of a whole head
    fine = plan("--max-memory", "100", fixed=big)
    medium = plan("--max-memory", "100", "--spacing", "1.5", "--quality", "fine", fixed=big)
    at_1mm, at_15mm = (
        estimate_peak_memory(big, big, run.options, steps=4).total_bytes / GIB for run in (fine, medium)
    )
    assert at_15mm < at_1mm
    for cap, expected, spacing in (
        (at_1mm + 0.01, "fine", 1.0),
        (at_15mm + 0.01, "fine", 1.5),
        (0.3, "standard", 2.0),
    ):
        run = plan("--max-memory", f"{cap:.2f}", fixed=big)
        assert (run.quality, run.options.working_spacing_mm) == (expected, spacing), run.notes
    assert "more than 0.3 GiB" in run.notes[0]
    learned = plan("--policy", "morphseek-brain-synth-warmup", fixed=image)
    assert learned.quality == "standard" and "fine schedules are for tto" in learned.notes[0]


def test_a_known_pair_kind_picks_its_schedule():
    same_patient = plan("--pair", "same-patient")
    assert same_patient.quality == "followup" and same_patient.options.pair == "same-patient"
    assert not same_patient.policies and same_patient.notes[0] == "pair: same patient (as asked)"
    session = plan("--pair", "same-session")
    assert session.options.pair == "same-session" and not session.options.steps_asked
    assert plan("--pair", "same-session", "--steps", "3").options.steps_asked
    tagged = plan_run(
        parse(), fixed_image(), pair=("different-subjects", "the DICOM series have different PatientIDs")
    )
    assert tagged.options.pair == "different-subjects" and "PatientIDs" in tagged.notes[0]


def test_build_session_starts_the_rigid_levels_copies_before_it_makes_the_policy(monkeypatch):
    """``build_session`` hands the session the smoothed copies of the rigid levels (8 and 4 mm), already
    being made when the plan makes the policy; with ``initialization none`` it smooths nothing."""
    from RLRegistrationLib.io import imaging
    from RLRegistrationLib.registration import run_spec

    fixed = fixed_image()
    moving = sitk.Image(fixed)
    seen = {}
    make_plan = run_spec.plan_run

    def recording_plan(spec, image, *args, **kwargs):
        seen["copies"] = sorted(spacing for (_, spacing) in copies_of[0]._copies)
        return make_plan(spec, image, *args, **kwargs)

    copies_of = []

    class Recorded(imaging.AntialiasedCopies):
        def __init__(self):
            super().__init__()
            copies_of.append(self)

    monkeypatch.setattr(imaging, "AntialiasedCopies", Recorded)
    monkeypatch.setattr(run_spec, "plan_run", recording_plan)
    session, _ = run_spec.build_session(RunSpec(device="cpu"), fixed, moving)
    assert seen["copies"] == [4.0, 4.0, 8.0, 8.0]  # both images, asked for before the plan was made
    assert session._copies is copies_of[0]
    copies_of.clear()
    run_spec.build_session(RunSpec(device="cpu", initialization="none"), fixed, moving)
    assert seen["copies"] == []
