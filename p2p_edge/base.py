"""Facts about a base GGUF model that adapters and hypernets must agree with."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ModelFileError
from .fileio import atomic_write_text

SPEC_CACHE_NAME = "sha256.json"  # file hashes and specs, keyed by (path, size, mtime)


@dataclass(frozen=True)
class BaseSpec:
    arch: str            # general.architecture, e.g. "llama"
    n_layers: int
    hidden: int          # embedding_length = in-features of q_proj / v_proj
    n_head: int
    n_head_kv: int
    head_dim: int
    name: str
    sha256: str

    @property
    def q_out(self) -> int:
        return self.n_head * self.head_dim

    @property
    def v_out(self) -> int:
        return self.n_head_kv * self.head_dim

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each LoRA target module."""
        return {"q_proj": (self.hidden, self.q_out), "v_proj": (self.hidden, self.v_out)}

    def to_dict(self) -> dict:
        return asdict(self)


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def file_sha256(path: Path, cache: Path | None = None) -> str:
    """sha256 of a (large) model file, cached by (path, size, mtime) so repeated runs cost ~nothing."""
    path = Path(path)
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
            if key in known:
                return known[key]
        except (OSError, ValueError):
            known = {}
    else:
        known = {}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if cache is not None:
        known[key] = digest
        try:
            atomic_write_text(cache, json.dumps(known))
        except OSError:
            pass  # a cache we cannot write is only slower
    return digest


def _spec_cache_key(path: Path) -> str:
    st = path.stat()
    return f"spec|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def read_base_spec(path: Path, sha256_cache: Path | None = None) -> BaseSpec:
    """Architecture facts from a base model GGUF's metadata (no weights are loaded).

    gguf-py parses every metadata array (the 49k-entry tokenizer) to reach six scalars, ~2 s: the result is
    cached beside the file hash, keyed by (path, size, mtime), so only the first run per model pays it."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: base model file not found")
    if sha256_cache is not None and sha256_cache.is_file():
        try:
            return BaseSpec(**json.loads(json.loads(sha256_cache.read_text())[_spec_cache_key(path)]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    spec = _read_spec(path, sha256_cache)
    if sha256_cache is not None:
        try:
            known = json.loads(sha256_cache.read_text()) if sha256_cache.is_file() else {}
            known[_spec_cache_key(path)] = json.dumps(spec.to_dict())
            atomic_write_text(sha256_cache, json.dumps(known))
        except (OSError, ValueError):
            pass  # a cache we cannot write is only slower
    return spec


def base_spec(path: Path | None = None) -> BaseSpec:
    """read_base_spec of `path` (default: the bundled base model), cached in the project's cache dir: what every
    command uses, so the first one to read a model pays for it and the rest read the cache."""
    from .paths import cache_dir, default_base_model

    return read_base_spec(Path(path) if path else default_base_model(), cache_dir() / SPEC_CACHE_NAME)


def _read_spec(path: Path, sha256_cache: Path | None) -> BaseSpec:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path), "r")
    except Exception as e:  # gguf raises ValueError/struct errors on junk
        raise ModelFileError(f"{path}: not a readable GGUF file ({e})") from None
    arch = _field(reader, "general.architecture")
    if not arch:
        raise ModelFileError(f"{path}: GGUF has no general.architecture")
    n_layers = _field(reader, f"{arch}.block_count")
    hidden = _field(reader, f"{arch}.embedding_length")
    n_head = _field(reader, f"{arch}.attention.head_count")
    if None in (n_layers, hidden, n_head):
        raise ModelFileError(f"{path}: GGUF lacks block_count/embedding_length/head_count for arch '{arch}'")
    n_head_kv = _field(reader, f"{arch}.attention.head_count_kv", n_head)
    head_dim = _field(reader, f"{arch}.attention.key_length", hidden // n_head)
    name = _field(reader, "general.name", path.stem) or path.stem
    return BaseSpec(
        arch=str(arch), n_layers=int(n_layers), hidden=int(hidden), n_head=int(n_head),
        n_head_kv=int(n_head_kv), head_dim=int(head_dim), name=str(name),
        sha256=file_sha256(path, sha256_cache),
    )
