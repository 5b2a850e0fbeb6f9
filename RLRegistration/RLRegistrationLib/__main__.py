"""``python -m RLRegistrationLib ...`` runs the ``rlreg`` command."""

import sys

from .frontends.cli import entry_point

sys.exit(entry_point())
