"""GGUF LoRA adapters for llama.cpp: the layout (keys), writing, bounded reading/validation, and PEFT export.

numpy and gguf-py only (no torch): this runs on the client.
"""

from p2p_edge.gguf.keys import GGUF_NAMES, TARGET_MODULES, LoraWeights, permute_q_rows, unpermute_q_rows
from p2p_edge.gguf.peft import export_peft
from p2p_edge.gguf.reader import read_adapter, validate_adapter
from p2p_edge.gguf.writer import write_adapter

__all__ = ["GGUF_NAMES", "TARGET_MODULES", "LoraWeights", "permute_q_rows", "unpermute_q_rows", "export_peft",
           "read_adapter", "validate_adapter", "write_adapter"]
