"""The Qt layer of the Slicer panel beyond the template's widget class (``RLRegistration.py``): mixins of
``RLRegistrationWidget`` for one group of controls each. They bind Qt widgets to the Qt-free
``PanelController`` and MRML layer and hold no logic of their own; they run only inside Slicer (``qt`` and
``slicer`` come from its Python), and ``Testing/test_slicer_module_structure.py`` checks every Slicer,
Qt and ``.ui`` name they use as it checks the module's."""
