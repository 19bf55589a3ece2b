"""The hypernetwork on the client: its card (what it was trained for and how to feed it) and its ONNX runner."""

from p2p_edge.hypernet.card import CARD_FORMAT, HypernetCard, card_path_for, load_card
from p2p_edge.hypernet.runner import DEFAULT_HYPERNET, Hypernet

__all__ = ["CARD_FORMAT", "HypernetCard", "card_path_for", "load_card", "DEFAULT_HYPERNET", "Hypernet"]
