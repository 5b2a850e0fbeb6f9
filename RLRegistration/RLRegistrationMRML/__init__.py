"""RLRegistration's Qt-free MRML layer: what a registration does to a Slicer scene.

Needs Slicer's MRML classes (inside Slicer, or the ``slicer-core`` wheel outside it), never Qt. The Slicer
panel (``RLRegistration.py``) and the browser app are thin front-ends on it; the registration core
(``RLRegistrationLib``) never imports it.
"""
