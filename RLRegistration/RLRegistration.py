"""RLRegistration: step-wise deformable registration in 3D Slicer (thin glue around the shared layers).

All computation lives in ``RLRegistrationLib``; everything done to the scene in the Qt-free MRML layer
(``RLRegistrationMRML.scene_logic``), and the panel's behaviour (settings and their ranges, runs, polling,
errors, the CPU retry, replay) in its ``PanelController``, which the browser app (``rlreg view``) shares.
This file binds the Qt widgets to them, drives the controller with ``qt.QTimer``s and shows its messages;
the parameter node is made from the MRML layer's settings table (``RLRegistrationMRML.parameters``).

Conventions (docs/ARCHITECTURE.md §3): the result maps a fixed point to the moving point (resampling direction) and is
put into a ``vtkMRMLGridTransformNode`` as *transform from parent* (RAS). The moving volume's existing linear
parent transform initializes the registration and is part of the result, never dropped.
"""

import importlib.util

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Qt-free and torch-free: safe to import before PyTorch is installed
from RLRegistrationLib.frontends.panel_state import PanelState
from RLRegistrationMRML.panel_controller import PanelController
from RLRegistrationMRML.parameter_node import parameterNodeClass
from RLRegistrationMRML.parameters import INITIALIZATIONS, PAIRS, QUALITIES
from RLRegistrationMRML.scene_logic import RegistrationSceneLogic
from RLRegistrationMRML.self_test import SceneWorkflowTests
from RLRegistrationQt.replay_controls import ReplayControlsMixin
from RLRegistrationQt.result_actions import ResultActionsMixin

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


RLRegistrationParameterNode = parameterNodeClass(__name__)


#
# RLRegistrationWidget
#


