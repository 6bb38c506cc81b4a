"""``python -m ctrlsim``: the same as the ``ctrlsim`` command."""

import sys

from .cli import entry

sys.exit(entry())
