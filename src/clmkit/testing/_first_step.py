"""``python -m clmkit.testing._first_step FOLDER``: one process of a multi-process ``first_step_gradients``."""

import sys

from clmkit.testing.gradients import run_worker

run_worker(sys.argv[1])
