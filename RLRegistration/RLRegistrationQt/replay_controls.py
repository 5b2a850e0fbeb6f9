"""Replay and display controls of the panel (``ReplayControlsMixin``): step back, the step slider, Play, the
display options and overlays, the flicker timer and the read-out under the mouse."""

import qt

from RLRegistrationLib.frontends.panel_state import PanelState
from RLRegistrationMRML.parameters import FLICKER_MODES


class ReplayControlsMixin:
    """Slots of the replay and display controls for ``RLRegistrationWidget``, which provides ``ui``,
    ``controller``, ``logic``, ``_parameterNode``, the ``_playTimer`` / ``_flickerTimer`` and
    ``_showError`` / ``_showStatus`` / ``updateButtons``."""

    def onStepBackButton(self) -> None:
        self._playTimer.stop()
        if not self.controller.stepBack():
            self._showError()
        self._showStatus()

    def onStepSliderChanged(self, value) -> None:
        if self.controller.state.state != PanelState.DONE or value == self.controller.state.displayed_step:
            return
        if not self.controller.showStep(value):
            self._showError()
        self.updateButtons()

    def onPlayToggled(self, checked) -> None:
        if checked and self.controller.play():
            self._playTimer.start()
        else:
            if checked:
                self._showError()
            self.controller.pause()
            self._playTimer.stop()
        self.updateButtons()

    def onPlayTimer(self) -> None:
        self.controller.clearError()
        if not self.controller.tick() and self.controller.error:
            self._showError()
        if not self.controller.state.playing:
            self._playTimer.stop()
        self.updateButtons()

    def onDisplayOptionChanged(self, *args) -> None:
        # runs after the parameter node connectors have stored the new value
        qt.QTimer.singleShot(0, self._applyDisplayOptions)

    def _overlayCheckBoxes(self):
        ui = self.ui
        return [
            ui.showWeightMapCheckBox,
            ui.showUncertaintyCheckBox,
            ui.showMagnitudeCheckBox,
            ui.showJacobianCheckBox,
        ]

    def _onOverlayToggled(self, checkBox, checked) -> None:
        """One overlay at a time in the foreground: checking one unchecks the others."""
        if checked:
            for other in self._overlayCheckBoxes():
                if other is not checkBox and other.checked:
                    other.checked = False
        self.onDisplayOptionChanged()

    def _applyDisplayOptions(self) -> None:
        params = self._parameterNode
        if params and not self.controller.updateDisplay():
            self._showError()
        self._flickerTimer.stop()
        if params and params.compareMode in FLICKER_MODES:  # switched every period
            self._flickerTimer.start(int(1000 * params.flickerPeriod))
        self.updateButtons()

    def onFlickerTimer(self) -> None:
        """Flicker: the warped volume shown and hidden every period (the MRML layer sets the layers)."""
        if self._parameterNode and self._parameterNode.compareMode in FLICKER_MODES and self.logic.session:
            self.logic.setFlickerPhase(self._parameterNode, not self.logic.flickerShowsWarped)

    def onCursorMoved(self, crosshair, event) -> None:
        """The read-out line: the MRML layer's values at the mouse (position, intensities, |u|, λ, det J)."""
        params, ras = self._parameterNode, [0.0, 0.0, 0.0]
        if params and params.fixedVolume and crosshair.GetCursorPositionRAS(ras):
            self.ui.readoutLabel.text = self.logic.readout(params, ras).text()
