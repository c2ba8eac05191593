"""``python -m clmkit.cli``: the ``clmkit`` command."""

import sys

from clmkit.cli import main

sys.exit(main())