class RLRegistrationWidget(
    ScriptedLoadableModuleWidget, VTKObservationMixin, ReplayControlsMixin, ResultActionsMixin
):
    """Binds the panel's widgets to the shared ``PanelController`` (see the module docstring); the replay
    and display controls and the result buttons are in the ``RLRegistrationQt`` mixins."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.controller = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RLRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = RLRegistrationLogic()
        self.controller = PanelController(self.logic)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.timeout.connect(self.onPollTimer)
        self._playTimer = qt.QTimer()
        self._playTimer.setInterval(PLAY_INTERVAL_MS)
        self._playTimer.timeout.connect(self.onPlayTimer)
        self._flickerTimer = qt.QTimer()
        self._flickerTimer.timeout.connect(self.onFlickerTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")  # the read-out's point
        if crosshair is not None:
            self.addObserver(crosshair, crosshair.CursorPositionModifiedEvent, self.onCursorMoved)

        for value, label in INITIALIZATIONS:
            self.ui.initializationComboBox.addItem(label, value)
        for comboBox, choices in ((self.ui.qualityComboBox, QUALITIES), (self.ui.pairComboBox, PAIRS)):
            for value, label in choices:
                comboBox.addItem(label, value)
        self._populatePolicyAndDeviceChoices()

        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.continueButton.clicked.connect(self.onContinueButton)
        self.ui.stepBackButton.clicked.connect(self.onStepBackButton)
        self.ui.playButton.toggled.connect(self.onPlayToggled)
        self.ui.stepSlider.valueChanged.connect(self.onStepSliderChanged)
        self.ui.applyToMovingButton.clicked.connect(self.onApplyToMovingButton)
        self.ui.hardenButton.clicked.connect(self.onHardenButton)
        self.ui.saveButton.clicked.connect(self.onSaveButton)
        for comboBox, setting in (
            (self.ui.policyComboBox, "policy"),
            (self.ui.deviceComboBox, "device"),
            (self.ui.initializationComboBox, "initialization"),
            (self.ui.qualityComboBox, "quality"),
            (self.ui.pairComboBox, "pair"),
        ):
            comboBox.currentIndexChanged.connect(
                lambda index, comboBox=comboBox, setting=setting: self.onChoiceChanged(
                    comboBox, setting, index
                )
            )
        self.ui.fieldDisplayComboBox.currentIndexChanged.connect(self.onDisplayOptionChanged)
        for checkBox in self._overlayCheckBoxes():
            checkBox.toggled.connect(lambda checked, box=checkBox: self._onOverlayToggled(box, checked))
        self.ui.overlayOpacitySliderWidget.valueChanged.connect(self.onDisplayOptionChanged)
        self.ui.compareModeComboBox.currentIndexChanged.connect(self.onDisplayOptionChanged)
        self.ui.flickerPeriodSliderWidget.valueChanged.connect(self.onDisplayOptionChanged)

        self.ui.progressBar.visible = False
        self.initializeParameterNode()
        self.updateButtons()

    def cleanup(self) -> None:
        """Module closed or reloaded: stop the worker (it must never outlive the panel) and the timers."""
        self._pollTimer.stop()
        self._playTimer.stop()
        self._flickerTimer.stop()
        if self.logic:
            self.logic.cancel(wait=True, timeout=10.0)
            self.logic.stopObservingScene()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._playTimer.stop()
        self.controller.pause()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )

    def onSceneStartClose(self, caller, event) -> None:
        self._playTimer.stop()
        self._flickerTimer.stop()
        self._pollTimer.stop()
        self.controller.sceneClosing()
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
        self.controller.setParameters(inputParameterNode)
        if self._parameterNode:
            # widgets with the "SlicerParameterName" dynamic property (see the .ui) are connected here; the
            # spin boxes and the slider take their ranges from the parameter node (the settings table)
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    # ------------------------------------------------------------------ parameter node <-> manual widgets
    def _populatePolicyAndDeviceChoices(self) -> None:
        """Policies (model cards) and devices need torch; before it is installed only the defaults show."""
        self.controller.loadChoices()
        self._updatingGui = True
        try:
            self.ui.policyComboBox.clear()
            self.ui.deviceComboBox.clear()
            for choice in self.controller.policies.values():
                self.ui.policyComboBox.addItem(choice.label, choice.name)
            for value, label, _available in self.controller.devices:
                self.ui.deviceComboBox.addItem(label, value)
        finally:
            self._updatingGui = False

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
            self._selectData(self.ui.pairComboBox, params.pair)
            choice = self.controller.policyChoice()
            description = choice.description if choice else ""
            if choice and choice.modality:
                description += "\n" + _("Trained for: {modality}").format(modality=choice.modality)
            self.ui.policyDescriptionLabel.text = description
            # only policies that sample trajectories (MorphSeek models) use more than one sample
            self.ui.samplesSpinBox.enabled = bool(choice and choice.supports_sampling)
        finally:
            self._updatingGui = False
        self.controller.refreshInputs()
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

    def onChoiceChanged(self, comboBox, setting: str, index: int) -> None:
        """A choice (policy, device, initialization, quality) through the controller: a new policy or
        quality brings the steps and regularization it was measured with; a refusal is shown."""
        if self._updatingGui or not self._parameterNode or index < 0:
            return
        if not self.controller.updateSettings(**{setting: comboBox.itemData(index)}):
            self._showError()
            self.onParameterNodeModified()  # the combo box shows the parameter again

    # ------------------------------------------------------------------ buttons
    def updateButtons(self) -> None:
        flags = self.controller.flags()
        busy = self.controller.state.busy
        self.ui.applyButton.text = flags.apply_text
        self.ui.applyButton.enabled = flags.apply_enabled
        self.ui.applyButton.toolTip = (
            _("Stop after the step in progress")
            if busy
            else _("Register the moving volume to the fixed volume")
        )
        for widget in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.enabled = flags.inputs_enabled
        self.ui.continueButton.enabled = flags.continue_enabled
        self.ui.stepBackButton.enabled = flags.step_back_enabled
        self.ui.stepSlider.blockSignals(True)
        self.ui.stepSlider.setRange(flags.slider_minimum, flags.slider_maximum)
        self.ui.stepSlider.value = flags.slider_value
        self.ui.stepSlider.blockSignals(False)
        self.ui.stepSlider.enabled = flags.slider_enabled
        self.ui.stepLabel.text = f"{flags.slider_value} / {flags.slider_maximum}"
        self.ui.playButton.blockSignals(True)
        self.ui.playButton.checked = flags.playing
        self.ui.playButton.blockSignals(False)
        self.ui.playButton.text = _("Pause") if flags.playing else _("Play")
        self.ui.playButton.enabled = flags.play_enabled
        for button in (self.ui.applyToMovingButton, self.ui.hardenButton, self.ui.saveButton):
            button.enabled = flags.export_enabled
        self.ui.progressBar.visible = flags.progress_visible
        value, maximum = self.controller.state.progress()
        self.ui.progressBar.maximum = maximum
        self.ui.progressBar.value = value
        self.ui.progressBar.format = self.controller.progress
        if self.logic is not None:
            self.ui.weightMapRangeLabel.text = self.logic.weightMapRangeText
            self.ui.uncertaintyRangeLabel.text = self.logic.uncertaintyRangeText
            self.ui.magnitudeRangeLabel.text = self.logic.magnitudeRangeText
            self.ui.jacobianRangeLabel.text = self.logic.jacobianRangeText

    def _showError(self) -> None:
        """The controller's message in Slicer's error display, the details behind "Show Details"."""
        slicer.util.errorDisplay(self.controller.error, detailedText=self.controller.errorDetails or None)

    def _showStatus(self) -> None:
        """The status line and what the run chose and decided (plan, do no harm), one line each."""
        self.ui.statusLabel.text = "\n".join(
            line for line in (self.controller.status, *self.controller.notes) if line
        )
        self.updateButtons()

    def onApplyButton(self) -> None:
        if self.controller.state.state == PanelState.RUNNING:
            self.controller.apply()  # Cancel (a double click on Apply is not one)
            self._showStatus()
            return
        question = self.controller.replaceQuestion()
        if question and not slicer.util.confirmOkCancelDisplay(question):
            return
        self._run(self.controller.start)

    def onContinueButton(self) -> None:
        self._run(lambda: self.controller.start(continueRun=True))

    def _run(self, start) -> None:
        """Start a run with ``start`` (a controller method) once PyTorch is there; the timer polls it."""
        started = False
        with slicer.util.tryWithErrorDisplay(_("Failed to start the registration."), waitCursor=True):
            if not self.logic.ensureDependencies():
                self.ui.statusLabel.text = _("PyTorch is needed to run a registration.")
                return
            if self.controller.choicesNeedTorch:  # PyTorch was just installed: offer the real choices
                self._populatePolicyAndDeviceChoices()
                self.onParameterNodeModified()
            started = start()
        if started:
            self._pollTimer.start()
        elif self.controller.error:
            self._showError()
        self._showStatus()

    def onPollTimer(self) -> None:
        """Main thread: the controller drains the worker's queue and updates the nodes; the panel follows."""
        result = self.controller.poll()
        if not self.controller.state.busy:
            self._pollTimer.stop()
        if not result.changed:
            return
        self._showStatus()
        if result.failed:
            if not self.controller.cpuRetryOffered:
                self._showError()
            elif slicer.util.confirmYesNoDisplay(self.controller.cpuRetryQuestion()):
                self._run(self.controller.retryOnCpu)


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


class RLRegistrationTest(ScriptedLoadableModuleTest, SceneWorkflowTests):
    """The real workflow inside Slicer on the embedded sample pair (runs only in Slicer): the MRML layer's
    workflow checks (``RLRegistrationMRML.self_test``) on this module's Logic, and the panel's policy
    defaults."""

    def newLogic(self):
        return RLRegistrationLogic()

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RLRegistrationWorkflow()
        self.setUp()
        self.test_RLRegistrationMorphSeekSampling()
        self.setUp()
        self.test_RLRegistrationPolicyDefaults()

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
