"""Training side of p2p-edge (torch lives in the modules that need it; data.py is stdlib + numpy)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # training reads local GGUF/HF dirs only: never reach a model hub
