"""p2p-edge: on-device LLM personalization with a Profile-to-PEFT hypernetwork.

Importing this package (and running the client commands) never imports torch.
"""

__version__ = "0.1.0"
