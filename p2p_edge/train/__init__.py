"""Training side of p2p-edge (torch lives in the modules that need it; data.py is stdlib + numpy)."""
