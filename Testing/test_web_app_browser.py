"""``rlreg view`` in a real browser (Debian's chromium driven by playwright): the tests start ``rlreg view`` on
the sample pair as a subprocess on a free port and click through the panel: Register, 3 steps (the step
text, the axial slice view's image changing between steps), the λ overlay, Step back, the ``.h5`` download
(checked with SimpleITK against the library's own result at 1000 points), the overlays, comparison modes
and read-out that judge the alignment, the slice views' labels, window/level presets and drag, the layout
at two screen sizes, a second run cancelled mid-way, bad inputs (a non-image file, a path outside
``--data-dir``), the quality choice, a second tab, and ``--autorun``. They skip, saying why, when chromium,
playwright or the web extra is missing locally; under CI (``CI`` set) a missing piece is a failure, since
``.ci/run`` installs them all.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from web_app_support import (  # Testing/ is on sys.path, as for conftest
    CHROMIUM,
    SAMPLE,
    SCREENSHOT_DIR,
    ViewServer,
    _axial_png,
    _changed_fraction,
    _colours,
    _download,
    _frame_delays,
    _readout_at,
    _require_browser,
    _screenshot,
    _wait_frame,
    _wait_idle,
    _wait_state,
    _wait_state_value,
    _wait_text,
)

STEPS = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    (folder / "not_an_image.nii.gz").write_bytes(b"this is not an image\n" * 10)
    return folder


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory):
    _require_browser()
    log_path = tmp_path_factory.mktemp("logs") / "view.log"
    view = ViewServer(
        [
            "--data-dir",
            str(data_dir),
            "--sample",
            "--quality",
            "standard",
            "--steps",
            str(STEPS),
            "--device",
            "cpu",
        ],
        log_path,
    )
    view.data_dir = data_dir.resolve()
    try:
        view.wait_ready()
        yield view
    finally:
        view.stop()


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(server, browser):
    page = browser.new_page(viewport={"width": 1500, "height": 1180}, accept_downloads=True)
    page.goto(server.url)
    page.wait_for_selector("#register-button", timeout=60_000)
    page.wait_for_function(
        "document.querySelector('#status-text').innerText.includes('Ready')", timeout=60_000
    )
    yield page
    page.close()


def _library_transform(steps: int, step_back: bool) -> tuple[sitk.Transform, sitk.Image]:
    """The library's own result on the sample pair with the panel's settings of the test (tto, standard
    quality, 5 iterations, the regularization the plan chooses, ``steps``), and the fixed image."""
    from RLRegistrationLib.io.imaging import read_image
    from RLRegistrationLib.registration.run_spec import RunSpec, build_session

    fixed = read_image(SAMPLE / "fixed.nii.gz", "fixed image")
    moving = read_image(SAMPLE / "moving.nii.gz", "moving image")
    spec = RunSpec(policy="tto", quality="standard", steps=steps, iterations=5, device="cpu")
    session, _ = build_session(spec, fixed, moving)
    for _ in session.run(steps):
        pass
    if step_back:
        session.step_back()
    return session.result().transform, fixed


def _points_inside(image: sitk.Image, n: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    size = np.array(image.GetSize(), dtype=np.float64)
    index = rng.uniform(0.1, 0.9, (n, 3)) * (size - 1)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index])


def test_register_watch_overlay_step_back_and_download(page, server, tmp_path):
    """Register on the sample pair: 3 steps appear one by one, the λ overlay shows, Step back undoes one, and
    the downloaded .h5 is the library's result."""
    page.evaluate(
        """() => { window.__events = []; const t = document.querySelector('#progress-text');
        new MutationObserver(() => window.__events.push(['text', performance.now(), t.innerText]))
          .observe(t, {childList: true, characterData: true, subtree: true});
        const img = document.querySelectorAll('#views img.image-display-area')[3];
        new MutationObserver(() => window.__events.push(['image', performance.now(), '']))
          .observe(img, {attributes: true, attributeFilter: ['src']}); }"""
    )
    started = time.monotonic()
    page.click("#register-button")
    _wait_state(page, "running", timeout=30_000)
    assert page.inner_text("#register-button").strip().lower() == "cancel"
    _wait_text(page, "#progress-text", f"Step 1/{STEPS}")
    first_step_s = time.monotonic() - started
    first = _axial_png(page)
    _wait_text(page, "#progress-text", f"Step 2/{STEPS}")
    time.sleep(1.0)  # the frame follows the text by one render
    second = _axial_png(page)
    _screenshot(page, "web-run-glyphs.png")
    assert _changed_fraction(first, second) > 0.001, "the axial view did not change between steps 1 and 2"
    _wait_text(page, "#progress-text", f"Step {STEPS}/{STEPS}")
    _wait_idle(page)
    assert page.inner_text("#step-label").strip() == f"{STEPS} / {STEPS}"
    assert f"{STEPS} steps" in page.inner_text("#status-text")
    print(f"\nfirst step shown {first_step_s:.2f} s after the click; frame delays: {_frame_delays(page)}")

    time.sleep(1.0)
    before = _axial_png(page)
    page.click("#overlay-weight_map")
    page.wait_for_selector("#colorbar", timeout=30_000)
    time.sleep(1.5)
    assert _changed_fraction(before, _axial_png(page)) > 0.01, "the λ overlay did not change the slice view"
    _screenshot(page, "web-weight-map.png")
    if SCREENSHOT_DIR:
        page.evaluate("() => window.trame.state.set('field_display', 'Grid')")
        _wait_state_value(page, "field_display", "Grid")
        page.click("#overlay-none")
        time.sleep(2.0)
        _screenshot(page, "web-grid.png")

    page.click("#step-back-button")
    _wait_text(page, "#step-label", f"{STEPS - 1} / {STEPS - 1}", timeout=60_000)

    with page.expect_download(timeout=120_000) as download_info:
        page.click("#download-h5")
    path = tmp_path / "downloaded.h5"
    download_info.value.save_as(path)
    downloaded = sitk.ReadTransform(str(path))
    expected, fixed = _library_transform(STEPS, step_back=True)
    points = _points_inside(fixed)
    got = np.array([downloaded.TransformPoint(tuple(p)) for p in points])
    want = np.array([expected.TransformPoint(tuple(p)) for p in points])
    error = np.linalg.norm(got - want, axis=1).max()
    assert error <= 1e-3, f"downloaded .h5 differs from the library's result by {error:.2e} mm"


