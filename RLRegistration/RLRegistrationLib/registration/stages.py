"""What a session decides once the pre-alignment is known: keep it or the alignment it started from (do
no harm), the kind of the pair, whether its deformable refinement runs, and which of the plan's policies
runs it (``registration.harm_check``, ``registration.pair_kind``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import SimpleITK as sitk

from .harm_check import HarmCheck, Verdict
from .pair_kind import KINDS, PairKind, deformable_allowed, from_images, thick_slices


@dataclass
class StageDecisions:
    """The decisions of one session and the lines that explain them (``notes``)."""

    verdicts: list[Verdict] = field(default_factory=list)
    pair: PairKind | None = None
    deformable_blocked: str = ""  # why the deformable refinement does not run ("" when it does)

    @property
    def notes(self) -> list[str]:
        """One line per decision, for a user."""
        lines = [v.summary() for v in self.verdicts]
        if self.pair is not None:
            lines.append(f"pair: {self.pair.kind.replace('-', ' ')} ({self.pair.reason})")
        if self.deformable_blocked:
            lines.append(f"no deformable refinement: {self.deformable_blocked} (--steps N runs N steps)")
        return lines


def decide_linear(
    check: HarmCheck | None,
    initial: sitk.Transform | None,
    linear: sitk.Transform,
    initialization: str,
    decisions: StageDecisions,
) -> sitk.Transform | None:
    """The pre-alignment, or the initial alignment when the pre-alignment does not improve on it."""
    if check is None or initialization == "none":
        return linear
    before = "initial transform" if initial is not None else "images' own alignment"
    verdict = check.compare(initial, linear, f"{initialization} pre-alignment", before)
    decisions.verdicts.append(verdict)
    return linear if verdict.accepted else initial


def decide_pair(
    check: HarmCheck,
    affine: sitk.Transform,
    pair: str,
    reason: str,
    steps_asked: bool,
    images: tuple[sitk.Image, sitk.Image],
    decisions: StageDecisions,
) -> None:
    """The pair's kind (``pair``: one of ``pair_kind.KINDS`` with its ``reason``, or "auto": from the
    images) and whether the deformable refinement runs by default."""
    if pair in KINDS:
        decisions.pair = PairKind(pair, reason or "as asked")
    else:
        if decisions.verdicts:  # the score of the linear stage kept
            verdict = decisions.verdicts[-1]
            match = verdict.score if verdict.accepted else verdict.previous_score
        else:
            match = check.scores([affine])[0]
        decisions.pair = from_images(match, check.motion_mm(affine))
    allowed, why = deformable_allowed(decisions.pair, thick_slices(*images))
    decisions.deformable_blocked = "" if allowed or steps_asked else why
