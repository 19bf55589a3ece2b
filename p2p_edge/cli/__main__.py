"""`python -m p2p_edge.cli ...` = `p2p-edge ...` (what the tests and robustness bench run as a child process)."""

import sys

from p2p_edge.cli import app

sys.exit(app())
