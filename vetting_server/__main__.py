"""``python -m vetting_server`` is the ``vetting`` command."""

import sys

from .cli import main

sys.exit(main())