def _displacement_field(transform: sitk.Transform) -> sitk.Image:
    """The displacement field u of a downloaded .h5 (a composite A o (id + u))."""
    composite = sitk.CompositeTransform(transform)
    for n in range(composite.GetNumberOfTransforms()):
        part = composite.GetNthTransform(n)
        if part.GetTransformEnum() == sitk.sitkDisplacementField:
            return sitk.DisplacementFieldTransform(part).GetDisplacementField()
    raise AssertionError("the .h5 holds no displacement field")


def test_judge_the_alignment_overlays_comparison_and_read_out(page, tmp_path):
    """After a run: the |u| overlay in colours with a bar up to its data's 99th percentile, det J ~1 where u
    does not vary, checkerboard / difference / flicker each change the axial view, and the read-out at a
    voxel gives that voxel's values (issue 21)."""
    from RLRegistrationLib.fields.metrics import jacobian_of_field

    _wait_idle(page)
    transform = sitk.ReadTransform(str(_download(page, "#download-h5", tmp_path / "t.h5")))
    warped = sitk.ReadImage(str(_download(page, "#download-warped", tmp_path / "w.nii.gz")))
    field = _displacement_field(transform)
    u = sitk.GetArrayFromImage(field)
    magnitude_p99 = float(np.percentile(np.linalg.norm(u, axis=-1), 99))

    page.evaluate("() => window.trame.state.set('overlay_opacity', 1.0)")
    page.click("#overlay-magnitude")
    page.wait_for_selector("#colorbar", timeout=30_000)
    _wait_state_value(page, "overlay", "magnitude")
    time.sleep(1.5)
    image = _axial_png(page)
    bar_max = float(page.inner_text("#colorbar-max").split()[0])
    window = page.evaluate("() => window.trame.state.get('overlay_range_ui')")
    print(
        f"\n|u| bar {page.inner_text('#colorbar-min')} .. {page.inner_text('#colorbar-max')}; data 99th "
        f"percentile {magnitude_p99:.3f} mm; {_colours(image)} colours in the axial view"
    )
    assert page.inner_text("#colorbar-max").endswith("mm")
    assert abs(bar_max - magnitude_p99) <= 0.1 * magnitude_p99
    assert abs(window[1] - magnitude_p99) <= 0.1 * magnitude_p99, window
    assert _colours(image) > 10, "the |u| overlay shows (nearly) one colour"
    _screenshot(page, "web-magnitude.png")

    # the read-out at a voxel of the fixed grid gives that voxel's values
    fixed = sitk.ReadImage(str(SAMPLE / "fixed.nii.gz"))
    index = (40, 50, 44)
    lps = fixed.TransformIndexToPhysicalPoint(index)
    values = _readout_at(page, (-lps[0], -lps[1], lps[2]))
    assert field.TransformPhysicalPointToIndex(lps) == index  # the field is on the fixed grid here
    assert values["fixed"] == pytest.approx(float(fixed[index]), abs=1e-3)
    assert values["warped"] == pytest.approx(float(warped[index]), abs=1.0)  # within one grey level
    assert values["magnitude"] == pytest.approx(float(np.linalg.norm(field[index])), abs=1e-3)
    det = jacobian_of_field(field)
    assert values["jacobian"] == pytest.approx(float(det[index[::-1]]), abs=1e-3)
    assert "fixed" in page.inner_text("#readout") and "det J" in page.inner_text("#readout")

    # det J: ~1 where u does not vary, diverging around 1
    page.click("#overlay-jacobian")
    _wait_state_value(page, "overlay", "jacobian")
    time.sleep(1.5)
    low, high = page.evaluate("() => window.trame.state.get('overlay_window')")
    assert abs((low + high) / 2 - 1.0) < 1e-3 and _colours(_axial_png(page)) > 10
    _screenshot(page, "web-jacobian.png")
    gradient = np.stack([np.abs(g).max(axis=-1) for g in np.gradient(u, axis=(0, 1, 2))]).max(axis=0)
    gradient[[0, -1]] = gradient[:, [0, -1]] = gradient[:, :, [0, -1]] = np.inf
    k, j, i = np.unravel_index(np.argmin(gradient), gradient.shape)
    lps = field.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
    flat = _readout_at(page, (-lps[0], -lps[1], lps[2]))
    print(
        f"det J window {low:.3f}..{high:.3f}; at the flattest voxel (max |grad u| {gradient.min():.1e} mm/voxel)"
        f" det J = {flat['jacobian']:.4f}"
    )
    # |det J - 1| <= |trace du/dx| + O(|du/dx|^2): within 3 max|du/dx| of 1 where u hardly varies
    bound = 3.0 * float(gradient.min()) / min(field.GetSpacing()) + 2e-3
    assert abs(flat["jacobian"] - 1.0) <= bound and bound < 0.05, (flat["jacobian"], bound)

    # compare fixed and result: each mode changes the axial view
    page.click("#overlay-none")
    page.evaluate("() => window.trame.state.set('overlay_opacity', 0.5)")
    _wait_state_value(page, "overlay", "none")
    time.sleep(1.5)
    fade = _axial_png(page)
    changes = {}
    for mode in ("checkerboard", "difference"):
        page.click(f"#compare-{mode}")
        _wait_state_value(page, "compare_mode", mode)
        time.sleep(1.5)
        changes[mode] = _changed_fraction(fade, _axial_png(page))
        _screenshot(page, f"web-{mode}.png")
    page.evaluate("() => window.trame.state.set('flicker_period', 0.5)")
    for mode in ("flicker", "beforeafter"):  # the view changes between frames 0.3 s apart
        page.click(f"#compare-{mode}")
        _wait_state_value(page, "compare_mode", mode)
        frames = []
        for _ in range(8):
            time.sleep(0.3)
            frames.append(_axial_png(page))
        changes[mode] = max(_changed_fraction(a, b) for a in frames for b in frames)
    print(f"changed fraction of the axial view against fade: {changes}")
    assert all(change > 0.01 for change in changes.values()), changes
    page.click("#compare-fade")
    _wait_state_value(page, "compare_mode", "fade")

    # hovering a slice view moves the read-out's point there (Slicer's crosshair)
    before = page.evaluate("() => window.trame.state.get('readout_values')")["ras"]
    box = page.locator("#views img.image-display-area").nth(3).bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5)
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.55)
    page.wait_for_function(
        "(b) => { const v = window.trame.state.get('readout_values');"
        " return v && v.ras.some((x, i) => Math.abs(x - b[i]) > 1e-3); }",
        arg=before,
        timeout=30_000,
    )
    assert "mm" in page.inner_text("#readout")


