"""The catalogue of issue 23: bad and borderline inputs to ``rlreg register``, ``evaluate`` and ``view``, as a
careful user tries them, each in its own folder, and signals at random moments of a run.

Every case runs the command as a real process and checks what the README promises: exit code 2 and exactly
one line ``rlreg: error: ...`` naming the file or option (or a legitimate success), no traceback, the sha256
of every file in the folder the same before and after, and no new file (no output, no temporary). The
classes: file formats, geometry, values and label maps, options, outputs and links, permissions (as an
unprivileged process), ``evaluate``, ``view`` (refused before it serves), and Ctrl-C / SIGTERM during the
imports, the run and the writes (all outputs or none, pre-existing files byte-identical). The images are
18x20x24 voxels, so a refusal costs about a second and the few runs that register a few seconds.

``Testing/test_bad_inputs_images.py`` and ``Testing/test_bad_inputs_outputs_and_options.py`` hold the exact
messages of the older catalogue (issue 12).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import catalogue_commands  # noqa: E402, F401 - registers its cases
import catalogue_inputs  # noqa: E402, F401 - registers its cases
import pytest
from catalogue_support import (  # Testing/ is on sys.path, as for conftest
    CASES,
    ENV,
    UNPRIVILEGED,
    Expect,
    Folder,
    _read_back,
    _run,
    _tree,
    _web_extra_missing,
)


@dataclass
class Outcome:
    """What one case did: its expectation, the process, and its folder's entries before and after."""

    expect: Expect
    folder: Path
    done: subprocess.CompletedProcess | None = None
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    skip: str | None = None


def _prepare(name: str, folder: Path) -> Outcome:
    folder.mkdir(parents=True)
    expect = CASES[name][1](Folder(folder))
    outcome = Outcome(expect, folder)
    if expect.needs_web and _web_extra_missing():
        outcome.skip = "the web extra is not installed (rlreg view refuses before it reads any file)"
    if expect.unprivileged and UNPRIVILEGED is None:
        outcome.skip = "no way to run a process without root's file permissions here (setpriv missing)"
    return outcome


def _execute(outcome: Outcome) -> Outcome:
    if outcome.skip:
        return outcome
    prefix = UNPRIVILEGED[0] if outcome.expect.unprivileged else []
    outcome.before = _tree(outcome.folder)
    try:
        outcome.done = _run(outcome.folder, outcome.expect.argv, prefix)
        outcome.after = _tree(outcome.folder)
    finally:
        for path in [outcome.folder, *outcome.folder.rglob("*")]:  # what a permission case locked
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
    return outcome


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    """The cases this session selected, each in a folder of its own, prepared one after the other and run
    a few at a time (each case is its own process; most of a refusal's second is its imports)."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.name.startswith("test_catalogue_case[")
    ]
    base = tmp_path_factory.mktemp("catalogue")
    prepared = {name: _prepare(name, base / name) for name in selected}
    pool = ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) + 1))
    futures = {name: pool.submit(_execute, outcome) for name, outcome in prepared.items()}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_catalogue_case(name, outcomes):
    outcome = outcomes[name].result(timeout=600)
    if outcome.skip:
        pytest.skip(outcome.skip)
    expect, done, before, after, folder = (
        outcome.expect,
        outcome.done,
        outcome.before,
        outcome.after,
        outcome.folder,
    )
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    if expect.success:
        assert done.returncode == 0, done.stderr
        assert not [line for line in lines if not line.startswith("rlreg: warning:")], done.stderr
        for output in expect.outputs:
            _read_back(folder / output)
        if expect.json_stdout:
            assert json.loads(done.stdout)["dice"] >= 0
        new = set(after) - set(before) - set(expect.outputs)
        assert not new, new  # no temporary left
        changed = {k for k in before if before[k] != after.get(k)} - set(expect.changed)
        assert not changed, changed
        return
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("rlreg: error: "), lines[0]
    for text in (*expect.names, expect.problem):
        assert text in lines[0], (text, lines[0])
    assert after == before  # no input changed, nothing written, no temporary left


def test_the_catalogue_covers_every_class_with_100_cases():
    kinds = [kind for kind, _ in CASES.values()]
    assert len(kinds) >= 100
    for kind in ("format", "geometry", "values", "options", "outputs", "permissions", "evaluate", "view"):
        assert kinds.count(kind) >= 5, kind


def test_refusing_an_option_reads_no_image_and_takes_under_3_s(tmp_path):
    """The images do not exist: a refusal of an option or an output comes before any file is read, and
    before torch is imported."""
    for extra in (["--steps", "100000"], ["--qc", tmp_path / "q.nii.gz"], ["-o", tmp_path / "t.xyz"]):
        argv = [
            "register",
            tmp_path / "fixed.nii.gz",
            tmp_path / "moving.nii.gz",
            "-o",
            tmp_path / "t.h5",
            *extra,
        ]
        start = time.perf_counter()
        done = _run(tmp_path, argv)
        seconds = time.perf_counter() - start
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert seconds < 3.0, seconds
    code = (
        "import sys; from RLRegistrationLib.frontends.cli import main; "
        "code = main(['register', 'f.nii.gz', 'm.nii.gz', '-o', 't.h5', '--steps', '100000']); "
        "print('torch' in sys.modules); sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout.split() == ["False"], (done.stdout, done.stderr)


def test_the_policy_is_checked_and_the_images_read_before_torch_is_imported(tmp_path):
    """Checking the policy by name (the models' cards) and reading the images import no torch, so that the
    command imports it while the pre-alignment's first copies are smoothed (``build_session``): an
    unknown policy, and an image that cannot be read, are refused with torch never imported."""
    from RLRegistrationLib.io.sample_pair import SAMPLE_DIR

    fixed, moving = SAMPLE_DIR / "fixed.nii.gz", SAMPLE_DIR / "moving.nii.gz"
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    for argv in (
        [str(fixed), str(moving), "--policy", "no-such-policy"],
        [str(fixed), str(tmp_path / "broken.nii.gz")],
    ):
        code = (
            "import sys; from RLRegistrationLib.frontends.cli import main; "
            f"code = main(['register', *{argv!r}, '-o', 't.h5']); "
            "print('torch' in sys.modules); sys.exit(code)"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, encoding="utf-8", env=ENV, cwd=tmp_path
        )
        assert done.returncode == 2 and done.stdout.split() == ["False"], (done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
