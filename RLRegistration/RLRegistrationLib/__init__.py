"""RLRegistration core library: step-wise deformable registration of 3D images (no Slicer import here)."""

__version__ = "0.1.0"
