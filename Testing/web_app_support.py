"""What the ``rlreg view`` tests share: the sample pair's folder, ``rlreg view`` as a subprocess on a free port
(``ViewServer``), whether the browser tests can run (chromium, playwright and the web extra; under CI a
missing piece is a failure), and reading and awaiting the page in the browser (the axial slice view's
pixels, texts, trame state values, downloads, screenshots for the README)."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "RLRegistration" / "RLRegistrationLib" / "sample_data"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STARTUP_TIMEOUT_S = 180
# set to a folder (e.g. Resources/Screenshots) to save the page during a run, for the README
SCREENSHOT_DIR = os.environ.get("RLREG_SCREENSHOT_DIR")
STEP_TIMEOUT_MS = 120_000


def _browser_missing() -> str | None:
    from RLRegistrationWeb import INSTALL_COMMAND, missing_dependencies

    missing = missing_dependencies()
    if missing:
        return f"the web extra is not installed (missing {', '.join(missing)}): {INSTALL_COMMAND}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install playwright"
    if CHROMIUM is None:
        return "chromium is not installed: apt-get install -y chromium"
    return None


def _require_browser() -> None:
    reason = _browser_missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port of the loopback interface that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ViewServer:
    """``rlreg view`` as a subprocess; its stderr goes to a log file the tests read."""

    def __init__(self, args: list[str], log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the packages this test imports
        command = [sys.executable, "-m", "RLRegistrationLib", "view", "--port", str(self.port), *args]
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
        self.url = f"http://127.0.0.1:{self.port}/"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"rlreg view exited with {self.process.returncode}:\n{self.log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.5)
        raise AssertionError(f"rlreg view did not start within {STARTUP_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


def _axial_png(page) -> np.ndarray:
    """Pixels of the axial slice view (the 4th remote view of the Quad View layout: coronal, sagittal, 3D, axial)."""
    from PIL import Image

    image = page.locator("#views img.image-display-area").nth(3)
    return np.asarray(Image.open(io.BytesIO(image.screenshot())).convert("RGB"), dtype=np.int16)


def _wait_text(page, selector: str, text: str, timeout: int = STEP_TIMEOUT_MS) -> None:
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
        arg=[selector, text],
        timeout=timeout,
    )


def _wait_state(page, *states: str, timeout: int = STEP_TIMEOUT_MS) -> None:
    page.wait_for_function(
        "(states) => states.includes(window.trame.state.get('panel_state'))",
        arg=list(states),
        timeout=timeout,
    )


def _wait_state_value(page, key: str, value, timeout: int = 30_000) -> None:
    page.wait_for_function("([k, v]) => window.trame.state.get(k) === v", arg=[key, value], timeout=timeout)


def _wait_idle(page) -> None:
    _wait_state(page, "idle", "done", "failed")


def _screenshot(page, name: str) -> None:
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / name))


def _changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 1.0
    return float(np.mean(np.abs(a - b).max(axis=-1) > 8))


def _download(page, button: str, path: Path) -> Path:
    with page.expect_download(timeout=120_000) as download_info:
        page.click(button)
    download_info.value.save_as(path)
    return path


def _colours(image: np.ndarray) -> int:
    """Distinct colours (16 levels a channel) among the pixels whose channels differ (not grey)."""
    colourful = (image.max(axis=-1) - image.min(axis=-1)) > 12
    return len({tuple(c) for c in (image[colourful] // 16).tolist()})


def _readout_at(page, ras) -> dict:
    page.evaluate("(p) => window.trame.state.set('readout_ras', p)", [float(v) for v in ras])
    page.wait_for_function(
        "(p) => { const v = window.trame.state.get('readout_values');"
        " return v && v.ras.every((x, i) => Math.abs(x - p[i]) < 1e-6); }",
        arg=[float(v) for v in ras],
        timeout=30_000,
    )
    return page.evaluate("() => window.trame.state.get('readout_values')")


def _wait_frame(page, condition, timeout_s: float = 20.0) -> np.ndarray:
    """The axial view's image once ``condition(image)`` holds (frames follow the state by a render), or the
    last one after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    image = _axial_png(page)
    while not condition(image) and time.monotonic() < deadline:
        time.sleep(0.5)
        image = _axial_png(page)
    return image


def _frame_delays(page) -> list[int]:
    """ms from each progress-text change (a step drained and shown in MRML) to the next image update."""
    events = page.evaluate("() => window.__events || []")
    delays = []
    for i, (kind, t, text) in enumerate(events):
        if kind == "text" and re.search(r"Step \d+/", text):
            later = [e[1] for e in events[i + 1 :] if e[0] == "image"]
            if later:
                delays.append(round(later[0] - t))
    return delays
