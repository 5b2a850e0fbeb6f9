"""RLRegistration: step-wise deformable registration in 3D Slicer (thin glue around RLRegistrationLib).

All computation and all decisions that can be made without Slicer live in ``RLRegistrationLib``
(``session``, ``slicer_bridge``, ``panel_state``); this file moves arrays in and out of MRML nodes on the
main thread, drives the worker thread through a ``qt.QTimer`` and shows errors.

Conventions (DESIGN.md §3): the result maps a fixed point to the moving point (resampling direction) and is
put into a ``vtkMRMLGridTransformNode`` as *transform from parent* (RAS). The moving volume's existing linear
parent transform initializes the registration and is part of the result, never dropped.
"""

import importlib.util
import logging
import os
import time
from typing import Annotated, Union

import numpy as np
import qt
import slicer
import vtk
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTransformNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Qt-free and torch-free: safe to import before PyTorch is installed
from RLRegistrationLib.panel_state import PanelState, PanelStateMachine, foreground_layer, progress_text

FIELD_DISPLAY_MODES = ["Hidden", "Glyph", "Grid", "Contour"]
INITIALIZATIONS = [
    ("affine", "Affine pre-alignment (starts from the moving volume's parent transform)"),
    ("parent", "Moving volume's parent transform only (no affine)"),
    ("none", "None (images' own coordinates)"),
]
WEIGHT_MAP_COLORS = "vtkMRMLColorTableNodeFileViridis.txt"
UNCERTAINTY_COLORS = "vtkMRMLColorTableNodeFilePlasma.txt"
MAGNITUDE_COLORS = "vtkMRMLColorTableNodeFileInferno.txt"
# Overlay volumes of the result, shown one at a time in the slice views' foreground (panel_state.OVERLAYS).
# attribute: parameter-node field; name: suffix of a created node (None: never created, the user picks one);
# colors: colour node ID; window: fixed display range, "data" = [0, max of the data] at every update,
# None = Slicer's automatic window; rangeText: Logic attribute shown in the panel's range label; unit.
OVERLAY_VOLUMES = {
    "weight_map": {
        "attribute": "weightMapVolume",
        "name": " weight map",
        "colors": WEIGHT_MAP_COLORS,
        "window": (0.0, 1.0),
        "rangeText": "weightMapRangeText",
        "unit": "",
    },
    "uncertainty": {
        "attribute": "uncertaintyVolume",
        "name": " uncertainty (mm)",
        "colors": UNCERTAINTY_COLORS,
        "window": "data",
        "rangeText": "uncertaintyRangeText",
        "unit": " mm",
    },
    "magnitude": {
        "attribute": "magnitudeVolume",
        "name": None,
        "colors": MAGNITUDE_COLORS,
        "window": None,
        "rangeText": "magnitudeRangeText",
        "unit": " mm",
    },
}
PREVIOUS_PARENT_ATTRIBUTE = "RLRegistration.PreviousParentTransformID"
POLL_INTERVAL_MS = 100
PLAY_INTERVAL_MS = 400


#
# RLRegistration
#


class RLRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("RL Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []  # PyTorch comes from the PyTorch extension (EXTENSION_DEPENDS)
        self.parent.contributors = ["RLRegistration contributors"]
        self.parent.helpText = _("""
Step-wise deformable registration of a moving volume to a fixed volume. A policy proposes one small
displacement update per step; watch the alignment converge, cancel, continue, step back or replay any step.
The result is a grid transform (fixed point to moving point, 'transform from parent') that can be applied,
hardened or saved as an ITK .h5 file.
See the <a href="https://github.com/rlregistration/RLRegistration#readme">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Built on SimpleITK, PyTorch and 3D Slicer. Methods: SPAC (Luo et al., AAAI 2022), MorphSeek, test-time
optimized generalized registration, and spatially varying regularization (Chen et al., MedIA 2025).
""")


#
# RLRegistrationParameterNode
#


@parameterNodeWrapper
class RLRegistrationParameterNode:
    """Everything the panel shows; saved with the scene, so a reloaded scene restores the panel.

    fixedVolume, movingVolume - the images to register (moving is resampled onto fixed).
    fixedLabels, movingLabels - optional label maps or segmentations (Dice per step).
    policy, steps, iterations, regularization, device, initialization - how the registration runs.
    samples - trajectories sampled per step (policies that sample, e.g. MorphSeek; 1 = one trajectory).
    outputTransform - grid transform node receiving the result (created when empty).
    outputParentTransform - optional parent of the output transform (default: the fixed volume's parent).
    warpedVolume, weightMapVolume, uncertaintyVolume, magnitudeVolume - optional output volumes (weight map
    and uncertainty are created when empty and the policy provides them).
    fieldDisplay, showWeightMap, showUncertainty, showMagnitude, overlayOpacity - how results are shown in the
    slice views (one overlay at a time; the opacity applies to the one shown).
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedLabels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    movingLabels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]
    policy: str = "tto"
    steps: Annotated[int, WithinRange(1, 500)] = 6  # the tto defaults (the CLI's; measured)
    iterations: Annotated[int, WithinRange(1, 500)] = 5
    samples: Annotated[int, WithinRange(1, 16)] = 1
    regularization: Annotated[float, WithinRange(0.0, 20.0)] = 2.0
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    initialization: Annotated[str, Choice(["affine", "parent", "none"])] = "affine"
    outputTransform: vtkMRMLGridTransformNode
    outputParentTransform: vtkMRMLTransformNode
    warpedVolume: vtkMRMLScalarVolumeNode
    weightMapVolume: vtkMRMLScalarVolumeNode
    uncertaintyVolume: vtkMRMLScalarVolumeNode
    magnitudeVolume: vtkMRMLScalarVolumeNode
    fieldDisplay: Annotated[str, Choice(FIELD_DISPLAY_MODES)] = "Glyph"
    showWeightMap: bool = False
    showUncertainty: bool = False
    showMagnitude: bool = False
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# RLRegistrationWidget
#


class RLRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._state = PanelStateMachine()
        self._updatingGui = False
        self._lastReport = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RLRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = RLRegistrationLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.timeout.connect(self.onPollTimer)
        self._playTimer = qt.QTimer()
        self._playTimer.setInterval(PLAY_INTERVAL_MS)
        self._playTimer.timeout.connect(self.onPlayTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for value, label in INITIALIZATIONS:
            self.ui.initializationComboBox.addItem(label, value)
        self._populatePolicyAndDeviceChoices()

        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.continueButton.clicked.connect(self.onContinueButton)
        self.ui.stepBackButton.clicked.connect(self.onStepBackButton)
        self.ui.playButton.toggled.connect(self.onPlayToggled)
        self.ui.stepSlider.valueChanged.connect(self.onStepSliderChanged)
        self.ui.applyToMovingButton.clicked.connect(self.onApplyToMovingButton)
        self.ui.hardenButton.clicked.connect(self.onHardenButton)
        self.ui.saveButton.clicked.connect(self.onSaveButton)
        self.ui.policyComboBox.currentIndexChanged.connect(self.onPolicyChanged)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.onDeviceChanged)
        self.ui.initializationComboBox.currentIndexChanged.connect(self.onInitializationChanged)
        self.ui.fieldDisplayComboBox.currentIndexChanged.connect(self.onDisplayOptionChanged)
        self.ui.showWeightMapCheckBox.toggled.connect(self.onShowWeightMapToggled)
        self.ui.showUncertaintyCheckBox.toggled.connect(self.onShowUncertaintyToggled)
        self.ui.showMagnitudeCheckBox.toggled.connect(self.onShowMagnitudeToggled)
        self.ui.overlayOpacitySliderWidget.valueChanged.connect(self.onDisplayOptionChanged)

        self.ui.progressBar.visible = False
        self.initializeParameterNode()
        self.updateButtons()

    def cleanup(self) -> None:
        """Module closed or reloaded: stop the worker (it must never outlive the panel) and the timers."""
        self._pollTimer.stop()
        self._playTimer.stop()
        if self.logic:
            self.logic.cancel(wait=True, timeout=10.0)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._playTimer.stop()
        if self._state.playing:
            self._state.pause()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )

    def onSceneStartClose(self, caller, event) -> None:
        self._playTimer.stop()
        self._pollTimer.stop()
        if self.logic and self.logic.isRunning():
            self.logic.cancel(wait=False)
        if self._state.state == PanelState.RUNNING:
            self._state.cancel()
        if self._state.busy:
            self._state.finished(0)
        if self.logic:
            self.logic.forgetSession()
        self._state.reset()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.fixedVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # widgets with the "SlicerParameterName" dynamic property (see the .ui) are connected here
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    # ------------------------------------------------------------------ parameter node <-> manual widgets
    def _populatePolicyAndDeviceChoices(self) -> None:
        """Policies (model cards) and devices need torch; before it is installed only the defaults show."""
        self.ui.policyComboBox.clear()
        self.ui.deviceComboBox.clear()
        self._policyDescriptions = {}
        self._policySampling = {}  # policy name -> can sample several trajectories (Samples box enabled)
        self._policySteps = {}  # policy name -> its default number of steps (the Steps box follows it)
        self._policyOptions = {}  # policy name -> its iterations / regularization defaults (boxes follow)
        self._choicesNeedTorch = importlib.util.find_spec("torch") is None
        if self._choicesNeedTorch:
            self.ui.policyComboBox.addItem("tto — test-time optimization", "tto")
            self._policyDescriptions["tto"] = _(
                "PyTorch is not installed yet: it is installed on first Apply."
            )
            for value, label in (("auto", "Auto"), ("cuda", "GPU"), ("cpu", "CPU")):
                self.ui.deviceComboBox.addItem(label, value)
            return
        try:
            from RLRegistrationLib import slicer_bridge

            policyChoices = slicer_bridge.policy_choices()
            deviceChoices = slicer_bridge.device_choices()
        except Exception as error:  # broken torch install: the panel must still open and say why
            logging.error(f"RLRegistration: could not list policies and devices: {error}")
            self.ui.policyComboBox.addItem("tto", "tto")
            self._policyDescriptions["tto"] = _("PyTorch could not be imported: {error}").format(error=error)
            for value in ("auto", "cuda", "cpu"):
                self.ui.deviceComboBox.addItem(value, value)
            return
        for choice in policyChoices:
            self.ui.policyComboBox.addItem(choice.label, choice.name)
            self._policyDescriptions[choice.name] = f"{choice.description}\nTrained for: {choice.modality}"
            self._policySampling[choice.name] = choice.supports_sampling
            self._policySteps[choice.name] = choice.default_steps
            self._policyOptions[choice.name] = choice.option_defaults
        for value, label, _available in deviceChoices:
            self.ui.deviceComboBox.addItem(label, value)

    @staticmethod
    def _selectData(comboBox, value) -> None:
        index = comboBox.findData(value)
        if index >= 0 and comboBox.currentIndex != index:
            comboBox.currentIndex = index

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        params = self._parameterNode
        if not params:
            return
        self._updatingGui = True
        try:
            self._selectData(self.ui.policyComboBox, params.policy)
            self._selectData(self.ui.deviceComboBox, params.device)
            self._selectData(self.ui.initializationComboBox, params.initialization)
            self.ui.policyDescriptionLabel.text = self._policyDescriptions.get(params.policy, "")
            # only policies that sample trajectories (MorphSeek models) use more than one sample
            self.ui.samplesSpinBox.enabled = self._policySampling.get(params.policy, False)
        finally:
            self._updatingGui = False
        ready = bool(
            params.fixedVolume
            and params.movingVolume
            and params.fixedVolume.GetID() != params.movingVolume.GetID()
        )
        self._state.set_inputs_ready(ready)
        self.ui.initializationInfoLabel.text = self._initializationInfo(params)
        self.updateButtons()

    @staticmethod
    def _initializationInfo(params) -> str:
        if not params.movingVolume:
            return ""
        parent = params.movingVolume.GetParentTransformNode()
        if parent is None:
            return _("The moving volume has no parent transform.")
        if params.initialization == "none":
            return _(
                "The moving volume's parent transform '{name}' is NOT used (initialization: None)."
            ).format(name=parent.GetName())
        return _("Starts from the moving volume's parent transform '{name}' (kept in the result).").format(
            name=parent.GetName()
        )

    def onPolicyChanged(self, index) -> None:
        if not self._updatingGui and self._parameterNode and index >= 0:
            name = self.ui.policyComboBox.itemData(index)
            # the boxes take the settings the policy was measured with (e.g. learned + TTO steps of a chain
            # and the regularization weight its lambda map was trained for)
            params = self._parameterNode
            params.steps = self._policySteps.get(name, params.steps)
            defaults = self._policyOptions.get(name, {})
            if "iterations" in defaults:
                params.iterations = int(defaults["iterations"])
            if "regularization" in defaults:
                params.regularization = float(defaults["regularization"])
            params.policy = name

    def onDeviceChanged(self, index) -> None:
        if not self._updatingGui and self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onInitializationChanged(self, index) -> None:
        if not self._updatingGui and self._parameterNode and index >= 0:
            self._parameterNode.initialization = self.ui.initializationComboBox.itemData(index)

    # ------------------------------------------------------------------ buttons
    def updateButtons(self) -> None:
        flags = self._state.flags()
        hasSession = self.logic is not None and self.logic.session is not None
        self.ui.applyButton.text = flags.apply_text
        self.ui.applyButton.enabled = flags.apply_enabled
        self.ui.applyButton.toolTip = (
            _("Stop after the step in progress")
            if self._state.busy
            else _("Register the moving volume to the fixed volume")
        )
        for widget in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.enabled = flags.inputs_enabled
        self.ui.continueButton.enabled = flags.continue_enabled and hasSession
        self.ui.stepBackButton.enabled = flags.step_back_enabled and hasSession
        self.ui.stepSlider.blockSignals(True)
        self.ui.stepSlider.setRange(flags.slider_minimum, flags.slider_maximum)
        self.ui.stepSlider.value = flags.slider_value
        self.ui.stepSlider.blockSignals(False)
        self.ui.stepSlider.enabled = flags.slider_enabled and hasSession
        self.ui.stepLabel.text = f"{flags.slider_value} / {flags.slider_maximum}"
        self.ui.playButton.blockSignals(True)
        self.ui.playButton.checked = flags.playing
        self.ui.playButton.blockSignals(False)
        self.ui.playButton.text = _("Pause") if flags.playing else _("Play")
        self.ui.playButton.enabled = flags.play_enabled and hasSession
        for button in (self.ui.applyToMovingButton, self.ui.hardenButton, self.ui.saveButton):
            button.enabled = flags.export_enabled and hasSession
        self.ui.progressBar.visible = flags.progress_visible
        if self.logic is not None:
            self.ui.weightMapRangeLabel.text = self.logic.weightMapRangeText
            self.ui.uncertaintyRangeLabel.text = self.logic.uncertaintyRangeText
            self.ui.magnitudeRangeLabel.text = self.logic.magnitudeRangeText

    def onApplyButton(self) -> None:
        if self._state.state == PanelState.RUNNING:
            self._state.cancel()
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelling: stopping after the step in progress...")
            self.updateButtons()
            return
        self._startRun(continueRun=False)

    def onContinueButton(self) -> None:
        self._startRun(continueRun=True)

    def _startRun(self, continueRun: bool) -> None:
        params = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the registration."), waitCursor=True):
            if not self.logic.ensureDependencies():
                self.ui.statusLabel.text = _("PyTorch is needed to run a registration.")
                return
            if self._choicesNeedTorch:  # PyTorch was just installed: offer the real choices
                self._populatePolicyAndDeviceChoices()
                self.onParameterNodeModified()
            if continueRun:
                self.logic.continueRegistration(params, params.steps)
                self._state.continue_(params.steps)
            else:
                self.logic.startRegistration(params, params.steps)
                self._state.start(params.steps)
            self._lastReport = None
            value, maximum = self._state.progress()
            self.ui.progressBar.maximum = maximum
            self.ui.progressBar.value = value
            self.ui.progressBar.format = _("Preparing (pre-alignment, working grid)...")
            self.ui.statusLabel.text = _("Running on {device}").format(device=self.logic.deviceDescription)
            self._pollTimer.start()
        if self.logic.session is None and self._state.state in (PanelState.DONE, PanelState.FAILED):
            self._state.reset()  # a failed start discarded the previous session
        self.updateButtons()

    def onPollTimer(self) -> None:
        """Main thread: drain the worker's queue, update nodes and the panel."""
        params = self._parameterNode
        try:
            update = self.logic.processMessages(params)
        except Exception as error:  # display failed (e.g. a node was deleted): stop cleanly, tell the user
            self.logic.cancel(wait=False)
            self._pollTimer.stop()
            if self._state.busy or self._state.state == PanelState.DONE:
                self._state.error(str(error))
            self.logic.discardCreatedNodes(params)
            slicer.util.errorDisplay(_("Registration display failed: {error}").format(error=error))
            self.updateButtons()
            return
        for report in update.reports:
            self._state.step(report.index)
            self._lastReport = report
        if self._lastReport is not None and update.reports:
            value, maximum = self._state.progress()
            self.ui.progressBar.maximum = maximum
            self.ui.progressBar.value = value
            r = self._lastReport
            self.ui.progressBar.format = progress_text(
                r.index - self._state.run_first_step,
                maximum,
                r.step_seconds,
                r.similarity,
                r.dice,
                getattr(r, "uncertainty_mean_mm", None),
            )
        if update.error:
            self._pollTimer.stop()
            self._onRunError(update)
        elif update.finished:
            self._pollTimer.stop()
            self._state.finished(update.stepsDone)
            if self._state.state == PanelState.IDLE:
                self.logic.discardCreatedNodes(params)
                self.logic.forgetSession()
                self.ui.statusLabel.text = _("Cancelled before the first step: nothing was changed.")
            else:
                self.ui.statusLabel.text = self.logic.summary(cancelled=update.cancelled)
        self.updateButtons()

    def _onRunError(self, update) -> None:
        params = self._parameterNode
        self._state.error(update.error)
        self.logic.discardCreatedNodes(params)
        self.logic.forgetSession()
        self.updateButtons()
        if update.outOfMemory and params.device != "cpu":
            self.ui.statusLabel.text = _("The GPU ran out of memory.")
            if slicer.util.confirmYesNoDisplay(
                _(
                    "The GPU ran out of memory ({error}).\n\nRun the registration on the CPU instead? "
                    "It is slower but not limited by GPU memory."
                ).format(error=update.error)
            ):
                params.device = "cpu"
                self._startRun(continueRun=False)
            return
        self.ui.statusLabel.text = _("Registration failed: {error}").format(error=update.error)
        slicer.util.errorDisplay(
            _("Registration failed: {error}").format(error=update.error), detailedText=update.details
        )

    def onStepBackButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to step back."), waitCursor=True):
            self._playTimer.stop()
            self.logic.stepBack(self._parameterNode)
            self._state.step_back()
            self.ui.statusLabel.text = self.logic.summary()
        self.updateButtons()

    def onStepSliderChanged(self, value) -> None:
        if self._state.state != PanelState.DONE or value == self._state.displayed_step:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to show the step."), waitCursor=False):
            step = self._state.replay(value)
            self.logic.showStep(self._parameterNode, step)
        self.updateButtons()

    def onPlayToggled(self, checked) -> None:
        if checked and self._state.state == PanelState.DONE:
            self._state.play()
            with slicer.util.tryWithErrorDisplay(_("Failed to show the step.")):
                self.logic.showStep(self._parameterNode, self._state.displayed_step)
            self._playTimer.start()
        else:
            self._state.pause()
            self._playTimer.stop()
        self.updateButtons()

    def onPlayTimer(self) -> None:
        step = self._state.tick()
        if step is None:
            self._playTimer.stop()
        else:
            try:
                self.logic.showStep(self._parameterNode, step)
            except Exception as error:
                self._playTimer.stop()
                self._state.pause()
                slicer.util.errorDisplay(
                    _("Failed to show step {step}: {error}").format(step=step, error=error)
                )
        self.updateButtons()

    def onDisplayOptionChanged(self, *args) -> None:
        # runs after the parameter node connectors have stored the new value
        qt.QTimer.singleShot(0, self._applyDisplayOptions)

    def _overlayCheckBoxes(self):
        return [self.ui.showWeightMapCheckBox, self.ui.showUncertaintyCheckBox, self.ui.showMagnitudeCheckBox]

    def _onOverlayToggled(self, checkBox, checked) -> None:
        """One overlay at a time in the foreground: checking one unchecks the others."""
        if checked:
            for other in self._overlayCheckBoxes():
                if other is not checkBox and other.checked:
                    other.checked = False
        self.onDisplayOptionChanged()

    def onShowWeightMapToggled(self, checked) -> None:
        self._onOverlayToggled(self.ui.showWeightMapCheckBox, checked)

    def onShowUncertaintyToggled(self, checked) -> None:
        self._onOverlayToggled(self.ui.showUncertaintyCheckBox, checked)

    def onShowMagnitudeToggled(self, checked) -> None:
        self._onOverlayToggled(self.ui.showMagnitudeCheckBox, checked)

    def _applyDisplayOptions(self) -> None:
        if self._parameterNode:
            with slicer.util.tryWithErrorDisplay(_("Failed to update the display.")):
                self.logic.updateDisplay(self._parameterNode)

    def onApplyToMovingButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to apply the transform."), waitCursor=True):
            self.logic.applyToMoving(self._parameterNode)
            self.ui.statusLabel.text = _("The moving volume is now under the result transform.")

    def onHardenButton(self) -> None:
        params = self._parameterNode
        if not slicer.util.confirmOkCancelDisplay(
            _(
                "Harden the result into the moving volume '{name}'? Its voxels are resampled onto the fixed "
                "geometry; this cannot be undone."
            ).format(name=params.movingVolume.GetName())
        ):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to harden the transform."), waitCursor=True):
            self.logic.harden(params)
            self.ui.statusLabel.text = _("The transform was hardened into the moving volume.")

    def onSaveButton(self) -> None:
        params = self._parameterNode
        default = os.path.join(
            qt.QDir.homePath(), f"{params.movingVolume.GetName()}-to-{params.fixedVolume.GetName()}.h5"
        )
        path = qt.QFileDialog.getSaveFileName(None, _("Save transform"), default, _("ITK transform (*.h5)"))
        if not path:
            return
        if not path.lower().endswith((".h5", ".hdf5")):
            path += ".h5"
        with slicer.util.tryWithErrorDisplay(_("Failed to save the transform."), waitCursor=True):
            self.logic.saveTransform(params, path)
            self.ui.statusLabel.text = _("Saved {path}").format(path=path)


#
# RLRegistrationLogic
#


class RunUpdate:
    """What one poll of the worker brought (see RLRegistrationLogic.processMessages)."""

    def __init__(self):
        self.reports = []
        self.finished = False
        self.cancelled = False
        self.stepsDone = 0
        self.error = ""
        self.outOfMemory = False
        self.details = ""


class RLRegistrationLogic(ScriptedLoadableModuleLogic):
    """Runs registrations on a worker thread and keeps the output nodes up to date (main thread only).

    Usable without the widget: ``runBlocking(parameterNode, steps)`` registers and returns the step reports.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.session = None
        self.worker = None
        self.movingImage = None
        self.createdNodeIDs = []
        self.fullResolutionStep = None
        self.displayedStep = None
        self.deviceDescription = ""
        self._fixedImage = None
        self._pendingFinal = None
        self._layersPending = False
        self.weightMapRangeText = "—"
        self.uncertaintyRangeText = "—"
        self.magnitudeRangeText = "—"

    def getParameterNode(self):
        return RLRegistrationParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ dependencies
    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """PyTorch through the PyTorch extension (never a bare pip install of torch); other packages by pip.

        Returns False when the user declined the installation.
        """
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError(
                    _(
                        "This module needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, "
                        "restart Slicer and try again."
                    )
                ) from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torch = torchLogic.installTorch(askConfirmation=askConfirmation)
                if torch is None:
                    return False
        for module, requirement in (("SimpleITK", "SimpleITK"),):
            if importlib.util.find_spec(module) is None:
                slicer.util.pip_install(requirement)
        return True

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def volumeToImage(volumeNode: "vtkMRMLScalarVolumeNode"):
        """The node's voxels and geometry (its own coordinates, parent transforms not applied) as SimpleITK."""
        from RLRegistrationLib import slicer_bridge

        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        return slicer_bridge.image_from_slicer_arrays(
            slicer.util.arrayFromVolume(volumeNode), slicer.util.arrayFromVTKMatrix(ijkToRas)
        )

    def labelImages(self, params):
        """(fixed labels, moving labels) as SimpleITK images on their volumes' grids, or (None, None)."""
        from RLRegistrationLib import slicer_bridge

        fixedLabels = params.fixedLabels
        movingLabels = params.movingLabels
        if not fixedLabels or not movingLabels:
            return None, None
        fixedIsSegmentation = fixedLabels.IsA("vtkMRMLSegmentationNode")
        if fixedIsSegmentation != movingLabels.IsA("vtkMRMLSegmentationNode"):
            raise ValueError(_("Select two label maps or two segmentations for Dice, not one of each."))
        names = None
        if fixedIsSegmentation:
            names = slicer_bridge.match_segment_names(
                self._segmentNames(fixedLabels), self._segmentNames(movingLabels)
            )
            if not names:
                raise ValueError(
                    _("The two segmentations have no segment name in common: Dice cannot be computed.")
                )
        fixed = self._labelsToImage(fixedLabels, params.fixedVolume, names)
        moving = self._labelsToImage(movingLabels, params.movingVolume, names)
        return (
            slicer_bridge.labels_on_image_grid(fixed, self._fixedImage),
            slicer_bridge.labels_on_image_grid(moving, self.movingImage),
        )

    @staticmethod
    def _segmentNames(segmentationNode: "vtkMRMLSegmentationNode"):
        segmentation = segmentationNode.GetSegmentation()
        return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]

    def _labelsToImage(self, labelsNode, referenceVolume, segmentNames):
        """A label map volume as is; a segmentation exported (common segment names) on the reference grid."""
        if labelsNode.IsA("vtkMRMLSegmentationNode"):
            return self._segmentationToImage(labelsNode, referenceVolume, segmentNames)
        return self.volumeToImage(labelsNode)

    def _segmentationToImage(self, labelsNode: "vtkMRMLSegmentationNode", referenceVolume, segmentNames):
        segmentation = labelsNode.GetSegmentation()
        segmentIds = vtk.vtkStringArray()
        for name in segmentNames:  # label value i + 1 for the i-th common name, in both segmentations
            segmentIds.InsertNextValue(segmentation.GetSegmentIdBySegmentName(name))
        labelmap = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLLabelMapVolumeNode", "RLRegistration temporary labels"
        )
        try:
            if not slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
                labelsNode, segmentIds, labelmap, referenceVolume
            ):
                raise RuntimeError(
                    _("Could not export segmentation '{name}' to a label map.").format(
                        name=labelsNode.GetName()
                    )
                )
            return self.volumeToImage(labelmap)
        finally:
            slicer.mrmlScene.RemoveNode(labelmap)

    @staticmethod
    def parentToWorld(node: "vtkMRMLScalarVolumeNode", outputTransform: "vtkMRMLGridTransformNode" = None):
        """4x4 RAS "to world" matrix of ``node``'s parent transforms, or None when it has none.

        When the node sits under our own output transform (applied earlier), the parent it had before is
        used: the previous result is being replaced, not composed with itself.
        """
        parent = node.GetParentTransformNode()
        if parent is not None and outputTransform is not None and parent.GetID() == outputTransform.GetID():
            previousID = node.GetAttribute(PREVIOUS_PARENT_ATTRIBUTE)
            if previousID is None:  # not applied by this module: assume the output transform's own parent
                parent = outputTransform.GetParentTransformNode()
            else:  # "" = it had no parent
                parent = slicer.mrmlScene.GetNodeByID(previousID) if previousID else None
        if parent is None:
            return None
        if not parent.IsTransformToWorldLinear():
            raise ValueError(
                _(
                    "'{name}' is under a non-linear transform ('{parent}'). Harden it or choose initialization "
                    "'None'."
                ).format(name=node.GetName(), parent=parent.GetName())
            )
        matrix = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def initialTransform(self, params):
        """(initial fixed -> moving transform in LPS or None, run the affine stage?) for the chosen mode."""
        from RLRegistrationLib import slicer_bridge

        if params.initialization == "none":
            return None, False
        movingToWorld = self.parentToWorld(params.movingVolume, params.outputTransform)
        fixedToWorld = self.parentToWorld(params.fixedVolume, params.outputTransform)
        initial = slicer_bridge.initial_transform_from_parents(movingToWorld, fixedToWorld)
        return initial, params.initialization == "affine"

    def resultParentTransform(self, params):
        """Where the output nodes go: the chosen parent, else the fixed volume's parent (same world)."""
        parent = params.outputParentTransform or params.fixedVolume.GetParentTransformNode()
        if (
            parent is not None
            and params.outputTransform is not None
            and parent.GetID() == params.outputTransform.GetID()
        ):
            raise ValueError(_("The output transform cannot be its own parent."))
        return parent

    # ------------------------------------------------------------------ running
    def isRunning(self) -> bool:
        return self.worker is not None and self.worker.is_alive()

    def startRegistration(self, params, steps: int) -> None:
        """Build a new session from the parameter node (main thread) and start the worker."""
        from RLRegistrationLib import imaging, policies, session, slicer_bridge
        from RLRegistrationLib.devices import describe_device, resolve_device

        if self.isRunning():
            raise RuntimeError(_("A registration is already running."))
        if not params.fixedVolume or not params.movingVolume:
            raise ValueError(_("Select the fixed and the moving volume."))
        if params.fixedVolume.GetID() == params.movingVolume.GetID():
            raise ValueError(_("The fixed and the moving volume must be different volumes."))
        inputIDs = {
            node.GetID()
            for node in (params.fixedVolume, params.movingVolume, params.fixedLabels, params.movingLabels)
            if node is not None
        }
        for label, node in (
            (_("warped volume"), params.warpedVolume),
            (_("weight map"), params.weightMapVolume),
            (_("uncertainty"), params.uncertaintyVolume),
            (_("displacement magnitude volume"), params.magnitudeVolume),
        ):
            if node is not None and node.GetID() in inputIDs:
                raise ValueError(_("The {output} output must not be one of the inputs.").format(output=label))
        self.forgetSession()
        self.resultParentTransform(params)  # validate before any work
        self._fixedImage = self.volumeToImage(params.fixedVolume)
        self.movingImage = self.volumeToImage(params.movingVolume)
        imaging.validate_image(self._fixedImage, f"fixed volume '{params.fixedVolume.GetName()}'")
        imaging.validate_image(self.movingImage, f"moving volume '{params.movingVolume.GetName()}'")
        fixedLabels, movingLabels = self.labelImages(params)
        initial, affine = self.initialTransform(params)
        device = resolve_device(params.device)
        self.deviceDescription = describe_device(device)
        options = session.SessionOptions(affine=affine, device=str(device))
        if device.type == "cuda":
            options.max_working_voxels = 160 * 192 * 224
        sampling = {}
        if params.samples > 1 and policies.policy_supports_sampling(params.policy):
            sampling = {"samples": params.samples}  # temperature 1: the policy's default with samples > 1
        try:
            policy = policies.make_policy(
                params.policy, iterations=params.iterations, regularization=params.regularization, **sampling
            )
        except policies.PolicyError as error:
            logging.info(f"Policy '{params.policy}' used with its own settings ({error})")
            policy = policies.make_policy(params.policy, **sampling)  # a policy without these options
        self.session = session.RegistrationSession(
            self._fixedImage, self.movingImage, policy, options, fixedLabels, movingLabels, initial
        )
        self.createdNodeIDs = []
        self._startWorker(steps, slicer_bridge)

    def continueRegistration(self, params, steps: int) -> None:
        from RLRegistrationLib import slicer_bridge

        if self.session is None:
            raise RuntimeError(_("There is no registration to continue: click Apply first."))
        if self.isRunning():
            raise RuntimeError(_("A registration is already running."))
        self.createdNodeIDs = []
        self._startWorker(steps, slicer_bridge)

    def _startWorker(self, steps, slicer_bridge) -> None:
        self.fullResolutionStep = None
        self._pendingFinal = None
        self._layersPending = True
        self.worker = slicer_bridge.RegistrationWorker(self.session, steps, moving=self.movingImage)
        self.worker.start()

    def cancel(self, wait: bool = False, timeout: float = 120.0) -> None:
        """Ask the worker to stop after the step in progress (optionally wait for it)."""
        if self.worker is not None:
            self.worker.cancel()
            if wait:
                self.worker.join(timeout=timeout)

    def forgetSession(self) -> None:
        if self.worker is not None and self.worker.is_alive():
            self.worker.cancel()
        self.worker = None
        self.session = None
        self.fullResolutionStep = None
        self.displayedStep = None
        self.weightMapRangeText = "—"
        self.uncertaintyRangeText = "—"
        self.magnitudeRangeText = "—"

    def processMessages(self, params) -> RunUpdate:
        """Drain the worker's queue; show the newest step (only the newest: the views need no backlog)."""
        update = RunUpdate()
        if self.worker is None:
            return update
        latestFrame = None
        for message in self.worker.poll():
            if message.kind in ("prepared", "step"):
                update.reports.append(message.report)
                latestFrame = message.frame
            elif message.kind == "final":
                self._pendingFinal = message.final
            elif message.kind == "finished":
                update.finished = True
                update.cancelled = message.cancelled
                update.stepsDone = message.steps_done
            elif message.kind == "error":
                update.error = message.error
                update.outOfMemory = message.out_of_memory
                update.details = message.details
                update.stepsDone = message.steps_done
        if latestFrame is not None and not update.error:
            self.showFrame(params, latestFrame)
        if update.finished and self._pendingFinal is not None:
            self.showFinal(params, self._pendingFinal)
            self._pendingFinal = None
        if update.finished and update.stepsDone > 0:
            self.createdNodeIDs = []  # complete results now, even after a cancel
        return update

    def runBlocking(self, params, steps: int, continueRun: bool = False, timeoutSeconds: float = 1800):
        """Register (or continue) and wait, keeping the application responsive; returns the step reports."""
        if continueRun:
            self.continueRegistration(params, steps)
        else:
            self.startRegistration(params, steps)
        reports = []
        start = time.time()
        while True:
            update = self.processMessages(params)
            reports.extend(update.reports)
            if update.error:
                self.discardCreatedNodes(params)
                raise RuntimeError(update.error + "\n" + update.details)
            if update.finished:
                return reports
            if time.time() - start > timeoutSeconds:
                self.cancel(wait=True)
                raise RuntimeError(_("Registration timed out."))
            slicer.app.processEvents()
            time.sleep(0.05)

    def summary(self, cancelled: bool = False) -> str:
        if self.session is None or not self.session.reports:
            return ""
        report = self.session.reports[-1]
        text = _("{n} steps, NCC {ncc:.3f}").format(n=self.session.step_count, ncc=report.similarity)
        if report.dice is not None:
            text += _(", Dice {dice:.3f} (after pre-alignment {dice0:.3f})").format(
                dice=report.dice, dice0=self.session.reports[0].dice
            )
        if getattr(report, "uncertainty_mean_mm", None) is not None:
            text += _(", uncertainty {mean:.2f} mm (mean), {max:.2f} mm (max)").format(
                mean=report.uncertainty_mean_mm, max=report.uncertainty_max_mm
            )
        if cancelled:
            text = (
                _("Cancelled after ")
                + text
                + _(". Outputs show the working-resolution preview; full resolution is computed on export.")
            )
        return text

    # ------------------------------------------------------------------ output nodes
    def _newNode(self, params, className, name, attribute):
        node = slicer.mrmlScene.AddNewNodeByClass(className, slicer.mrmlScene.GetUniqueNameByString(name))
        node.CreateDefaultDisplayNodes()
        self.createdNodeIDs.append(node.GetID())
        setattr(params, attribute, node)
        return node

    def _baseName(self, params) -> str:
        return f"{params.movingVolume.GetName()} to {params.fixedVolume.GetName()}"

    def outputTransformNode(self, params):
        transformNode = params.outputTransform
        if transformNode is None:
            transformNode = self._newNode(
                params, "vtkMRMLGridTransformNode", self._baseName(params) + " (RL)", "outputTransform"
            )
        transformNode.SetNodeReferenceID(
            transformNode.GetMovingNodeReferenceRole(), params.movingVolume.GetID()
        )
        transformNode.SetNodeReferenceID(
            transformNode.GetFixedNodeReferenceRole(), params.fixedVolume.GetID()
        )
        parent = self.resultParentTransform(params)
        transformNode.SetAndObserveTransformNodeID(parent.GetID() if parent else None)
        return transformNode

    def overlayNode(self, params, overlay: str, create: bool = True):
        """The output volume of an overlay (``OVERLAY_VOLUMES``), created when empty if the overlay creates
        its node and ``create``; None otherwise."""
        spec = OVERLAY_VOLUMES[overlay]
        volumeNode = getattr(params, spec["attribute"])
        if volumeNode is None and create and spec["name"] is not None:
            volumeNode = self._newNode(
                params, "vtkMRMLScalarVolumeNode", self._baseName(params) + spec["name"], spec["attribute"]
            )
        return volumeNode

    def weightMapNode(self, params):
        return self.overlayNode(params, "weight_map")

    def updateOverlay(self, params, overlay: str, array, ijkToRas, parent=None) -> None:
        """Voxels, geometry and colours of an overlay volume, and the text of its range label."""
        from RLRegistrationLib import slicer_bridge

        spec = OVERLAY_VOLUMES[overlay]
        text = slicer_bridge.format_range(array)
        setattr(self, spec["rangeText"], text + spec["unit"] if text != "—" else text)
        volumeNode = self.overlayNode(params, overlay, create=array is not None)
        if volumeNode is None or array is None:
            return
        firstTime = volumeNode.GetImageData() is None
        self.updateVolume(volumeNode, array, ijkToRas, parent)
        window = spec["window"]
        if window == "data":  # [0, max] of this step: the colours follow the growing spread
            valueRange = slicer_bridge.value_range(array)
            window = (0.0, max(valueRange[1] if valueRange else 0.0, 1e-3))
        if firstTime or spec["window"] == "data":
            self.setColors(volumeNode, spec["colors"], window)

    @staticmethod
    def setColors(volumeNode: "vtkMRMLScalarVolumeNode", colorNodeID: str, valueRange=None) -> None:
        """Colour table (and a fixed window, e.g. [0, 1] for the weight map) of an overlay volume."""
        volumeNode.CreateDefaultDisplayNodes()
        displayNode = volumeNode.GetDisplayNode()
        displayNode.SetAndObserveColorNodeID(colorNodeID)
        if valueRange is not None:
            displayNode.SetAutoWindowLevel(False)
            displayNode.SetWindowLevelMinMax(valueRange[0], valueRange[1])

    def updateGridTransform(self, transformNode: "vtkMRMLGridTransformNode", arrays) -> None:
        """Put RAS arrays into the node: in place when the grid geometry is unchanged (no node churn)."""
        from RLRegistrationLib import slicer_bridge

        transform = transformNode.GetTransformFromParent()
        if transform is not None and transform.IsA("vtkOrientedGridTransform"):
            grid = transform.GetDisplacementGrid()
            directionMatrix = transform.GetGridDirectionMatrix()
            direction = (
                slicer.util.arrayFromVTKMatrix(directionMatrix) if directionMatrix is not None else None
            )
            if grid is not None and slicer_bridge.grid_geometry_matches(
                grid.GetDimensions(), grid.GetOrigin(), grid.GetSpacing(), direction, arrays
            ):
                slicer.util.arrayFromGridTransform(transformNode)[:] = arrays.vectors
                slicer.util.arrayFromGridTransformModified(transformNode)
                transform.Modified()
                return
        gridTransform = slicer.vtkOrientedGridTransform()
        gridTransform.SetDisplacementGridData(slicer_bridge.vtk_displacement_grid(arrays))
        gridTransform.SetGridDirectionMatrix(
            slicer.util.vtkMatrixFromArray(slicer_bridge.homogeneous(arrays.direction))
        )
        gridTransform.SetInterpolationModeToLinear()
        transformNode.SetAndObserveTransformFromParent(gridTransform)

    @staticmethod
    def updateVolume(volumeNode: "vtkMRMLScalarVolumeNode", array, ijkToRas, parent=None) -> None:
        """Voxels and geometry of a volume node, reusing its image data when the shape is unchanged."""
        imageData = volumeNode.GetImageData()
        if (
            imageData is not None
            and tuple(reversed(imageData.GetDimensions())) == array.shape
            and imageData.GetNumberOfScalarComponents() == 1
            and slicer.util.arrayFromVolume(volumeNode).dtype == array.dtype
        ):
            slicer.util.arrayFromVolume(volumeNode)[:] = array
            slicer.util.arrayFromVolumeModified(volumeNode)
        else:
            slicer.util.updateVolumeFromArray(volumeNode, array)
        if volumeNode.GetDisplayNode() is None:
            volumeNode.CreateDefaultDisplayNodes()
        volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
        volumeNode.SetAndObserveTransformNodeID(parent.GetID() if parent else None)

    def _showOutputs(
        self,
        params,
        field,
        ijkToRas,
        warped,
        magnitude,
        weightMap,
        weightMapIjkToRas,
        uncertainty=None,
        uncertaintyIjkToRas=None,
    ) -> None:
        parent = self.resultParentTransform(params)
        transformNode = self.outputTransformNode(params)
        self.updateGridTransform(transformNode, field)
        if params.warpedVolume is not None and warped is not None:
            self.updateVolume(params.warpedVolume, warped, ijkToRas, parent)
        self.updateOverlay(params, "magnitude", magnitude, ijkToRas, parent)
        self.updateOverlay(params, "weight_map", weightMap, weightMapIjkToRas, parent)
        self.updateOverlay(params, "uncertainty", uncertainty, uncertaintyIjkToRas, parent)
        if self._layersPending:  # once per run: the user may change the layers while it runs
            self._layersPending = False
            self.updateDisplay(params)

    def showFrame(self, params, frame) -> None:
        """Show a working-grid step (live during the run, and for replay)."""
        self._showOutputs(
            params,
            frame.field,
            frame.ijk_to_ras,
            frame.warped,
            frame.magnitude,
            frame.weight_map,
            frame.ijk_to_ras,
            frame.uncertainty,
            frame.ijk_to_ras,
        )
        self.displayedStep = frame.index
        self.fullResolutionStep = None

    def showFinal(self, params, final) -> None:
        """Show the full-resolution result of a step (end of run, or before export)."""
        self._showOutputs(
            params,
            final.field,
            final.ijk_to_ras,
            final.warped,
            final.magnitude,
            final.weight_map,
            final.weight_map_ijk_to_ras,
            final.uncertainty,
            final.ijk_to_ras,
        )
        self.displayedStep = final.index
        self.fullResolutionStep = final.index
        self.createdNodeIDs = []  # the run is complete: its nodes are results, not leftovers

    def showStep(self, params, step: int) -> None:
        from RLRegistrationLib import slicer_bridge

        if self.session is None:
            raise RuntimeError(_("There is no registration to show."))
        self.showFrame(
            params,
            slicer_bridge.step_frame(self.session, step, self.worker.moving_window if self.worker else None),
        )

    def stepBack(self, params) -> int:
        if self.session is None or self.isRunning():
            raise RuntimeError(_("Step back is possible after a run has finished."))
        steps = self.session.step_back()
        self.showStep(params, steps)
        return steps

    def ensureFullResolution(self, params) -> None:
        """Before export: make the output nodes hold the full-resolution result of the displayed step."""
        from RLRegistrationLib import slicer_bridge

        if self.session is None:
            raise RuntimeError(_("There is no result yet: click Apply first."))
        if self.isRunning():
            raise RuntimeError(_("Wait for the registration to finish (or cancel it)."))
        step = self.session.step_count if self.displayedStep is None else self.displayedStep
        if self.fullResolutionStep != step:
            self.showFinal(params, slicer_bridge.final_outputs(self.session, step, self.movingImage))

    def discardCreatedNodes(self, params) -> None:
        """Remove nodes that this run created and never completed (cancel before the first step, error)."""
        for nodeID in self.createdNodeIDs:
            node = slicer.mrmlScene.GetNodeByID(nodeID)
            if node is not None:
                slicer.mrmlScene.RemoveNode(node)
        self.createdNodeIDs = []
        if params is not None:
            for attribute in ("outputTransform", "weightMapVolume", "uncertaintyVolume"):
                node = getattr(params, attribute)
                if node is not None and slicer.mrmlScene.GetNodeByID(node.GetID()) is None:
                    setattr(params, attribute, None)

    # ------------------------------------------------------------------ display
    def updateDisplay(self, params) -> None:
        """Slice view layers (fixed in the background, one overlay in the foreground) and field display."""
        transformNode = params.outputTransform
        if transformNode is not None:
            transformNode.CreateDefaultDisplayNodes()
            displayNode = transformNode.GetDisplayNode()
            mode = params.fieldDisplay
            visible = mode != "Hidden"
            displayNode.SetVisibility(visible)
            displayNode.SetVisibility2D(visible)
            displayNode.SetVisibility3D(False)
            if visible:
                modes = {
                    "Glyph": slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GLYPH,
                    "Grid": slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID,
                    "Contour": slicer.vtkMRMLTransformDisplayNode.VIS_MODE_CONTOUR,
                }
                displayNode.SetVisualizationMode(modes[mode])
            if params.fixedVolume is not None:
                displayNode.SetAndObserveRegionNode(params.fixedVolume)
        layer = foreground_layer(
            params.showWeightMap,
            params.showMagnitude,
            params.weightMapVolume is not None and params.weightMapVolume.GetImageData() is not None,
            params.magnitudeVolume is not None and params.magnitudeVolume.GetImageData() is not None,
            params.warpedVolume is not None and params.warpedVolume.GetImageData() is not None,
            show_uncertainty=params.showUncertainty,
            has_uncertainty=params.uncertaintyVolume is not None
            and params.uncertaintyVolume.GetImageData() is not None,
        )
        foreground = {
            "weight_map": params.weightMapVolume,
            "uncertainty": params.uncertaintyVolume,
            "magnitude": params.magnitudeVolume,
            "warped": params.warpedVolume,
        }.get(layer)
        slicer.util.setSliceViewerLayers(
            background=params.fixedVolume,
            foreground=foreground,
            foregroundOpacity=params.overlayOpacity if foreground is not None else 0.0,
        )

    # ------------------------------------------------------------------ export
    def result(self, params=None):
        """The library's RegistrationResult of the displayed step (full resolution)."""
        if params is not None:
            self.ensureFullResolution(params)
        step = self.session.step_count if self.displayedStep is None else self.displayedStep
        return self.session.result(step)

    def applyToMoving(self, params) -> None:
        """Put the moving volume under the result transform (its previous parent is inside the result)."""
        self.ensureFullResolution(params)
        moving = params.movingVolume
        transformNode = params.outputTransform
        previous = moving.GetParentTransformNode()
        if previous is not None and previous.GetID() == transformNode.GetID():
            return
        if previous is not None and params.initialization == "none":
            if not slicer.util.confirmOkCancelDisplay(
                _(
                    "The moving volume's parent transform '{name}' was not used (initialization: None) and will be "
                    "replaced by the result. Continue?"
                ).format(name=previous.GetName())
            ):
                return
        moving.SetAttribute(PREVIOUS_PARENT_ATTRIBUTE, previous.GetID() if previous is not None else "")
        moving.SetAndObserveTransformNodeID(transformNode.GetID())

    def harden(self, params) -> None:
        """Apply the result to the moving volume and harden it (voxels resampled)."""
        self.applyToMoving(params)
        moving = params.movingVolume
        moving.HardenTransform()
        moving.RemoveAttribute(PREVIOUS_PARENT_ATTRIBUTE)

    def saveTransform(self, params, path: str) -> None:
        """Write the result (affine + displacement, fixed point -> moving point, LPS) as an ITK .h5 file."""
        from RLRegistrationLib.export import write_transform

        write_transform(self.result(params).transform, path, overwrite=True)


