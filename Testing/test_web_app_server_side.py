"""``rlreg view`` without a browser: the data folder's sandbox (paths outside ``--data-dir``, links pointing
out), the ``view`` command's refusals (the web extra missing, a port in use), and the browser app's panel
(``WebPanel``) in this process on Slicer's core scene: no server path reaches the page, the same file as
fixed and moving is refused, window presets from percentiles, options checked against the settings table,
and the CPU offered after the GPU ran out of memory.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from web_app_support import SAMPLE  # Testing/ is on sys.path, as for conftest


def test_data_folder_refuses_paths_outside(tmp_path):
    from RLRegistrationWeb.files import DataFolder, PathRefused

    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "secret.nii.gz").write_bytes(b"x")
    (root / "link.nii.gz").symlink_to(tmp_path / "secret.nii.gz")
    named = tmp_path / "named.nii.gz"
    named.write_bytes(b"x")
    folder = DataFolder(root, [named])
    assert folder.names() == ["named.nii.gz", "sub/a.nii.gz"]  # the link pointing out is not offered
    assert folder.resolve("sub/a.nii.gz") == (root / "sub" / "a.nii.gz").resolve()
    assert folder.resolve("named.nii.gz") == named.resolve()
    for bad in (
        "../secret.nii.gz",
        str(tmp_path / "secret.nii.gz"),
        "link.nii.gz",
        "/etc/passwd",
        "",
        "a\x00b",
    ):
        with pytest.raises(PathRefused, match="403"):
            folder.resolve(bad)
    with pytest.raises(PathRefused, match="no --data-dir"):
        DataFolder(None, [named]).resolve("sub/a.nii.gz")


def test_view_without_the_web_extra_says_how_to_install(monkeypatch, capsys):
    import RLRegistrationWeb
    from RLRegistrationLib.frontends import cli

    monkeypatch.setattr(RLRegistrationWeb, "missing_dependencies", lambda: ["trame_slicer"])
    assert cli.main(["view"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlreg: error:") and 'pip install -e ".[web]"' in err


def test_view_on_a_port_in_use_names_it(capsys):
    from RLRegistrationWeb import missing_dependencies

    if missing_dependencies():
        pytest.skip("the web extra is not installed")
    from RLRegistrationLib.frontends import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli.main(["view", "--port", str(port)]) == 2
    assert f"rlreg: error: port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- panel, no browser


@pytest.fixture
def web_panel(tmp_path):
    """The browser app's panel in this process on Slicer's core scene: a data folder with a file that is
    not an image, and a command-line file outside it (the sample pair)."""
    from RLRegistrationWeb import missing_dependencies

    if "slicer" in missing_dependencies():
        pytest.skip("slicer-core is not installed")
    from types import SimpleNamespace

    from RLRegistrationMRML.core_scene import create_core_scene
    from RLRegistrationWeb.controller import WebPanel
    from RLRegistrationWeb.files import DataFolder

    data = tmp_path / "server-data"
    data.mkdir()
    (data / "not_an_image.nii.gz").write_bytes(b"this is not an image\n" * 10)
    shutil.copy(SAMPLE / "fixed_labels.nii.gz", data / "labels.nii.gz")
    extra = [SAMPLE / name for name in ("fixed.nii.gz", "moving.nii.gz")]
    panel = WebPanel(SimpleNamespace(scene=create_core_scene().scene), DataFolder(data, extra))
    yield panel
    panel.close()


def _scene_nodes(panel) -> set:
    scene = panel.scene
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_no_server_path_reaches_the_page(web_panel, tmp_path):
    """Unreadable files, refused paths and failed downloads: the banner names what the page listed, never a
    folder of the server."""
    import json

    panel = web_panel
    texts = []
    assert not panel.select_input("fixed", "not_an_image.nii.gz")
    texts.append(panel.view()["error_text"])
    assert texts[-1].startswith("not_an_image.nii.gz") or "'not_an_image.nii.gz'" in texts[-1]
    for name in ("../../secret.nii.gz", "/etc/x.nii.gz", "missing.nii.gz"):  # as a browser may send them
        assert not panel.select_input("moving", name)
        texts.append(panel.view()["error_text"])
    assert "403" in texts[1] and "(--data-dir)" in texts[1]
    assert "'/etc/x.nii.gz'" in texts[2]  # the name the page sent, as it sent it
    assert texts[3] == "moving image 'missing.nii.gz': file not found"
    panel.show_error(f"Download failed: cannot write {panel.output_dir / 'transform.h5'}")
    texts.append(panel.view()["error_text"])
    assert texts[-1] == "Download failed: cannot write transform.h5"
    page = json.dumps(texts) + json.dumps(panel.view())
    for folder in (tmp_path, SAMPLE, panel.output_dir, Path.home()):
        assert str(folder) not in page, (folder, texts)


def test_fixed_equal_to_moving_is_refused_plainly_in_the_browser_panel(web_panel):
    """The same file picked twice (with label maps): one plain line, no node made, the status says why."""
    panel = web_panel
    assert panel.select_input("fixed", "fixed.nii.gz") and panel.select_input("moving", "fixed.nii.gz")
    assert panel.select_input("fixed_labels", "labels.nii.gz")
    assert panel.select_input("moving_labels", "labels.nii.gz")
    assert "same file" in panel.view()["status_text"]
    before = _scene_nodes(panel)
    assert not panel.register()
    assert panel.view()["error_text"] == (
        "Failed to start the registration: The fixed and the moving volume must be different volumes "
        "('fixed' is both)."
    )
    assert _scene_nodes(panel) == before and panel.state.state.value == "idle"


def test_the_browser_panel_sets_window_presets_from_percentiles(web_panel):
    """Window/level presets set the fixed volume's display node to its percentiles; an unknown one is
    refused in the banner."""
    import slicer.util

    from RLRegistrationMRML.slice_annotations import WINDOW_PRESETS

    panel = web_panel
    assert panel.select_input("fixed", "fixed.nii.gz") and panel.select_input("moving", "moving.nii.gz")
    fixed = panel.params.fixedVolume
    voxels = slicer.util.arrayFromVolume(fixed)
    for preset, (_label, percentiles) in WINDOW_PRESETS.items():
        assert panel.set_window_preset(preset) and panel.view()["window_preset"] == preset
        display = fixed.GetDisplayNode()
        low, high = np.percentile(voxels, percentiles)
        assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx(
            (low, high), abs=1e-3
        )
    assert not panel.set_window_preset("bright")
    assert panel.view()["error_text"].startswith("unknown window preset 'bright'")


def test_the_browser_panel_checks_options_against_the_settings_table(web_panel):
    panel = web_panel
    assert panel.update_settings(regularization=50, steps="7")
    assert (panel.params.regularization, panel.params.steps) == (50.0, 7)
    for values, message in (
        ({"steps": 0}, "steps must be between 1 and 500, got 0"),
        ({"regularization": 101}, "regularization must be between 0 and 100"),
        ({"quality": "ultra"}, "unknown quality 'ultra'"),
        ({"colour": "red"}, "unknown option 'colour'"),
    ):
        assert not panel.update_settings(**values)
        assert panel.view()["error_text"].startswith(message), panel.view()["error_text"]
    assert (panel.params.regularization, panel.params.steps) == (50.0, 7)


def test_the_browser_panel_offers_the_cpu_after_the_gpu_ran_out_of_memory(web_panel, monkeypatch):
    """As the Slicer panel does (the shared controller): the banner, a "Run on the CPU" button, a CPU run."""
    from RLRegistrationLib.registration.session import RegistrationSession

    panel = web_panel
    run = RegistrationSession.run

    def out_of_memory(self, steps):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield

    monkeypatch.setattr(RegistrationSession, "run", out_of_memory)
    assert panel.select_input("fixed", "fixed.nii.gz") and panel.select_input("moving", "moving.nii.gz")
    assert panel.update_settings(steps=1, iterations=1, device="auto")
    assert panel.register()
    deadline = time.monotonic() + 300
    while panel.state.busy and time.monotonic() < deadline:
        panel.poll()
        time.sleep(0.02)
    view = panel.view()
    assert view["cpu_retry_offered"] and view["panel_state"] == "failed"
    assert "out of memory" in view["error_text"] and not view["export_enabled"]
    monkeypatch.setattr(RegistrationSession, "run", run)
    assert panel.retry_on_cpu() and panel.params.device == "cpu"
    while panel.state.busy and time.monotonic() < deadline:
        panel.poll()
        time.sleep(0.02)
    assert panel.view()["panel_state"] == "done" and not panel.view()["cpu_retry_offered"]