def test_view_labels_and_window_presets(page):
    """Each slice view is labelled with its name, the patient directions at its edges and the slice position
    in mm; a window/level preset of the fixed image changes the view image."""
    texts = {
        name: page.inner_text(f"#slice-annotation-{name}").strip() for name in ("Red", "Yellow", "Green")
    }
    assert re.fullmatch(r"Axial \(R ← → L\) · S -?\d+\.\d mm", texts["Red"]), texts
    assert texts["Yellow"].startswith("Sagittal (A ← → P) · R ") and texts["Green"].startswith(
        "Coronal (R ← → L) · A "
    )
    assert page.input_value("#window-preset") == "Auto (1–99 %)"
    page.evaluate(
        "() => { const s = window.trame.state; s.set('compare_mode', 'fade'); s.set('overlay', 'none');"
        " s.set('window_preset', 'full'); }"
    )
    _wait_state_value(page, "overlay", "none")
    full = _axial_png(page)
    for _ in range(20):  # the views settle (their size after the page opens, the frames of the changes)
        time.sleep(1.5)
        full, previous = _axial_png(page), full
        if _changed_fraction(full, previous) < 0.001:
            break
    page.evaluate("() => window.trame.state.set('window_preset', 'narrow')")
    page.wait_for_function("() => document.querySelector('#window-preset').value === 'Narrow (5–95 %)'")
    narrow = _wait_frame(page, lambda image: _changed_fraction(full, image) > 0.02)
    print(f"\nwindow presets: Full -> Narrow changed {_changed_fraction(full, narrow):.3f} of the axial view")
    assert _changed_fraction(full, narrow) > 0.02, "the window/level preset did not change the view"
    page.evaluate("() => window.trame.state.set('window_preset', 'full')")
    back = _wait_frame(page, lambda image: _changed_fraction(full, image) < 0.01)
    assert _changed_fraction(full, back) < 0.01, "back to Full range: the same image again"
    page.evaluate("() => window.trame.state.set('window_preset', 'auto')")
    _wait_state_value(page, "window_preset", "auto")