#
# RLRegistrationTest
#


class RLRegistrationTest(ScriptedLoadableModuleTest):
    """The real workflow inside Slicer on the embedded sample pair (runs only in Slicer)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RLRegistrationWorkflow()
        self.setUp()
        self.test_RLRegistrationMorphSeekSampling()
        self.setUp()
        self.test_RLRegistrationPolicyDefaults()

    def test_RLRegistrationWorkflow(self):
        self.delayDisplay("Loading the sample pair")
        sampleDir = os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "RLRegistrationLib", "sample_data"
        )
        fixed = slicer.util.loadVolume(os.path.join(sampleDir, "fixed.nii.gz"))
        moving = slicer.util.loadVolume(os.path.join(sampleDir, "moving.nii.gz"))
        fixedLabels = slicer.util.loadLabelVolume(os.path.join(sampleDir, "fixed_labels.nii.gz"))
        movingLabels = slicer.util.loadLabelVolume(os.path.join(sampleDir, "moving_labels.nii.gz"))

        # the user already moved the moving volume a little: this initial alignment must be kept
        initialNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial")
        shift = np.eye(4)
        shift[:3, 3] = [2.0, -1.0, 1.5]
        initialNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
        moving.SetAndObserveTransformNodeID(initialNode.GetID())
        movingVoxelsBefore = slicer.util.arrayFromVolume(moving).copy()

        logic = RLRegistrationLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        params = logic.getParameterNode()
        params.fixedVolume = fixed
        params.movingVolume = moving
        params.fixedLabels = fixedLabels
        params.movingLabels = movingLabels
        params.policy = "tto"
        params.iterations = 10
        params.device = "auto"
        params.initialization = "affine"
        params.warpedVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
        params.magnitudeVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "magnitude")

        self.delayDisplay("Running 3 steps")
        reports = logic.runBlocking(params, 3)
        self.assertEqual([r.index for r in reports], [0, 1, 2, 3])
        self.assertGreater(reports[-1].dice, reports[0].dice, "Dice must improve over the pre-alignment")

        self.delayDisplay("Continue one step, step back")
        more = logic.runBlocking(params, 1, continueRun=True)
        self.assertEqual([r.index for r in more], [4])
        self.assertEqual(logic.stepBack(params), 3)

        # inputs untouched
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(moving), movingVoxelsBefore)
        self.assertEqual(moving.GetParentTransformNode().GetID(), initialNode.GetID())

        self.delayDisplay("Checking the transform node")
        transformNode = params.outputTransform
        self.assertTrue(transformNode.IsA("vtkMRMLGridTransformNode"))
        self.assertEqual(
            transformNode.GetNodeReferenceID(transformNode.GetMovingNodeReferenceRole()), moving.GetID()
        )
        self.assertEqual(
            transformNode.GetNodeReferenceID(transformNode.GetFixedNodeReferenceRole()), fixed.GetID()
        )
        result = logic.result(params)  # full resolution of step 3
        fromParent = transformNode.GetTransformFromParent()
        self.assertTrue(fromParent.IsA("vtkOrientedGridTransform"))
        flip = np.array([-1.0, -1.0, 1.0])
        bounds = [0.0] * 6
        fixed.GetRASBounds(bounds)
        center = np.array(
            [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
        )
        pointsRas = [center + offset for offset in ([0, 0, 0], [10, -5, 8], [-12, 7, -4])]
        for pointRas in pointsRas:
            expectedRas = np.array(result.transform.TransformPoint(tuple(pointRas * flip))) * flip
            np.testing.assert_allclose(fromParent.TransformPoint(pointRas), expectedRas, atol=0.05)
        # the user's initial alignment was the starting point (fixed -> moving local = world - shift)
        initial, runAffine = logic.initialTransform(params)
        self.assertTrue(runAffine)
        np.testing.assert_allclose(np.array(initial.GetTranslation()) * flip, -shift[:3, 3], atol=1e-9)
        np.testing.assert_allclose(logic.session.initial_transform.GetTranslation(), initial.GetTranslation())

        self.delayDisplay("Save and reload the .h5")
        path = os.path.join(slicer.app.temporaryPath, "RLRegistrationTest.h5")
        logic.saveTransform(params, path)
        loaded = slicer.util.loadTransform(path)
        for pointRas in pointsRas:
            np.testing.assert_allclose(
                loaded.GetTransformFromParent().TransformPoint(pointRas),
                fromParent.TransformPoint(pointRas),
                atol=0.05,
            )
        exported = os.path.join(slicer.app.temporaryPath, "RLRegistrationTestNode.h5")
        self.assertTrue(slicer.util.exportNode(transformNode, exported))
        reloaded = slicer.util.loadTransform(exported)
        for pointRas in pointsRas:
            np.testing.assert_allclose(
                reloaded.GetTransformFromParent().TransformPoint(pointRas),
                fromParent.TransformPoint(pointRas),
                atol=1e-3,
            )

        self.delayDisplay("Apply and harden")
        logic.applyToMoving(params)
        self.assertEqual(moving.GetParentTransformNode().GetID(), transformNode.GetID())
        logic.harden(params)
        self.assertIsNone(moving.GetParentTransformNode())
        self.delayDisplay("Test passed")

    def test_RLRegistrationMorphSeekSampling(self):
        """A MorphSeek model from models/ with 3 sampled trajectories: uncertainty overlay (skipped without
        a MorphSeek model)."""
        logic = RLRegistrationLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        from RLRegistrationLib import slicer_bridge

        names = [
            c.name
            for c in slicer_bridge.policy_choices()
            if c.supports_sampling and not c.name.endswith("+tto")
        ]
        if not names:
            self.delayDisplay("No MorphSeek model in models/: sampling test skipped")
            return
        sampleDir = os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "RLRegistrationLib", "sample_data"
        )
        params = logic.getParameterNode()
        params.fixedVolume = slicer.util.loadVolume(os.path.join(sampleDir, "fixed.nii.gz"))
        params.movingVolume = slicer.util.loadVolume(os.path.join(sampleDir, "moving.nii.gz"))
        params.policy = names[0]
        params.samples = 3
        params.device = "auto"
        params.initialization = "affine"
        params.showUncertainty = True

        self.delayDisplay(f"Running 2 steps of {names[0]} with 3 samples")
        reports = logic.runBlocking(params, 2)
        self.assertEqual([r.index for r in reports], [0, 1, 2])
        self.assertIsNone(reports[0].uncertainty_mean_mm)
        self.assertGreaterEqual(reports[-1].uncertainty_mean_mm, 0.0)
        uncertaintyVolume = params.uncertaintyVolume
        self.assertIsNotNone(uncertaintyVolume)
        values = slicer.util.arrayFromVolume(uncertaintyVolume)
        self.assertEqual(
            values.shape, slicer.util.arrayFromVolume(params.fixedVolume).shape
        )  # final: fixed grid
        self.assertGreaterEqual(float(values.min()), 0.0)
        self.assertTrue(logic.uncertaintyRangeText.endswith("mm"))
        self.assertEqual(uncertaintyVolume.GetDisplayNode().GetColorNodeID(), UNCERTAINTY_COLORS)
        self.delayDisplay("Sampling test passed")

    def test_RLRegistrationPolicyDefaults(self):
        """Choosing a policy in the panel sets Steps, Iterations and Regularization to the policy's defaults
        (a learned model's <id>+tto chain: the card's learned + TTO steps and its regularization weight)."""
        from RLRegistrationLib import slicer_bridge

        widget = slicer.util.getModuleWidget("RLRegistration")
        choices = {c.name: c for c in slicer_bridge.policy_choices()}
        chains = [name for name in choices if name.endswith("+tto")]
        for name in ["tto"] + chains[:1]:
            self.delayDisplay(f"Selecting {name}")
            widget.ui.policyComboBox.currentIndex = widget.ui.policyComboBox.findData(name)
            params = widget._parameterNode
            self.assertEqual(params.policy, name)
            self.assertEqual(params.steps, choices[name].default_steps)
            defaults = choices[name].option_defaults
            self.assertEqual(params.iterations, defaults["iterations"])
            self.assertAlmostEqual(params.regularization, defaults["regularization"])
        self.delayDisplay("Policy defaults test passed")
