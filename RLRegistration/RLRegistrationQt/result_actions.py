"""What the panel does with a finished result (``ResultActionsMixin``): put the moving volume under the
result transform, harden it, save it as an ITK ``.h5`` transform; each asks first where it would replace or
resample something."""

import os

import qt
import slicer
from slicer.i18n import tr as _


class ResultActionsMixin:
    """Slots of the result buttons for ``RLRegistrationWidget``, which provides ``ui``, ``logic`` and
    ``_parameterNode``."""

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