@pytest.mark.parametrize("width,height", [(1366, 768), (1920, 1080)])
def test_layout_shows_register_overlays_and_colour_bar_without_scrolling(page, width, height):
    """At 1366x768 and 1920x1080 (Options folded, as the page opens) Register, the overlay buttons and the
    colour bar lie inside the viewport with the panel column unscrolled; unfolding Options shows the policy,
    and every select and folded title carries its full text as a tooltip (a long choice is cut)."""
    if page.evaluate("() => window.trame.state.get('panel_state')") != "done":  # this test alone: a run first
        page.click("#register-button")
        _wait_state(page, "done", "failed")
    page.set_viewport_size({"width": width, "height": height})
    try:
        page.evaluate("() => window.trame.state.set('overlay', 'magnitude')")
        page.wait_for_selector("#colorbar", timeout=30_000)
        time.sleep(0.5)
        _screenshot(page, f"web-{width}x{height}.png")
        drawer = ".v-navigation-drawer__content"
        assert page.evaluate(f"() => document.querySelector('{drawer}').scrollTop") == 0
        boxes = {}
        for selector in ("#register-button", "#overlay-toggle", "#colorbar", "#colorbar-max"):
            box = page.locator(selector).bounding_box()
            boxes[selector] = box
            assert box is not None and box["width"] > 0 and box["height"] > 0, (selector, box)
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, (selector, box)
            assert box["y"] >= 0 and box["y"] + box["height"] <= height, (selector, box)
        panel = page.locator(".v-navigation-drawer").bounding_box()
        for button in page.locator("#compare-toggle button, #overlay-toggle button").all():
            box = button.bounding_box()  # every choice whole inside the panel (none cut at its edge)
            assert box["x"] + box["width"] <= panel["x"] + panel["width"] + 0.5, (button.inner_text(), box)
        print(
            f"\n{width}x{height}: "
            + ", ".join(f"{k} bottom {v['y'] + v['height']:.0f}px" for k, v in boxes.items())
        )
        assert not page.locator("#policy").is_visible()
        page.click("#section-options-title")
        page.wait_for_selector("#policy", state="visible", timeout=10_000)
        titles = page.evaluate("() => [...document.querySelectorAll('[title]')].map(e => e.title)")
        state = page.evaluate(
            "() => ({i: window.trame.state.get('initialization'), items: window.trame.state.get('initialization_items'),"
            " policy: window.trame.state.get('policy'), fixed: window.trame.state.get('fixed_name')})"
        )
        chosen = next(item["title"] for item in state["items"] if item["value"] == state["i"])
        assert chosen in titles, (chosen, titles)  # the initialization's full text, however narrow the field
        assert any(t.startswith("Options · ") and state["policy"] in t for t in titles), titles
        assert any(t.startswith("Inputs · ") and state["fixed"] in t for t in titles), titles
        page.click("#section-options-title")
        page.wait_for_selector("#policy", state="hidden", timeout=10_000)
    finally:
        page.evaluate("() => window.trame.state.set('overlay', 'none')")
        page.set_viewport_size({"width": 1500, "height": 1180})


