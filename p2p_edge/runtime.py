"""One llama.cpp model per process; LoRA adapters are loaded and swapped without reloading the base.

Uses llama-cpp-python's low-level adapter API (llama_adapter_lora_init / llama_set_adapters_lora):
the high-level `Llama(lora_path=...)` takes a single adapter at construction, turns mmap off, and
segfaults on a malformed adapter, so every adapter is checked by our own reader first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from p2p_edge.gguf import validate_adapter
from .base import BaseSpec, base_spec
from .errors import ModelFileError
from .paths import default_base_model


@dataclass
class LoadedAdapter:
    path: Path
    handle: object  # llama_adapter_lora_p
    load_ms: float


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@contextmanager
def _sigint_after_c_call():
    """Hold Ctrl-C (SIGINT) until a llama.cpp call returns, then raise KeyboardInterrupt. Without this, a SIGINT
    during model or adapter loading raises inside llama-cpp-python's log callback, where ctypes swallows it: the
    interrupt would be lost and the run would go on."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt


class LocalLLM:
    def __init__(self, model_path: Path | None = None, *, n_ctx: int = 2048, n_threads: int | None = None, seed: int = 0):
        import llama_cpp

        self._lc = llama_cpp
        self.model_path = Path(model_path or default_base_model())
        self.spec: BaseSpec = base_spec(self.model_path)
        threads = n_threads or default_threads()
        with _sigint_after_c_call():  # n_threads_batch too: llama-cpp-python's default is every core
            self.llm = llama_cpp.Llama(
                model_path=str(self.model_path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                seed=seed, verbose=False,
            )
        self.active: LoadedAdapter | None = None
        self.scale = 1.0
        self.prior = None          # a TokenPrior added to the logits at generation (p2p_edge.token_prior)
        self.prior_scale = 1.0
        self._loaded: list[LoadedAdapter] = []

    # -- adapters -----------------------------------------------------------------------------------
    def load_adapter(self, path: Path) -> LoadedAdapter:
        """Validate with our reader (shapes, dtypes, base sha), then hand the file to llama.cpp."""
        path = Path(path)
        validate_adapter(path, self.spec)
        t = time.perf_counter()
        with _sigint_after_c_call():
            handle = self._lc.llama_adapter_lora_init(self.llm.model, str(path).encode())
        if not handle:  # a NULL pointer is falsy but not None
            raise ModelFileError(f"{path}: llama.cpp refused the adapter")
        ad = LoadedAdapter(path, handle, (time.perf_counter() - t) * 1e3)
        self._loaded.append(ad)
        return ad

    def use(self, adapter: LoadedAdapter | None, scale: float = 1.0) -> None:
        """Make `adapter` the only active one (None = base model)."""
        if adapter is None:
            rc = self._lc.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
        else:
            arr = (self._lc.llama_adapter_lora_p_ctypes * 1)(adapter.handle)
            scales = (ctypes.c_float * 1)(scale)
            rc = self._lc.llama_set_adapters_lora(self.llm.ctx, arr, 1, scales)
        if rc != 0:
            raise ModelFileError(f"llama.cpp could not activate adapter (code {rc})")
        self.active, self.scale = adapter, scale
        self.llm.reset()  # else the cached KV state is reused and a swap is silently ignored

    def free(self, adapter: LoadedAdapter) -> None:
        if self.active is adapter:
            self.use(None)
        if adapter in self._loaded:
            self._loaded.remove(adapter)
            self._lc.llama_adapter_lora_free(adapter.handle)

    # -- the personal token prior ------------------------------------------------------------------------
    def set_prior(self, prior, scale: float = 1.0) -> None:
        """Add `prior` (a TokenPrior; None = none) times `scale` to the logits of everything generated from now on."""
        if prior is not None and prior.vocab != self.llm.n_vocab():
            raise ModelFileError(f"token prior is for a {prior.vocab}-token vocabulary; {self.spec.name} has "
                                 f"{self.llm.n_vocab()}")
        self.prior, self.prior_scale = prior, scale

    def logits_processors(self) -> list:
        """What generation adds to the logits: the token prior, if one is set at a non-zero scale."""
        return [self.prior.processor(self.prior_scale)] if self.prior is not None and self.prior_scale else []

    # -- inference ------------------------------------------------------------------------------------
    def chat_stream(self, messages: list[dict], *, max_tokens: int = 256, temperature: float = 0.7,
                    top_p: float = 0.9, seed: int | None = None, repeat_penalty: float = 1.1,
                    use_prior: bool = True) -> Iterator[str]:
        """Stream the assistant's reply (the model's own chat template) token by token."""
        processors = self.logits_processors() if use_prior else []
        for chunk in self.llm.create_chat_completion(
            messages=messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            stream=True, seed=seed, repeat_penalty=repeat_penalty, logits_processor=processors or None,
        ):
            delta = chunk["choices"][0].get("delta", {})
            if delta.get("content"):
                yield delta["content"]

    def chat(self, messages: list[dict], **kw) -> str:
        return "".join(self.chat_stream(messages, **kw))

    def complete(self, messages: list[dict], *, max_tokens: int = 64, repeat_penalty: float = 1.0) -> str:
        """Greedy answer (deterministic), for summaries and evaluation: never under the token prior (a summary or a
        task answer must not lean toward the words of whoever chatted last)."""
        return self.chat(messages, max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=0,
                         repeat_penalty=repeat_penalty, use_prior=False).strip()

    def tokenize(self, text: str) -> list[int]:
        """The base model's token ids of plain text (no BOS, special tokens as text)."""
        return _plain_tokens(self.llm, text)

    def last_logits(self, token_ids: list[int]) -> np.ndarray:
        """Logits after `token_ids`, from a clean KV state."""
        self.llm.reset()
        self.llm.eval(token_ids)
        # Llama.scores is only filled with logits_all=True (a 400 MB buffer): read the context's last row instead.
        ptr = self._lc.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).astype(np.float32, copy=True)


def vocab_tokenizer(model_path: Path | None = None):
    """(tokenize(text) -> ids, n_vocab) from the GGUF's vocabulary alone (no weights loaded): what LocalLLM.tokenize
    gives, for tools that need token counts without a model."""
    import llama_cpp

    with _sigint_after_c_call():
        llm = llama_cpp.Llama(model_path=str(Path(model_path or default_base_model())), vocab_only=True, verbose=False)
    return (lambda text: _plain_tokens(llm, text)), llm.n_vocab()


def _plain_tokens(llama, text: str) -> list[int]:
    """A llama_cpp.Llama's token ids of plain text: no BOS, and "<|im_end|>" written in a text is text."""
    return llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
