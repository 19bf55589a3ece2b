"""The server's one llama.cpp model, the adapters loaded into it (an LRU), and the one thread that uses them.

Every job that touches the model (a completion, a personalization, a deletion) runs on a single worker thread, in
arrival order: requests that share the model never interleave inside it, and the event loop (which answers
/health) never waits for one. Each generation starts with `LocalLLM.use`, which sets the request's adapter and
clears the KV cache, so no request sees another's prompt cache and a user's greedy reply does not depend on what
ran before it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ModelFileError
from ..paths import DEFAULT_BASE_ID, data_dir, default_base_model
from ..personalize import user_dir
from ..token_prior import active_prior
from .metrics import Metrics
from .schemas import USER_ID, ApiError

ADAPTER_FILE = "adapter.gguf"


def base_model_id(path: Path) -> str:
    """The bundled model's id, else the GGUF's file name (as training names a custom base)."""
    try:
        if Path(path).resolve() == default_base_model().resolve():
            return DEFAULT_BASE_ID
    except (OSError, ModelFileError):
        pass
    return Path(path).name


def adapter_path(user: str) -> Path:
    return user_dir(user) / ADAPTER_FILE


def stored_users() -> list[str]:
    """Users with an adapter in the data dir (dirs whose names are not valid user ids are skipped)."""
    root = data_dir() / "users"
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [u for u in names if USER_ID.fullmatch(u) and ".." not in u and (root / u / ADAPTER_FILE).is_file()]


_SHAS: dict[str, tuple[tuple, str]] = {}  # path -> ((inode, size, mtime), sha256): a listing re-hashes nothing
_SHAS_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of an adapter file, remembered while the file is unchanged."""
    st = os.stat(path)
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _SHAS_LOCK:
        known = _SHAS.get(str(path))
    if known is not None and known[0] == stamp:
        return known[1]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    with _SHAS_LOCK:
        _SHAS[str(path)] = (stamp, h.hexdigest())
    return h.hexdigest()


@dataclass
class _Loaded:
    adapter: object  # runtime.LoadedAdapter
    scale: float     # the adapter's own chat_scale
    stamp: tuple     # (inode, size, mtime) of the files it was loaded from: the adapter's, the token prior's
    prior: object = None   # token_prior.TokenPrior beside the adapter (None: none stored for this history)


