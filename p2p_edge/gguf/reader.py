"""Read and validate a GGUF LoRA adapter before llama.cpp sees it.

The reader is a self-contained, bounds-checked GGUF parser rather than gguf-py's GGUFReader: llama.cpp has had
CVEs in GGUF parsing, a malformed adapter can crash it (some type mismatches hit a GGML_ASSERT abort, a bad
adapter given to `Llama(lora_path=...)` segfaults at the first decode), and GGUFReader itself can spin or
exhaust memory on a corrupt array length. So every adapter goes through `read_adapter`/`validate_adapter`
before llama.cpp sees it, and any problem there is one `ModelFileError` line.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFType, GGUFValueType

from p2p_edge.base import BaseSpec
from p2p_edge.errors import ModelFileError
from p2p_edge.gguf.keys import (
    GGUF_NAMES, KEY_ADAPTER_TYPE, KEY_ALPHA, KEY_ARCH, KEY_BASE_HEADS, KEY_BASE_LAYERS, KEY_BASE_NAME, KEY_BASE_SHA,
    KEY_GENERAL_TYPE, KEY_RANK, LoraWeights, META_PREFIX, TARGET_MODULES, q_is_permuted, unpermute_q_rows,
)

_REJECTED_KEY_PREFIXES = ("adapter.alora.",)

_GGML_DTYPES = {GGMLQuantizationType.F32: np.dtype("<f4"), GGMLQuantizationType.F16: np.dtype("<f2")}

# Hard limits of the reader, far above any adapter we make, so that a corrupt count costs nothing.
_MAX_FILE_BYTES = 1 << 30
_MAX_KV = 4096
_MAX_TENSORS = 4096
_GGML_MAX_NAME = 64  # llama.cpp rejects tensor names of 64 bytes or more
_GGML_MAX_DIMS = 4
_SUPPORTED_VERSIONS = (2, 3)
_GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_TENSOR_NAME = re.compile(r"blk\.(0|[1-9][0-9]{0,5})\.(attn_q|attn_v)\.weight\.lora_(a|b)")
_MODULE_OF = {g: m for m, g in GGUF_NAMES.items()}
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}




# --------------------------------------------------------------------------------------------------- reading

def _printable(s: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class _Invalid(Exception):
    """A problem with the file; read_adapter turns it into one ModelFileError line naming the file."""


def read_adapter(path, base: BaseSpec | None = None) -> tuple[LoraWeights, dict[str, str]]:
    """Read and validate a GGUF LoRA adapter; return weights in HF orientation and the `p2p.meta.*` strings.

    Any problem is a ModelFileError naming the file. With `base`, the adapter must match its architecture,
    sha256 (when the file records one) and shapes; without it, shapes must only be self-consistent, and
    undoing q's rope permutation needs the head count the file records as `p2p.base.n_head`.

    Subsets: llama.cpp accepts an adapter for only some layers/modules. Files we wrote (they carry
    `p2p.lora.rank`) must hold every layer for q and v, so a lost tensor is caught; other files may hold a
    subset, and the missing layers/modules come back as zeros (known modules only: without `base`, a module
    absent from the file is absent from the result). All tensors must share one rank.
    """
    path = Path(path)
    try:
        return _read(path, base)
    except _Invalid as e:   # names and keys come from the file: escape what would break the one line
        raise ModelFileError(f"{path}: {_printable(str(e))}") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read adapter file ({e.strerror or e})") from None
    except (struct.error, ValueError, IndexError, KeyError, TypeError, OverflowError, MemoryError) as e:
        # the parser checks bounds itself; this is the backstop that keeps the gate's promise of one line
        raise ModelFileError(f"{path}: malformed adapter file ({type(e).__name__}: {e})") from None


def validate_adapter(path, base: BaseSpec) -> None:
    """Raise ModelFileError unless `path` is an adapter that llama.cpp can safely load onto `base`."""
    read_adapter(path, base)


@dataclass
class _Tensor:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # numpy order (reversed GGUF ne)
    offset: int  # absolute offset in the file


@dataclass
class _Gguf:
    kv: dict[str, tuple[GGUFValueType, object]]  # key -> (type, value); arrays are checked, value None
    tensors: list[_Tensor]
    buf: bytes


def _read(path: Path, base: BaseSpec | None) -> tuple[LoraWeights, dict[str, str]]:
    size = path.stat().st_size
    if size > _MAX_FILE_BYTES:
        raise _Invalid(f"adapter file is {size} bytes, more than the {_MAX_FILE_BYTES} we accept")
    gguf = _parse(path.read_bytes())
    alpha, meta = _check_kv(gguf.kv, base)
    pairs = _collect_pairs(gguf.tensors)
    return _build_weights(gguf, pairs, alpha, base), meta


class _Cursor:
    """Bounds-checked little-endian reads: every length is checked against the bytes left, so a corrupt
    count can neither read past the end nor make us allocate more than the file holds."""

    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > len(self.buf) - self.pos:
            raise _Invalid(f"truncated or corrupt: {what} runs past the end of the file")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def scalar(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def string(self, what: str) -> str:
        raw = self.take(self.u64(f"length of {what}"), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Invalid(f"{what} is not valid UTF-8") from None


def _parse(buf: bytes) -> _Gguf:
    """Parse the GGUF structure with the same limits llama.cpp's gguf.cpp enforces, and a few more."""
    if buf[:4] != _GGUF_MAGIC:
        raise _Invalid("not a GGUF file (bad magic)")
    cur = _Cursor(buf)
    cur.take(4, "magic")
    version = cur.u32("version")
    if version not in _SUPPORTED_VERSIONS:
        raise _Invalid(f"unsupported GGUF version {version} (big-endian or corrupt?)")
    n_tensors, n_kv = cur.u64("tensor count"), cur.u64("metadata count")
    if n_tensors > _MAX_TENSORS or n_kv > _MAX_KV:
        raise _Invalid(f"implausible header: {n_tensors} tensors, {n_kv} metadata keys")
    kv = _parse_kv(cur, n_kv)
    alignment = _alignment(kv)
    infos = [_parse_tensor_info(cur, i) for i in range(n_tensors)]
    data_start = -(-cur.pos // alignment) * alignment
    return _Gguf(kv, _place_tensors(infos, data_start, alignment, len(buf)), buf)


def _parse_kv(cur: _Cursor, n_kv: int) -> dict[str, tuple[GGUFValueType, object]]:
    kv: dict[str, tuple[GGUFValueType, object]] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        # llama.cpp looks keys up as C strings: "general.type\0x" would shadow "general.type" there; other control
        # characters (a newline) are never in a real key and would break our one-line error messages
        if not key or key in kv or any(c < " " or c == "\x7f" for c in key):
            raise _Invalid(f"metadata key #{i} {key!r} is empty, duplicated or contains a control character")
        vtype = _value_type(cur.u32(f"type of '{key}'"), key)
        kv[key] = (vtype, _parse_value(cur, vtype, key))
    return kv


def _value_type(raw: int, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(raw)
    except ValueError:
        raise _Invalid(f"metadata '{key}' has unknown value type {raw}") from None


def _parse_value(cur: _Cursor, vtype: GGUFValueType, key: str):
    if vtype == GGUFValueType.STRING:
        return cur.string(f"value of '{key}'")
    if vtype == GGUFValueType.ARRAY:
        _skip_array(cur, key)
        return None
    return cur.scalar(_SCALAR_FORMATS[vtype], f"value of '{key}'")


def _skip_array(cur: _Cursor, key: str) -> None:
    """Walk over an array value (we use none), checking its element type and bounds."""
    etype = _value_type(cur.u32(f"element type of '{key}'"), key)
    count = cur.u64(f"length of '{key}'")
    if etype == GGUFValueType.ARRAY:
        raise _Invalid(f"metadata '{key}' is a nested array, which GGUF does not allow")
    if etype == GGUFValueType.STRING:
        if count > (len(cur.buf) - cur.pos) // 8:
            raise _Invalid(f"truncated or corrupt: array '{key}' runs past the end of the file")
        for j in range(count):
            cur.take(cur.u64(f"length of '{key}'[{j}]"), f"'{key}'[{j}]")
    else:
        cur.take(count * struct.calcsize(_SCALAR_FORMATS[etype]), f"array '{key}'")


def _alignment(kv: dict[str, tuple[GGUFValueType, object]]) -> int:
    if "general.alignment" not in kv:
        return _DEFAULT_ALIGNMENT
    vtype, value = kv["general.alignment"]
    if vtype != GGUFValueType.UINT32 or value == 0 or value & (value - 1):
        raise _Invalid("general.alignment must be a uint32 power of two")
    return value


def _parse_tensor_info(cur: _Cursor, i: int) -> tuple[str, int, tuple[int, ...], int]:
    name = cur.string(f"name of tensor #{i}")
    if len(name.encode()) >= _GGML_MAX_NAME:
        raise _Invalid(f"tensor #{i} name is {len(name.encode())} bytes, llama.cpp allows {_GGML_MAX_NAME - 1}")
    n_dims = cur.u32(f"dimension count of {name}")
    if not 1 <= n_dims <= _GGML_MAX_DIMS:
        raise _Invalid(f"tensor {name} has {n_dims} dimensions")
    ne = tuple(cur.u64(f"shape of {name}") for _ in range(n_dims))
    ggml_type = cur.u32(f"type of {name}")
    offset = cur.u64(f"data offset of {name}")
    return name, ggml_type, tuple(reversed(ne)), offset


def _place_tensors(infos, data_start: int, alignment: int, file_size: int) -> list[_Tensor]:
    """Check dtypes, sizes and llama.cpp's data layout (each tensor at the running, aligned offset),
    and that all data lies inside the file."""
    tensors, names, expected = [], set(), 0
    for name, ggml_type, shape, offset in infos:
        if name in names:
            raise _Invalid(f"duplicate tensor {name}")
        names.add(name)
        if ggml_type not in _GGML_DTYPES:
            raise _Invalid(f"tensor {name} has dtype {_ggml_type_name(ggml_type)}; only F16/F32 are allowed")
        if min(shape) < 1:
            raise _Invalid(f"tensor {name} has an empty dimension {shape}")
        nbytes = math.prod(shape) * _GGML_DTYPES[ggml_type].itemsize
        if offset != expected:
            raise _Invalid(f"tensor {name} data is at offset {offset}, expected {expected}")
        if data_start + offset + nbytes > file_size:
            raise _Invalid(f"truncated: data of tensor {name} runs past the end of the file")
        tensors.append(_Tensor(name, ggml_type, shape, data_start + offset))
        expected = offset + -(-nbytes // alignment) * alignment
    return tensors


def _ggml_type_name(raw: int) -> str:
    try:
        return GGMLQuantizationType(raw).name
    except ValueError:
        return f"#{raw} (unknown)"


def _typed(kv, key: str, vtype: GGUFValueType, required: bool = False):
    """A scalar metadata value of exactly `vtype` (None if absent): llama.cpp aborts (GGML_ASSERT) when a key
    it reads has another type."""
    if key not in kv:
        if required:
            raise _Invalid(f"missing metadata '{key}'")
        return None
    actual, value = kv[key]
    if actual != vtype:
        raise _Invalid(f"metadata '{key}' has type {actual.name}, expected {vtype.name}")
    return value


def _value(kv, key: str):
    """A metadata value already type-checked by _check_kv, or None."""
    return kv[key][1] if key in kv else None


def _check_kv(kv, base: BaseSpec | None) -> tuple[float, dict[str, str]]:
    """Check the adapter's metadata against llama.cpp's loader and `base`; return alpha and our meta strings."""
    string, u32 = GGUFValueType.STRING, GGUFValueType.UINT32
    general_type = _typed(kv, KEY_GENERAL_TYPE, string, required=True)
    if general_type != GGUFType.ADAPTER:
        raise _Invalid(f"general.type is '{general_type}', not 'adapter' (is this a base model?)")
    adapter_type = _typed(kv, KEY_ADAPTER_TYPE, string, required=True)
    if adapter_type != "lora":
        raise _Invalid(f"adapter.type is '{adapter_type}', not 'lora'")
    rejected = next((k for k in kv if k.startswith(_REJECTED_KEY_PREFIXES)), None)
    if rejected:
        raise _Invalid(f"metadata '{rejected}' (aLoRA) is not supported")
    alpha = _typed(kv, KEY_ALPHA, GGUFValueType.FLOAT32, required=True)
    if not (math.isfinite(alpha) and alpha > 0):
        raise _Invalid(f"adapter.lora.alpha is {alpha}; it must be finite and > 0")
    _typed(kv, KEY_ARCH, string, required=True)
    for key in (KEY_BASE_SHA, KEY_BASE_NAME):
        _typed(kv, key, string)
    for key in (KEY_BASE_LAYERS, KEY_BASE_HEADS, KEY_RANK):
        _typed(kv, key, u32)
    if base is not None:
        _check_base(kv, base)
    meta = {k[len(META_PREFIX):]: _typed(kv, k, string) for k in kv if k.startswith(META_PREFIX)}
    return float(alpha), meta


def _check_base(kv, base: BaseSpec) -> None:
    arch = _value(kv, KEY_ARCH)
    if arch != base.arch:
        raise _Invalid(f"adapter is for architecture '{arch}', base model '{base.name}' is '{base.arch}'")
    sha = _value(kv, KEY_BASE_SHA)
    if sha is not None and sha != base.sha256:
        raise _Invalid(
            f"adapter was made for base model {_value(kv, KEY_BASE_NAME) or '?'} (sha {sha[:12]}…), "
            f"not {base.name} (sha {base.sha256[:12]}…)"
        )
    for key, want in ((KEY_BASE_LAYERS, base.n_layers), (KEY_BASE_HEADS, base.n_head)):
        got = _value(kv, key)
        if got is not None and got != want:
            raise _Invalid(f"metadata '{key}' is {got}, base model '{base.name}' has {want}")


def _collect_pairs(tensors: list[_Tensor]) -> dict[tuple[str, int], dict[str, _Tensor]]:
    """Group tensors into (module, layer) -> {"a": ..., "b": ...}; reject foreign names, half pairs, non-2-D."""
    if not tensors:
        raise _Invalid("adapter has no LoRA tensors")
    pairs: dict[tuple[str, int], dict[str, _Tensor]] = {}
    for t in tensors:
        m = _TENSOR_NAME.fullmatch(t.name)
        if not m:
            raise _Invalid(f"unexpected tensor '{t.name}' (only q/v lora_a/lora_b are allowed)")
        if len(t.shape) != 2:
            raise _Invalid(f"tensor {t.name} has shape {t.shape}; LoRA tensors are 2-D")
        pairs.setdefault((_MODULE_OF[m.group(2)], int(m.group(1))), {})[m.group(3)] = t
    half = next((k for k, p in pairs.items() if len(p) != 2), None)
    if half:
        module, layer = half
        raise _Invalid(f"layer {layer} {module} has only one of lora_a/lora_b")
    return pairs


def _build_weights(gguf: _Gguf, pairs, alpha: float, base: BaseSpec | None) -> LoraWeights:
    kv = gguf.kv
    shapes = _module_shapes(pairs, base)
    rank = _common_rank(pairs)
    n_layers = _n_layers(kv, pairs, base)
    if _value(kv, KEY_RANK) is not None:
        _check_complete(pairs, _value(kv, KEY_RANK), rank, n_layers)
    n_bytes = 4 * n_layers * rank * sum(n_in + n_out for n_in, n_out in shapes.values())
    if n_bytes > _MAX_FILE_BYTES:
        raise _Invalid(f"the LoRA would take {n_bytes} bytes in memory, more than the {_MAX_FILE_BYTES} we accept")
    a = {m: np.zeros((n_layers, rank, n_in), np.float32) for m, (n_in, _) in shapes.items()}
    b = {m: np.zeros((n_layers, n_out, rank), np.float32) for m, (_, n_out) in shapes.items()}
    for (module, layer), pair in pairs.items():
        a[module][layer] = _tensor_data(gguf, pair["a"])
        b[module][layer] = _tensor_data(gguf, pair["b"])
    if "q_proj" in b and _q_permuted_in_file(kv):
        b["q_proj"] = _unpermute_layers(b["q_proj"], base.n_head if base else _value(kv, KEY_BASE_HEADS))
    return LoraWeights(rank=rank, alpha=alpha, a=a, b=b)


def _n_layers(kv, pairs, base: BaseSpec | None) -> int:
    """The base's layer count; without a base, the one our files record, else the highest layer present."""
    n_layers = base.n_layers if base else _value(kv, KEY_BASE_LAYERS)
    if n_layers is None or (base is None and _value(kv, KEY_RANK) is None):
        n_layers = 1 + max(layer for _, layer in pairs)
    bad = next((layer for _, layer in pairs if layer >= n_layers), None)
    if bad is not None:
        raise _Invalid(f"tensor for layer {bad}, but the base model has {n_layers} layers")
    return n_layers


def _q_permuted_in_file(kv) -> bool:
    try:
        return q_is_permuted(_value(kv, KEY_ARCH))
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _unpermute_layers(b: np.ndarray, n_head: int | None) -> np.ndarray:
    """Undo llama.cpp's q row permutation on every layer of B (n_layers, out, r)."""
    if n_head is None:
        raise _Invalid("cannot undo the q row permutation without the head count: pass the base model")
    try:
        return np.ascontiguousarray(unpermute_q_rows(b.swapaxes(0, 1), n_head).swapaxes(0, 1))
    except ValueError as e:
        raise _Invalid(f"q lora_b: {e}") from None


def _common_rank(pairs) -> int:
    ranks = {p["a"].shape[0] for p in pairs.values()}
    if len(ranks) != 1:
        raise _Invalid(f"LoRA tensors have different ranks {sorted(ranks)}")
    return ranks.pop()


def _module_shapes(pairs, base: BaseSpec | None) -> dict[str, tuple[int, int]]:
    """(in, out) per module: the base's for all target modules, else the file's (consistent across layers)."""
    expected = base.module_shapes() if base else {}
    found: dict[str, tuple[int, int]] = {}
    for (module, layer), pair in sorted(pairs.items()):
        (r, n_in), (n_out, r_b) = pair["a"].shape, pair["b"].shape
        want = expected.get(module) or found.setdefault(module, (n_in, n_out))
        if (n_in, n_out) != want or r != r_b:
            raise _Invalid(
                f"layer {layer} {module}: lora_a {pair['a'].shape} / lora_b {pair['b'].shape} do not fit "
                f"in={want[0]}, out={want[1]} (want lora_a (r, in), lora_b (out, r))"
            )
    return expected or found


def _check_complete(pairs, ours_rank: int, rank: int, n_layers: int) -> None:
    """Our own files hold every layer of every target module with the recorded rank."""
    if ours_rank != rank:
        raise _Invalid(f"p2p.lora.rank is {ours_rank} but the tensors have rank {rank}")
    n_missing = len(TARGET_MODULES) * n_layers - len(pairs)
    if n_missing:
        module, layer = next((m, i) for i in range(n_layers) for m in TARGET_MODULES if (m, i) not in pairs)
        raise _Invalid(f"{n_missing} LoRA tensor pairs are missing, e.g. layer {layer} {module}")


def _tensor_data(gguf: _Gguf, t: _Tensor) -> np.ndarray:
    dtype = _GGML_DTYPES[t.ggml_type]
    arr = np.frombuffer(gguf.buf, dtype=dtype, count=math.prod(t.shape), offset=t.offset).reshape(t.shape)
    if not np.isfinite(arr).all():
        raise _Invalid(f"tensor {t.name} has NaN/Inf values")
    return arr.astype(np.float32)