def test_dragging_in_a_slice_view_adjusts_the_window_level(page):
    """Left-dragging in a slice view changes the background volume's window/level (Slicer's window/level
    mouse mode, on when the page opens): the same view, hovered at the same point (crosshair there) before
    and after the drag, shows other grey values; with the page's switch off the same drag changes nothing."""
    box = page.locator("#views img.image-display-area").nth(3).bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5

    def dragged() -> float:
        page.mouse.move(x0, y0)
        time.sleep(1.5)
        before = _axial_png(page)
        page.mouse.down()
        for n in range(1, 13):
            page.mouse.move(x0 + 10 * n, y0 + 6 * n)
            time.sleep(0.05)
        page.mouse.up()
        page.mouse.move(x0, y0)
        time.sleep(1.5)
        return _changed_fraction(before, _axial_png(page))

    assert page.evaluate("() => window.trame.state.get('drag_window_level')") is True
    on = dragged()
    page.click("#drag-window-level")
    _wait_state_value(page, "drag_window_level", False)
    off = dragged()
    page.click("#drag-window-level")
    _wait_state_value(page, "drag_window_level", True)
    print(f"\nwindow/level drag: changed fraction of the axial view {on:.3f} (switch off: {off:.3f})")
    assert on > 0.1 and off < 0.01


