"""``python -m ctrlsim``: the same as the ``ctrlsim`` command."""

import sys

from .cli import main

sys.exit(main())
