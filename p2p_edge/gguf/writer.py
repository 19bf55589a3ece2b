"""Write a LoRA as a llama.cpp GGUF adapter, validating shapes and metadata against the base model first."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from gguf import GGUFType, GGUFWriter

from p2p_edge.base import BaseSpec
from p2p_edge.errors import ModelFileError
from p2p_edge.fileio import atomic_path
from p2p_edge.gguf.keys import (
    GGUF_NAMES, KEY_ADAPTER_TYPE, KEY_ALPHA, KEY_BASE_HEADS, KEY_BASE_LAYERS, KEY_BASE_NAME, KEY_BASE_SHA, KEY_RANK,
    LoraWeights, META_PREFIX, TARGET_MODULES, permute_q_rows, q_is_permuted,
)


_DTYPES = {"f16": np.float16, "f32": np.float32}


# --------------------------------------------------------------------------------------------------- writing

def write_adapter(
    path,
    lora: LoraWeights,
    base: BaseSpec,
    *,
    dtype: str = "f16",
    metadata: dict[str, str] | None = None,
    permute_q: bool = True,
) -> Path:
    """Write `lora` as a llama.cpp GGUF adapter for `base`, atomically and with mode 0600.

    `metadata` strings are stored as `p2p.meta.<key>` and come back from read_adapter. `permute_q=False`
    exists only to prove in tests that the permutation matters; it writes a wrong adapter for llama bases.
    Weights that do not fit `base` or are not finite raise ModelFileError (nothing is written).
    """
    path = Path(path)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
    _check_metadata_arg(metadata)
    try:
        permuted = permute_q and q_is_permuted(base.arch)
    except ValueError as e:
        raise ModelFileError(f"{path}: {e}") from None
    problem = _weights_problem(lora, base)
    if problem:
        raise ModelFileError(f"{path}: LoRA does not fit base model '{base.name}': {problem}")
    with np.errstate(over="ignore"):  # an f16 overflow becomes inf and is reported just below
        tensors, stacks = _gguf_tensors(lora, base, _DTYPES[dtype], permuted)
    # one check per module stack (the tensors are views of them); the name only on the slow path
    bad = None if all(np.isfinite(x).all() for x in stacks) else \
        next(name for name, arr in tensors if not np.isfinite(arr).all())
    if bad:
        raise ModelFileError(f"{path}: tensor {bad} has NaN/Inf values (or overflows {dtype}); not writing it")
    with atomic_path(path) as tmp:
        writer = GGUFWriter(tmp, arch=base.arch)
        try:
            _add_kv(writer, lora, base, metadata or {})
            for name, arr in tensors:
                writer.add_tensor(name, arr)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return path


def _check_metadata_arg(metadata: dict[str, str] | None) -> None:
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise ValueError(f"metadata must map non-empty str keys to str values, got {key!r}: {value!r}")


def _weights_problem(lora: LoraWeights, base: BaseSpec) -> str | None:
    """Why `lora` cannot be an adapter for `base`, or None."""
    if set(lora.a) != set(TARGET_MODULES) or set(lora.b) != set(TARGET_MODULES):
        return f"needs exactly modules {TARGET_MODULES}, got A {sorted(lora.a)} / B {sorted(lora.b)}"
    if not isinstance(lora.rank, (int, np.integer)) or lora.rank < 1:
        return f"rank must be a positive int, got {lora.rank!r}"
    if not (math.isfinite(lora.alpha) and lora.alpha > 0):
        return f"alpha must be finite and > 0, got {lora.alpha!r}"
    r, n = int(lora.rank), base.n_layers
    for module, (n_in, n_out) in base.module_shapes().items():
        for label, arr, want in (("A", lora.a[module], (n, r, n_in)), ("B", lora.b[module], (n, n_out, r))):
            if np.shape(arr) != want:
                return f"{module} {label} has shape {np.shape(arr)}, expected {want}"
    return None


def _gguf_tensors(lora: LoraWeights, base: BaseSpec, dtype, permute_q: bool
                  ) -> tuple[list[tuple[str, np.ndarray]], list[np.ndarray]]:
    """(name, array) pairs in llama.cpp's naming, layout and dtype, layer by layer, and the per-module stacks they
    are views of: each module's (layers, ...) A and B are converted (and q's B permuted) in one step."""
    stacks = {}
    for module in TARGET_MODULES:
        a = np.ascontiguousarray(lora.a[module], dtype=dtype)
        b = np.asarray(lora.b[module])
        if module == "q_proj" and permute_q:   # rows are axis 1 of the (layers, out, r) stack
            b = permute_q_rows(b.swapaxes(0, 1), base.n_head).swapaxes(0, 1)
        stacks[module] = (a, np.ascontiguousarray(b, dtype=dtype))
    tensors = []
    for layer in range(base.n_layers):
        for module in TARGET_MODULES:
            a, b = stacks[module]
            stem = f"blk.{layer}.{GGUF_NAMES[module]}.weight"
            tensors.append((f"{stem}.lora_a", a[layer]))
            tensors.append((f"{stem}.lora_b", b[layer]))
    return tensors, [x for st in stacks.values() for x in st]


def _add_kv(writer: GGUFWriter, lora: LoraWeights, base: BaseSpec, metadata: dict[str, str]) -> None:
    writer.add_type(GGUFType.ADAPTER)
    writer.add_string(KEY_ADAPTER_TYPE, "lora")
    writer.add_float32(KEY_ALPHA, float(lora.alpha))
    writer.add_string(KEY_BASE_SHA, base.sha256)
    writer.add_string(KEY_BASE_NAME, base.name)
    writer.add_uint32(KEY_BASE_LAYERS, base.n_layers)
    writer.add_uint32(KEY_BASE_HEADS, base.n_head)
    writer.add_uint32(KEY_RANK, int(lora.rank))
    for key, value in metadata.items():
        writer.add_string(META_PREFIX + key, value)


