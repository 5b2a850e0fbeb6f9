"""What a registration panel says: its questions, progress texts, one-line errors and the status line of a
finished run (``PanelController`` shows them; the Slicer panel and the browser app show the same words)."""

from __future__ import annotations

CPU_RETRY_QUESTION = (
    "The GPU ran out of memory ({error}).\n\nRun the registration on the CPU instead? It is slower but not "
    "limited by GPU memory."
)
PREPARING = "Preparing (pre-alignment, working grid)..."
CONTINUING = "Continuing from step {step}..."
REPLACE_QUESTION = (
    "Register again? The current result ({steps} steps) will be replaced.\n\n"
    "Save or export it first to keep it."
)


def oneLine(error: BaseException | str) -> str:
    """The first line of an error's message (its class name when it has none)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    return text.splitlines()[0]


def finishedStatus(summary: str, blocked: str, verdict, stepsDone: int) -> str:
    """The status line of a run that ended with a result: ``summary`` (the logic's), what kept the
    deformable refinement from running (``blocked``, "" when nothing did), the do-no-harm ``verdict``
    (``harm_check.Verdict``, None when it could not be checked) and the number of steps run."""
    if blocked and stepsDone == 0:
        return (
            f"No deformable refinement: {blocked}. The result is the pre-alignment (step 0): Save, "
            "Apply and Harden export it; Continue runs deformable steps anyway."
        )
    if verdict is not None and not verdict.accepted:
        return (
            f"{summary}. Deformable refinement dropped: it did not improve the alignment (gradient "
            f"alignment {verdict.previous_score:.3f} -> {verdict.score:.3f}). The result is the "
            f"pre-alignment (step 0): shown, and what Save, Apply and Harden export; the slider shows "
            f"the {stepsDone} steps run."
        )
    if verdict is not None:
        return (
            f"{summary}; deformable refinement kept (gradient alignment {verdict.previous_score:.3f} "
            f"-> {verdict.score:.3f})"
        )
    return summary
