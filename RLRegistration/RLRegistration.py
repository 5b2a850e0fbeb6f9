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
from typing import Annotated, Union

import numpy as np
import qt
import slicer
import vtk
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLLinearTransformNode,
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
from RLRegistrationLib.frontends.panel_state import PanelState, PanelStateMachine, progress_text
from RLRegistrationLib.registration.quality import QUALITY_PRESETS
from RLRegistrationMRML.parameters import (
    FIELD_DISPLAY_MODES,
    INITIALIZATION_MODES,
    INITIALIZATIONS,
    QUALITIES,
    QUALITY_MODES,
    UNCERTAINTY_COLORS,
)
from RLRegistrationMRML.scene_logic import RegistrationSceneLogic, pointsFromWorld

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
    fixedMask, movingMask - optional label maps or segmentations restricting the similarity to their inside.
    policy, steps, iterations, regularization, device, initialization, quality - how the registration runs
    (quality: RLRegistrationLib.quality presets, for the tto policy except "standard"; the panel sets the
    steps and regularization a preset was measured with when it is chosen).
    samples - trajectories sampled per step (policies that sample, e.g. MorphSeek; 1 = one trajectory).
    outputTransform - grid transform node receiving the deformation u (created when empty).
    outputLinearTransform - linear transform node receiving the pre-alignment A, child of outputTransform
    (created when empty): a volume under it is shown through T(x) = A(x + u(x)).
    outputParentTransform - optional parent of the output transform (default: the fixed volume's parent).
    warpedVolume, weightMapVolume, uncertaintyVolume, magnitudeVolume - optional output volumes (weight map
    and uncertainty are created when empty and the policy provides them).
    fieldDisplay, showWeightMap, showUncertainty, showMagnitude, overlayOpacity - how results are shown in the
    slice views (one overlay at a time; the opacity applies to the one shown).
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    # None in the unions: the wrapper must be able to write the empty default (else getParameterNode raises)
    fixedLabels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    movingLabels: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    fixedMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    movingMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode, None]
    policy: str = "tto"
    steps: Annotated[int, WithinRange(1, 500)] = 6  # the tto defaults (the CLI's; measured)
    iterations: Annotated[int, WithinRange(1, 500)] = 5
    samples: Annotated[int, WithinRange(1, 16)] = 1
    regularization: Annotated[float, WithinRange(0.0, 20.0)] = 2.0
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    initialization: Annotated[str, Choice(INITIALIZATION_MODES)] = "affine"
    quality: Annotated[str, Choice(QUALITY_MODES)] = "standard"
    outputTransform: vtkMRMLGridTransformNode
    outputLinearTransform: vtkMRMLLinearTransformNode
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
        for value, label in QUALITIES:
            self.ui.qualityComboBox.addItem(label, value)
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
        self.ui.qualityComboBox.currentIndexChanged.connect(self.onQualityChanged)
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
            self.logic.stopObservingScene()
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
            from RLRegistrationLib import devices
            from RLRegistrationLib.policies import choices

            policyChoices = choices.policy_choices()
            deviceChoices = devices.device_choices()
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
            self._selectData(self.ui.qualityComboBox, params.quality)
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

    def onQualityChanged(self, index) -> None:
        if not self._updatingGui and self._parameterNode and index >= 0:
            params = self._parameterNode
            params.quality = self.ui.qualityComboBox.itemData(index)
            # a preset with its own schedule sets the steps (and regularization) it was measured with
            steps, regularization = QUALITY_PRESETS[params.quality].panel_settings(
                self._policySteps.get(params.policy, params.steps),
                self._policyOptions.get(params.policy, {}).get("regularization"),
            )
            params.steps = steps
            if regularization is not None:
                params.regularization = float(regularization)

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

    def _confirmReplacingUnusedParent(self) -> bool:
        params = self._parameterNode
        if not self.logic.unusedParentWouldBeReplaced(params):
            return True
        return slicer.util.confirmOkCancelDisplay(
            _(
                "The moving volume's parent transform '{name}' was not used (initialization: None) and will be "
                "replaced by the result. Continue?"
            ).format(name=params.movingVolume.GetParentTransformNode().GetName())
        )

    def onApplyToMovingButton(self) -> None:
        if not self._confirmReplacingUnusedParent():
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to apply the transform."), waitCursor=True):
            self.logic.applyToMoving(self._parameterNode)
            self.ui.statusLabel.text = _("The moving volume is now under the result transform.")

    def onHardenButton(self) -> None:
        params = self._parameterNode
        if (
            not slicer.util.confirmOkCancelDisplay(
                _(
                    "Harden the result into the moving volume '{name}'? Its voxels are resampled onto the fixed "
                    "geometry; this cannot be undone."
                ).format(name=params.movingVolume.GetName())
            )
            or not self._confirmReplacingUnusedParent()
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


class RLRegistrationLogic(ScriptedLoadableModuleLogic, RegistrationSceneLogic):
    """The module's logic: Slicer's parameter node and dependency installation on top of the Qt-free MRML
    layer (``RLRegistrationMRML.scene_logic.RegistrationSceneLogic``), which does all the work on the scene.

    Usable without the widget: ``runBlocking(parameterNode, steps)`` registers and returns the step reports;
    ``result``, ``saveTransform``, ``applyToMoving``, ``harden``, ``continueRegistration`` and ``stepBack``
    work on the parameter node as the panel's buttons do.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        RegistrationSceneLogic.__init__(self)

    def getParameterNode(self):
        return RLRegistrationParameterNode(super().getParameterNode())

    def runBlocking(self, params, steps: int, continueRun: bool = False, timeoutSeconds: float = 1800):
        """Register (or continue) and wait, keeping the application responsive; returns the step reports."""
        return RegistrationSceneLogic.runBlocking(
            self, params, steps, continueRun, timeoutSeconds, processEvents=slicer.app.processEvents
        )

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
        params.iterations = 5
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

        self.delayDisplay("Checking the transform hierarchy")
        import SimpleITK as sitk

        gridNode, linearNode = params.outputTransform, params.outputLinearTransform
        self.assertTrue(gridNode.IsA("vtkMRMLGridTransformNode"))
        self.assertTrue(linearNode.IsA("vtkMRMLLinearTransformNode"))
        self.assertEqual(linearNode.GetParentTransformNode().GetID(), gridNode.GetID())
        for node in (gridNode, linearNode):
            self.assertEqual(node.GetNodeReferenceID(node.GetMovingNodeReferenceRole()), moving.GetID())
            self.assertEqual(node.GetNodeReferenceID(node.GetFixedNodeReferenceRole()), fixed.GetID())
        self.assertTrue(gridNode.GetTransformFromParent().IsA("vtkOrientedGridTransform"))
        result = logic.result(params)  # full resolution of step 3
        flip = np.array([-1.0, -1.0, 1.0])
        bounds = [0.0] * 6
        fixed.GetRASBounds(bounds)
        low, high = np.array(bounds[0::2]), np.array(bounds[1::2])
        pointsRas = low + (high - low) * np.random.default_rng(0).random((1000, 3))
        expectedRas = np.array([result.transform.TransformPoint(tuple(p * flip)) for p in pointsRas]) * flip
        # a volume under the linear node is shown through T(x) = A(x + u(x)): the .h5's transform
        np.testing.assert_allclose(pointsFromWorld(linearNode, pointsRas), expectedRas, atol=1e-3)
        # the grid node alone is the deformable refinement x + u(x) (what the field display shows)
        displacement = result.displacement
        uRas = np.array(
            [
                np.array(displacement.EvaluateAtPhysicalPoint(tuple(p * flip), sitk.sitkLinear)) * flip
                for p in pointsRas[:50]
            ]
        )
        np.testing.assert_allclose(
            pointsFromWorld(gridNode, pointsRas[:50]), pointsRas[:50] + uRas, atol=1e-3
        )
        # the user's initial alignment was the starting point (fixed -> moving local = world - shift)
        initial, runAffine = logic.initialTransform(params)
        self.assertTrue(runAffine)
        np.testing.assert_allclose(np.array(initial.GetTranslation()) * flip, -shift[:3, 3], atol=1e-9)
        np.testing.assert_allclose(logic.session.initial_transform.GetTranslation(), initial.GetTranslation())

        self.delayDisplay("Save the .h5 and load it back")
        path = os.path.join(slicer.app.temporaryPath, "RLRegistrationTest.h5")
        logic.saveTransform(params, path)
        loaded = logic.loadTransform(path)  # linear interpolation, as written
        np.testing.assert_allclose(pointsFromWorld(loaded, pointsRas), expectedRas, atol=1e-3)
        # Slicer's own loader interpolates the field cubically: close to, not equal to, the result
        cubic = slicer.util.loadTransform(path)
        self.assertLess(np.abs(pointsFromWorld(cubic, pointsRas) - expectedRas).max(), 1.0)
        self.delayDisplay("Export both nodes through Slicer's storage nodes and load them back")
        reloaded = []
        for node in (gridNode, linearNode):
            exported = os.path.join(slicer.app.temporaryPath, f"RLRegistrationTest{node.GetID()}.h5")
            self.assertTrue(slicer.util.exportNode(node, exported))
            reloaded.append(logic.loadTransform(exported))
        reloaded[1].SetAndObserveTransformNodeID(reloaded[0].GetID())
        np.testing.assert_allclose(pointsFromWorld(reloaded[1], pointsRas), expectedRas, atol=1e-3)

        self.delayDisplay("Apply and harden")
        logic.applyToMoving(params)
        self.assertEqual(moving.GetParentTransformNode().GetID(), linearNode.GetID())
        logic.harden(params)
        self.assertIsNone(moving.GetParentTransformNode())
        self.assertEqual(initialNode.GetID(), slicer.mrmlScene.GetNodeByID(initialNode.GetID()).GetID())
        self.delayDisplay("Test passed")

    def test_RLRegistrationMorphSeekSampling(self):
        """A MorphSeek model from models/ with 3 sampled trajectories: uncertainty overlay (skipped without
        a MorphSeek model)."""
        logic = RLRegistrationLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        from RLRegistrationLib.policies import choices

        names = [
            c.name for c in choices.policy_choices() if c.supports_sampling and not c.name.endswith("+tto")
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
        from RLRegistrationLib.policies import choices

        widget = slicer.util.getModuleWidget("RLRegistration")
        choices = {c.name: c for c in choices.policy_choices()}
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