def test_cancel_a_second_run_mid_way(page):
    """Cancel stops within one step: the run ends before its last step and the panel is usable again."""
    steps = 12  # enough that the cancel lands mid-way on a loaded machine
    _wait_idle(page)
    page.click("#overlay-none")
    page.evaluate(f"() => window.trame.state.set('steps', {steps})")
    _wait_state_value(page, "steps", steps)
    page.click("#register-button")
    _wait_text(page, "#progress-text", f"Step 1/{steps}")
    time.sleep(1.1)  # past the double-click guard: a second click within 1 s of Register is not a Cancel
    page.click("#register-button")  # now "Cancel"
    _wait_idle(page)
    assert "Cancelled after" in page.inner_text("#status-text")
    done = int(page.inner_text("#step-label").split("/")[0])
    assert 1 <= done < steps, f"cancel did not stop the run mid-way ({done} of {steps} steps)"
    page.evaluate(f"() => window.trame.state.set('steps', {STEPS})")
    _wait_state_value(page, "steps", STEPS)


def test_bad_inputs_show_a_banner_and_change_nothing(page, server):
    """A file that is not an image, and a path outside --data-dir (403, logged): banner, nothing else."""
    _wait_idle(page)
    status = page.inner_text("#status-text")
    page.evaluate("() => window.trame.state.set('moving_name', 'not_an_image.nii.gz')")
    _wait_text(page, "#error-banner", "not_an_image.nii.gz", timeout=30_000)
    assert str(server.data_dir) not in page.inner_text("#error-banner")  # no server path on the page
    _wait_state_value(page, "moving_name", "moving.nii.gz")
    assert page.inner_text("#status-text") == status
    page.evaluate("() => window.trame.state.set('fixed_name', '../../../../etc/passwd')")
    _wait_text(page, "#error-banner", "403", timeout=30_000)
    assert str(server.data_dir) not in page.inner_text("#error-banner")
    _wait_state_value(page, "fixed_name", "fixed.nii.gz")
    assert re.search(r"refused fixed image '\.\./\.\./\.\./\.\./etc/passwd'", server.log())


def test_quality_choice_sets_the_presets_steps_and_refuses_unknown_ones(page):
    """Choosing "fine" in the page gives the preset's 4 steps, "followup" its regularization 6; back to
    "standard", the policy's measured steps and regularization; an unknown quality is refused with the
    banner and the choice stays."""
    from RLRegistrationLib.policies.registry import policy_default_steps

    _wait_idle(page)
    assert page.evaluate("() => window.trame.state.get('policy')") == "tto"
    page.evaluate("() => window.trame.state.set('quality', 'fine')")
    _wait_state_value(page, "steps", 4)
    page.evaluate("() => window.trame.state.set('quality', 'ultra')")
    _wait_text(page, "#error-banner", "unknown quality 'ultra'", timeout=30_000)
    _wait_state_value(page, "quality", "fine")
    page.evaluate("() => window.trame.state.set('quality', 'followup')")
    _wait_state_value(page, "regularization", 6)
    page.evaluate("() => window.trame.state.set('quality', 'standard')")
    _wait_state_value(page, "steps", policy_default_steps("tto"))
    _wait_state_value(page, "regularization", 2)


def test_second_tab_sees_the_same_panel(page, browser, server):
    """trame keeps one state for all clients: a second tab shows the same run and says it shares it."""
    other = browser.new_page(viewport={"width": 1200, "height": 800})
    try:
        other.goto(server.url)
        other.wait_for_selector("#register-button", timeout=60_000)
        _wait_text(other, "#step-label", page.inner_text("#step-label").strip(), timeout=30_000)
        _wait_text(page, "#clients-text", "2 browser tabs", timeout=30_000)
    finally:
        other.close()


def test_autorun_registers_as_soon_as_the_page_opens(browser, tmp_path):
    """--autorun N: the page opens on a running registration that ends at 'Step N/N'."""
    _require_browser()
    view = ViewServer(["--autorun", "2", "--iterations", "2", "--device", "cpu"], tmp_path / "autorun.log")
    try:
        view.wait_ready()
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        page.goto(view.url)
        _wait_text(page, "#progress-text", "Step 2/2")
        _wait_idle(page)
        page.close()
    finally:
        view.stop()
