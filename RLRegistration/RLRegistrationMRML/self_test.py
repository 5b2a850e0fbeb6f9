"""The module's self-test workflows (what Slicer's *Reload and Test* runs), on the embedded sample pair.

:class:`SceneWorkflowTests` holds the checks; ``RLRegistrationTest`` in ``RLRegistration.py`` (a
``ScriptedLoadableModuleTest``) runs them on the module's Logic, inside Slicer and headless in the pytest
suite (``Testing/test_slicer_logic_runs.py``). Every check is a number: Dice, point maps at 1000 points
against the ``.h5``, the transform hierarchy, the inputs untouched.
"""

from __future__ import annotations

import os

import numpy as np
import slicer
import slicer.util

from RLRegistrationLib.io.sample_pair import SAMPLE_FILES

from .parameters import UNCERTAINTY_COLORS
from .scene_export import pointsFromWorld


class SceneWorkflowTests:
    """Workflow checks for a ``unittest.TestCase`` with ``delayDisplay`` (``ScriptedLoadableModuleTest``)
    whose :meth:`newLogic` returns the module's Logic."""

    def newLogic(self):
        raise NotImplementedError("the test case gives the module's Logic")

    def test_RLRegistrationWorkflow(self):
        self.delayDisplay("Loading the sample pair")
        fixed = slicer.util.loadVolume(str(SAMPLE_FILES["fixed"]))
        moving = slicer.util.loadVolume(str(SAMPLE_FILES["moving"]))
        fixedLabels = slicer.util.loadLabelVolume(str(SAMPLE_FILES["fixed_labels"]))
        movingLabels = slicer.util.loadLabelVolume(str(SAMPLE_FILES["moving_labels"]))

        # the user already moved the moving volume a little: this initial alignment must be kept
        initialNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial")
        shift = np.eye(4)
        shift[:3, 3] = [2.0, -1.0, 1.5]
        initialNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
        moving.SetAndObserveTransformNodeID(initialNode.GetID())
        movingVoxelsBefore = slicer.util.arrayFromVolume(moving).copy()

        logic = self.newLogic()
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
        logic = self.newLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        from RLRegistrationLib.policies import choices

        names = [
            c.name for c in choices.policy_choices() if c.supports_sampling and not c.name.endswith("+tto")
        ]
        if not names:
            self.delayDisplay("No MorphSeek model in models/: sampling test skipped")
            return
        params = logic.getParameterNode()
        params.fixedVolume = slicer.util.loadVolume(str(SAMPLE_FILES["fixed"]))
        params.movingVolume = slicer.util.loadVolume(str(SAMPLE_FILES["moving"]))
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
