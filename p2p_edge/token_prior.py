"""The personal token prior: a logit bias, built by one fixed rule from the history's own token counts, that runs
beside the personal adapter at generation (chat, serve). Torch-free.

Why a rule and not the hypernet: five trained probes could not make a held-out user's own adapter beat another
user's on their unseen texts (bench/results/fit_gap*_val.md), while the history's token counts, applied as
beta * log(p_user / p_pop), separate them (bench/results/lexical_probe_val.md). It is the classic on-device personal
language model (a unigram cache, as keyboards keep), so it is measured as such, beside the adapter
(bench/results/reading_rules/decision_rule_token_prior.txt).

    bias(t) = beta * log(1 + c_t / (mu * p_pop(t)))

c_t: the token's count in the history's items (title and text, the base model's tokenizer); p_pop: the pooled
counts of the training users (the shipped population table); mu: Dirichlet smoothing. This is beta * log(p_user /
p_pop) with p_user = (c + mu p_pop) / (n + mu), up to a constant that softmax ignores, and it is zero on every
token the history never used, so a user's prior is sparse and an empty history has none.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import ModelFileError
from .fileio import atomic_write_bytes
from .lexical import token_counts
from .paths import ASSETS_DIR

POPULATION_FORMAT = "p2p-edge-token-population/1"
PRIOR_FORMAT = "p2p-edge-token-prior/1"
PRIOR_FILE = "token_prior.npz"   # beside the user's adapter.gguf
DEFAULT_POPULATION = ASSETS_DIR / "token_population.npz"


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _read_npz(path: Path, fmt: str, keys: Sequence[str]) -> tuple[dict, dict]:
    """(arrays, meta) of a file we wrote; a missing, corrupt or foreign file is a one-line ModelFileError."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: token prior file not found") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: not a readable token prior file ({e.__class__.__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise ModelFileError(f"{path}: not a {fmt} file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ModelFileError(f"{path}: token prior file lacks {', '.join(missing)}")
    return arrays, meta


# ------------------------------------------------------------------------------------------- a user's prior
@dataclass
class TokenPrior:
    """One user's sparse logit bias: `values[i]` is added to token `ids[i]`'s logit (times a scale)."""

    ids: np.ndarray       # int32, sorted, unique, < vocab
    values: np.ndarray    # float32, > 0
    vocab: int
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def dense(self, scale: float = 1.0) -> np.ndarray:
        out = np.zeros(self.vocab, np.float32)
        out[self.ids] = self.values * scale
        return out

    def processor(self, scale: float = 1.0) -> Callable:
        """A llama-cpp-python logits processor (input_ids, scores) -> scores that adds the bias."""
        ids, vals = self.ids, (self.values * scale).astype(np.float32)

        def add_bias(input_ids, scores):
            # called from inside llama.cpp's sampler (an exception would be lost there): the vocabulary is checked
            # when the prior is set (LocalLLM.set_prior), and a short array is left alone rather than indexed past
            if scores.shape[-1] == self.vocab:
                scores[ids] += vals
            return scores

        return add_bias

    def save(self, path: Path) -> Path:
        """Atomically, mode 0600 (it is derived from the user's own texts)."""
        meta = {**self.meta, "format": PRIOR_FORMAT, "vocab": self.vocab}
        return atomic_write_bytes(Path(path), _npz_bytes(ids=self.ids.astype(np.int32),
                                                         values=self.values.astype(np.float32),
                                                         meta=np.array(json.dumps(meta))))

    @classmethod
    def load(cls, path: Path) -> "TokenPrior":
        arrays, meta = _read_npz(Path(path), PRIOR_FORMAT, ("ids", "values"))
        ids, values, vocab = arrays["ids"], arrays["values"], meta.get("vocab")
        ok = (isinstance(vocab, int) and ids.ndim == 1 and ids.shape == values.shape
              and np.issubdtype(ids.dtype, np.integer) and np.issubdtype(values.dtype, np.floating)
              and (len(ids) == 0 or (ids.min() >= 0 and ids.max() < vocab and np.all(np.diff(ids) > 0)))
              and np.all(np.isfinite(values)))
        if not ok:
            raise ModelFileError(f"{path}: token prior arrays are malformed (ids, values or vocab)")
        return cls(ids.astype(np.int32), values.astype(np.float32), vocab, meta)


# ----------------------------------------------------------------------------------------- the population
@dataclass
class Population:
    """The shared side of the rule: the training users' token distribution, beta and mu."""

    p: np.ndarray          # (vocab,) float64, > 0, sums to 1
    beta: float
    mu: float
    meta: dict = field(default_factory=dict)

    @property
    def vocab(self) -> int:
        return len(self.p)

    @property
    def default_on(self) -> bool:
        return bool(self.meta.get("default_on", False))

    @classmethod
    def from_counts(cls, counts: np.ndarray, *, beta: float, mu: float, meta: dict | None = None) -> "Population":
        """Pooled counts (vocab,) -> p_pop, with 0.5 added to every token so that every token is possible."""
        pooled = np.asarray(counts, np.float64) + 0.5
        return cls(pooled / pooled.sum(), float(beta), float(mu), dict(meta or {}))

    def bias_values(self, counts: np.ndarray) -> np.ndarray:
        """The dense bias (vocab,) of a user's token counts, at this population's beta."""
        c = np.asarray(counts, np.float64)
        return (self.beta * np.log1p(c / (self.mu * self.p))).astype(np.float32)

    def prior(self, items: Iterable[Any], tokenize: Callable[[str], list[int]], **meta) -> TokenPrior:
        """A user's prior from their history items (dicts or objects with title/text)."""
        counts = token_counts(list(items), tokenize, self.vocab)
        ids = np.flatnonzero(counts).astype(np.int32)
        vals = self.bias_values(counts)[ids]
        return TokenPrior(ids, vals, self.vocab, {"beta": self.beta, "mu": self.mu, "n_tokens": int(counts.sum()),
                                                   "population": self.meta.get("id", ""), **meta})

    def save(self, path: Path) -> Path:
        meta = {**self.meta, "format": POPULATION_FORMAT, "beta": self.beta, "mu": self.mu, "vocab": self.vocab}
        return atomic_write_bytes(Path(path), _npz_bytes(p=self.p.astype(np.float64), meta=np.array(json.dumps(meta))))

    @classmethod
    def load(cls, path: Path) -> "Population":
        arrays, meta = _read_npz(Path(path), POPULATION_FORMAT, ("p",))
        p = arrays["p"]
        beta, mu = meta.get("beta"), meta.get("mu")
        ok = (p.ndim == 1 and len(p) > 0 and np.issubdtype(p.dtype, np.floating) and np.all(p > 0)
              and abs(float(p.sum()) - 1.0) < 1e-6 and isinstance(beta, (int, float)) and beta >= 0
              and isinstance(mu, (int, float)) and mu > 0)
        if not ok:
            raise ModelFileError(f"{path}: token population table is malformed (p, beta or mu)")
        return cls(p.astype(np.float64), float(beta), float(mu), meta)

    def check_base(self, base_sha256: str, n_vocab: int, path: Path | str = "token population") -> None:
        """The table is indexed by the base model's token ids: refuse another base model's."""
        want = self.meta.get("base_sha256")
        if n_vocab != self.vocab or (want and want != base_sha256):
            raise ModelFileError(f"{path}: token population was built for another base model "
                                 f"(vocab {self.vocab}, sha256 {str(want)[:12]}…; this one: vocab {n_vocab}, "
                                 f"sha256 {base_sha256[:12]}…)")


def active_prior(prior: TokenPrior | None, on: bool | None) -> TokenPrior | None:
    """`prior` if generation should run under it: `on` as asked, or with None as its table said (default_on)."""
    if prior is None:
        return None
    return prior if (on if on is not None else bool(prior.meta.get("default_on"))) else None


def prior_path(adapter: Path) -> Path:
    return Path(adapter).parent / PRIOR_FILE


def prior_for_adapter(adapter: Path, history_sha256: str | None) -> TokenPrior | None:
    """The prior stored beside an adapter, if it was built from the same history as the adapter (else None: a
    prior of another history must never ride along with this adapter)."""
    path = prior_path(adapter)
    if not path.is_file():
        return None
    prior = TokenPrior.load(path)
    if not history_sha256 or prior.meta.get("history_sha256") != history_sha256:
        return None
    return prior