@dataclass(eq=False)  # hashed by identity: the engine keeps the running ones in a set
class Generation:
    """One completion request, as the worker runs it. `emit(kind, value)` is called on the worker thread with
    ("text", str), then ("end", (finish_reason, prompt_tokens, completion_tokens)), or ("error", exception)."""

    user: str | None
    scale: float | None
    chat: list[dict] | None          # chat messages, or
    prompt: str | None               # a completion prompt
    params: dict
    emit: Callable[[str, object], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    prior: bool | None = None   # the user's token prior: None = as stored (its table's default_on), False = off


class _TokenCount:
    """A logits processor that counts sampled tokens, learns the prompt's length, and ends a cancelled
    generation (only the end-of-turn token is left possible)."""

    def __init__(self, cancelled: threading.Event, eos: int):
        self.cancelled, self.eos = cancelled, eos
        self.prompt = 0
        self.sampled = 0

    def __call__(self, input_ids, scores):
        if self.sampled == 0:
            self.prompt = len(input_ids)
        self.sampled += 1
        if self.cancelled.is_set():
            scores[:] = -np.inf
            scores[self.eos] = 0.0
        return scores


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Engine:
    def __init__(self, *, base_model: Path | None = None, hypernet: Path | None = None, threads: int | None = None,
                 max_loaded: int = 64, metrics: Metrics | None = None, llm=None, need_hypernet: bool = False):
        from ..runtime import LocalLLM

        self.metrics = metrics or Metrics()
        self.llm = llm or LocalLLM(base_model, n_threads=threads)
        self.base_id = base_model_id(self.llm.model_path)
        self.max_loaded = max(1, int(max_loaded))
        self._cache: OrderedDict[str, _Loaded] = OrderedDict()  # touched on the worker thread only
        self._loaded_names: frozenset[str] = frozenset()  # its keys, for other threads (replaced, never mutated)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2p-edge-model")
        self._depth = 0
        self._depth_lock = threading.Lock()
        self._live: set[Generation] = set()
        self.client, self.client_error = None, None
        try:
            from ..personalize import Client, check_hypernet_exists

            check_hypernet_exists(hypernet)
            self.client = Client(hypernet_path=hypernet, llm=self.llm, threads=threads)
        except ModelFileError as e:
            if need_hypernet:
                raise
            self.client_error = str(e)
        self.metrics.gauge("adapters_loaded", lambda: len(self._loaded_names))
        self.metrics.gauge("queue_depth", lambda: self._depth)

    # -- the worker thread ---------------------------------------------------------------------------------
    def submit(self, fn, *args) -> Future:
        """Run fn(*args) on the model's thread, after every job submitted before it."""
        with self._depth_lock:
            self._depth += 1

        def run():
            try:
                return fn(*args)
            finally:
                with self._depth_lock:
                    self._depth -= 1

        return self._pool.submit(run)

    def close(self) -> None:
        for g in list(self._live):
            g.cancelled.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- adapters (worker thread) ----------------------------------------------------------------------------
    def _drop(self, user: str) -> None:
        entry = self._cache.pop(user, None)
        if entry is not None:
            self._loaded_names = frozenset(self._cache)
            self.llm.free(entry.adapter)

    def _load(self, user: str) -> _Loaded:
        from ..chat import adapter_meta, adapter_scale, personal_prior
        from ..token_prior import prior_path

        path = adapter_path(user)
        try:
            st = path.stat()
        except OSError:
            self._drop(user)
            raise ApiError(404, f"model 'p2p/{user}' does not exist: no adapter stored for user '{user}' "
                                "(create it with POST /v1/adapters)", "model_not_found", "model") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, _stamp(prior_path(path)))
        entry = self._cache.get(user)
        if entry is not None and entry.stamp == stamp:
            self._cache.move_to_end(user)
            self.metrics.inc("adapter_cache_hits_total")
            return entry
        self._drop(user)  # changed on disk since it was loaded (e.g. `p2p-edge personalize --user` ran)
        self.metrics.inc("adapter_cache_misses_total")
        while len(self._cache) >= self.max_loaded:
            oldest = next(iter(self._cache))
            self._drop(oldest)
            self.metrics.inc("adapter_cache_evictions_total")
        adapter = self.llm.load_adapter(path)
        try:
            meta = adapter_meta(path)
            scale, prior = adapter_scale(path, meta), personal_prior(path, meta)
        except Exception:
            self.llm.free(adapter)
            raise
        entry = self._cache[user] = _Loaded(adapter, scale, stamp, prior)
        self._loaded_names = frozenset(self._cache)
        return entry

    def activate(self, user: str | None, scale: float | None, prior: bool | None = None) -> None:
        """Make `user`'s adapter (None = the base model) and, unless `prior` is False, their token prior (by
        default only if its table says default_on; True: whenever one is stored) the ones generation runs under."""
        t = time.perf_counter()
        if user is None:
            self.llm.use(None)
            self.llm.set_prior(None)
        else:
            entry = self._load(user)
            self.llm.use(entry.adapter, entry.scale if scale is None else scale)
            self.llm.set_prior(active_prior(entry.prior, prior))
        self.metrics.observe("adapter_swap_ms", (time.perf_counter() - t) * 1e3)

    def loaded_users(self) -> frozenset[str]:
        """Safe from any thread."""
        return self._loaded_names

    # -- generation (worker thread) ---------------------------------------------------------------------------
    def generate(self, g: Generation) -> None:
        try:
            self._live.add(g)
            if g.cancelled.is_set():  # the client left while the job waited
                return
            self.activate(g.user, g.scale, g.prior)
            counter = _TokenCount(g.cancelled, self.llm.llm.token_eos())
            p = dict(g.params)
            seed = p.pop("seed", None)
            p["seed"] = secrets.randbelow(2**32 - 1) if seed is None else seed % (2**32 - 1)  # 2^32-1 = "random"
            processors = [*self.llm.logits_processors(), counter]   # the counter last: a cancel must win
            if g.chat is not None:
                stream = self.llm.llm.create_chat_completion(g.chat, stream=True, logits_processor=processors, **p)
            else:
                stream = self.llm.llm.create_completion(g.prompt, stream=True, logits_processor=processors, **p)
            finish = None
            try:
                for chunk in stream:
                    choice = chunk["choices"][0]
                    text = choice.get("delta", {}).get("content") if g.chat is not None else choice.get("text")
                    if text:
                        g.emit("text", text)
                    finish = choice.get("finish_reason") or finish
            except ValueError as e:  # llama-cpp-python: "Requested tokens (N) exceed context window of M"
                if "exceed context window" not in str(e):
                    raise
                raise ApiError(422, f"the prompt does not fit the model's context window ({e})",
                               "context_length_exceeded", "messages" if g.chat is not None else "prompt") from None
            finish = finish or "stop"
            completion = max(0, counter.sampled - (1 if finish == "stop" else 0))  # the end-of-turn/stop token
            self.metrics.inc("generated_tokens_total", completion)
            self.metrics.inc("prompt_tokens_total", counter.prompt)
            g.emit("end", (finish, counter.prompt, completion))
        except Exception as e:  # handed to the request: it answers with an error, the worker goes on
            g.emit("error", e)
        finally:
            self._live.discard(g)

    # -- users' adapters (worker thread) -----------------------------------------------------------------------
    def personalize(self, user: str, history, *, summary: str | None, no_summary: bool, top_k: int | None,
                    dtype: str, read_ms: float) -> dict:
        if self.client is None:
            raise ApiError(503, f"personalization is unavailable on this server: {self.client_error}",
                           "personalization_unavailable")
        t = time.perf_counter()
        self.llm.use(None)  # the summary is the base model's, whatever adapter the last request left active
        res = self.client.personalize(history, user_dir(user), summary=summary, no_summary=no_summary, top_k=top_k,
                                      dtype=dtype, read_ms=read_ms)
        self.metrics.observe("personalize_ms", (time.perf_counter() - t) * 1e3 + read_ms)
        self.metrics.inc("adapters_created_total")
        self._drop(user)  # the next request loads the new adapter
        return {
            "id": f"p2p/{user}", "object": "adapter", "user": user, "sha256": file_sha256(res.adapter),
            "bytes": res.adapter_bytes, "n_items": res.history.n_items, "summary_source": res.profile.summary_source,
            "retrieved_ids": res.profile.retrieved_ids,
            "timings_ms": {k: round(v, 2) for k, v in res.timings_ms.items()},
        }

    def forget(self, user: str) -> list[str]:
        from ..personalize import forget_user

        if not user_dir(user).is_dir():
            raise ApiError(404, f"no adapter stored for user '{user}'", "user_not_found", "user")
        self._drop(user)
        return forget_user(user=user)
