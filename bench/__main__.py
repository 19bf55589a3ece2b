import sys

from p2p_edge.errors import P2PError

from .run import main

try:
    sys.exit(main())
except P2PError as e:  # bad input (config, splits, data): one line, as the CLI prints it
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
