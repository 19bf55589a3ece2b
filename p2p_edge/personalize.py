"""history.jsonl -> profile -> hypernet -> adapter.gguf (+ profile.json), all on this machine.

Models (encoder, hypernet, base llama.cpp model) are loaded once into a `Client` and reused across users;
`personalize` then costs only the per-user stages, which are timed one by one.
"""

from __future__ import annotations

import fcntl
import os
import json
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from p2p_edge.gguf import write_adapter
from .base import file_sha256
from .errors import InputError, ModelFileError
from .fileio import atomic_write_text, ensure_private_dir, remove_temps
from .history import History, load_history
from .hypernet import Hypernet
from .paths import PROMPTS_DIR, data_dir
from .profile import PROFILE_FORMAT, EmbeddingCache, Profile, SummaryCache, build_profile, generate_summary, habits_text
from .token_prior import prior_path

RETRIEVAL_WINDOW = 256  # most recent items considered for retrieval: bounds latency for huge histories


@dataclass
class Result:
    adapter: Path
    profile_path: Path
    profile: Profile
    history: History
    timings_ms: dict[str, float]
    adapter_bytes: int
    token_prior: Path | None = None   # beside the adapter, when a token population table is installed


def user_dir(user: str) -> Path:
    return data_dir() / "users" / user


def user_id_for(history_path: Path) -> str:
    """Default user id: the history file's name without extensions, made filesystem-safe."""
    name = Path(history_path).name.split(".")[0] or "user"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]


def read_summary_arg(value: str) -> str:
    """--summary takes literal text or a path to a UTF-8 text file (a path-like value that is not a file is an
    error rather than a one-word summary: `--summary sumary.txt` must not silently become the summary)."""
    p = Path(value)
    try:
        is_file = p.is_file()
    except OSError:
        is_file = False
    looks_like_path = " " not in value.strip() and ("/" in value or p.suffix.lower() in (".txt", ".md", ".json"))
    if not is_file and looks_like_path:
        raise InputError(p, "summary file not found (give a file path or the summary text itself)")
    if is_file:
        try:
            text = p.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(p, f"cannot read summary file ({e.__class__.__name__}: {e})") from None
        if not text:
            raise InputError(p, "summary file is empty")
        return text
    if not value.strip():
        raise InputError("--summary", "summary text is empty")
    return value.strip()


@contextmanager
def output_lock(out_dir: Path):
    """Serialise concurrent runs that write the same output dir (a waiting run says so on stderr)."""
    ensure_private_dir(out_dir)
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting: another p2p-edge run is writing {out_dir}", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_history(path: Path) -> History:
    """Validate and load a history (the most recent RETRIEVAL_WINDOW items are kept; counts cover all)."""
    return load_history(path, keep_last=RETRIEVAL_WINDOW)


class Client:
    """The on-device models, loaded once: sentence encoder, hypernet, base llama.cpp model."""

    def __init__(self, *, hypernet_path: Path | None = None, base_model: Path | None = None,
                 encoder_dir: Path | None = None, threads: int | None = None, llm=None,
                 token_population: Path | None | bool = None):
        """token_population: the token prior's population table (default: the shipped one, if any; False: write no
        token prior)."""
        from .encoder import Encoder
        from .runtime import LocalLLM
        from .token_prior import DEFAULT_POPULATION, Population

        t = time.perf_counter()
        self.llm = llm or LocalLLM(base_model, n_threads=threads)
        self.base = self.llm.spec
        self.hypernet = Hypernet(hypernet_path, threads=threads)
        self.hypernet.card.check_base(self.base)
        self.encoder = Encoder(encoder_dir, threads=threads)
        self.hypernet.card.check_encoder(self.encoder.name, self.encoder.dim)
        self.population, self.population_sha256 = None, None
        if token_population is None:   # the shipped table, where one is installed
            token_population = DEFAULT_POPULATION if DEFAULT_POPULATION.is_file() else False
        if token_population is not False:   # a table given explicitly must exist: Population.load says so if not
            self.population = Population.load(Path(token_population))
            self.population.check_base(self.base.sha256, self.llm.llm.n_vocab(), token_population)
            self.population_sha256 = file_sha256(token_population)
        self.load_ms = (time.perf_counter() - t) * 1e3
        self.summaries = SummaryCache()
        self.embeddings = EmbeddingCache(self.encoder.card.get("onnx_sha256", self.encoder.name))
        self.prompt_template = (PROMPTS_DIR / "summary.txt").read_text(encoding="utf-8")

    def summarize(self, history: History) -> tuple[str, str]:
        """(summary, source): from the cache, or generated greedily by the local base model."""
        key = self.summaries.key(history.sha256, self.base.sha256, self.prompt_template)
        cached = self.summaries.get(key)
        if cached:
            return cached, "cache"
        text = generate_summary(self.llm, history.items, self.prompt_template)
        self.summaries.put(key, text, history.sha256)
        return text, "generated"

    def personalize(self, history: Path | str | History, out_dir: Path | None = None, *, user: str | None = None,
                    summary: str | None = None, no_summary: bool = False, top_k: int | None = None,
                    dtype: str = "f16", load_check: bool = True, read_ms: float | None = None) -> Result:
        """`history`: a path, or a History already validated by `read_history` (pass the time it took as read_ms).
        `out_dir` defaults to the user's folder in the data dir (as `p2p-edge personalize`): `user`, else the history
        file's name, names it."""
        if out_dir is None:
            if user is None and isinstance(history, History):
                raise ValueError("a History object needs out_dir or user (there is no file name to name the user)")
            out_dir = user_dir(user or user_id_for(Path(history)))
        if not isinstance(history, History):
            t = time.perf_counter()
            history = read_history(history)
            read_ms = (time.perf_counter() - t) * 1e3
        T = {"read": read_ms or 0.0}
        t1 = time.perf_counter()

        if no_summary:
            summ, source = None, "none"
        elif summary is not None:
            summ, source = summary, "given"
        else:
            summ, source = self.summarize(history)
        t2 = time.perf_counter()
        T["summary"] = (t2 - t1) * 1e3

        k = top_k if top_k is not None else self.hypernet.card.top_k
        encoder = self.embeddings.encoder_for(self.encoder, history.sha256)   # a warm run encodes nothing
        habits = habits_text(history.label_counts, history.rating_sum, history.rating_count)
        profile = build_profile(encoder, history.items, summary=summ, summary_source=source, top_k=k,
                                habits=habits, habits_weight=self.hypernet.card.habits_weight)
        t3 = time.perf_counter()
        T["encode"] = (t3 - t2) * 1e3

        lora = self.hypernet.generate(profile.embedding)
        t4 = time.perf_counter()
        T["hypernet"] = (t4 - t3) * 1e3

        out_dir = Path(out_dir)
        adapter_path = out_dir / "adapter.gguf"
        profile_path = out_dir / "profile.json"
        prior_file = prior_path(adapter_path)
        with output_lock(out_dir):
            remove_temps(out_dir, (adapter_path.name, profile_path.name, prior_file.name))  # left by a killed run
            write_adapter(adapter_path, lora, self.base, dtype=dtype, metadata={
                "hypernet": self.hypernet.card.id, "history_sha256": history.sha256, "profile_format": PROFILE_FORMAT,
                "chat_scale": f"{self.hypernet.card.chat_scale:g}",
            })
            t5 = time.perf_counter()
            T["write"] = (t5 - t4) * 1e3
            if load_check:  # prove llama.cpp accepts it, as chat will
                ad = self.llm.load_adapter(adapter_path)
                self.llm.free(ad)
            t6 = time.perf_counter()
            T["load"] = (t6 - t5) * 1e3
            prior = None
            if self.population is not None:   # the token prior: counted from every kept item, beside the adapter
                prior = self._stored_prior(prior_file, history.sha256)   # warm: the same history and table
                if prior is None:
                    prior = self.population.prior(history.items, self.llm.tokenize, history_sha256=history.sha256,
                                                  default_on=self.population.default_on,
                                                  population_sha256=self.population_sha256)
                    prior.save(prior_file)
            elif prior_file.exists():   # an older run's prior must not outlive this adapter
                prior_file.unlink()
            T["prior"] = (time.perf_counter() - t6) * 1e3
            T["total"] = sum(T.values())
            doc = self._profile_doc(history, profile, adapter_path, T, top_k=k)
            doc["token_prior"] = None if prior is None else {
                "path": str(prior_file), "distinct_tokens": len(prior), "n_tokens": prior.meta["n_tokens"],
                "beta": prior.meta["beta"], "population": prior.meta["population"], "default_on": prior.meta["default_on"]}
            atomic_write_text(profile_path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        return Result(adapter_path, profile_path, profile, history, T, adapter_path.stat().st_size,
                      prior_file if prior is not None else None)

    def _stored_prior(self, path: Path, history_sha256: str):
        """The prior already beside the adapter if it was made from this history with this population table (a
        warm run tokenizes nothing: counting a long history costs ~0.1-0.3 s); else None."""
        from .token_prior import TokenPrior

        if not path.is_file():
            return None
        try:
            prior = TokenPrior.load(path)
        except ModelFileError:
            return None   # damaged: made again
        same = (prior.meta.get("history_sha256") == history_sha256
                and prior.meta.get("population_sha256") == self.population_sha256)
        return prior if same else None

    def _profile_doc(self, history: History, profile: Profile, adapter_path: Path, T: dict, top_k: int) -> dict:
        card = self.hypernet.card
        return {
            "format": "p2p-edge-profile/1",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "p2p_edge_version": __version__,
            "adapter": str(adapter_path),
            "summary": profile.summary,
            "summary_source": profile.summary_source,
            "retrieved_ids": profile.retrieved_ids,
            "top_k": top_k,
            "profile_format": PROFILE_FORMAT,
            "habits_weight": card.habits_weight,
            "embedding_model": self.encoder.name,
            "hypernet": {"id": card.id, "path": str(self.hypernet.path), "rank": card.rank, "alpha": card.alpha},
            "base_model": {"id": card.base_model.get("id", self.base.name),  # check_base: same sha
                           "name": self.base.name, "path": str(self.llm.model_path), "sha256": self.base.sha256},
            "history": {"path": str(Path(history.path).resolve()) if history.path is not None else None,  # None: not a file
                        "sha256": history.sha256, "n_items": history.n_items,
                        "n_used": len(history.items)},
            "timings_ms": {k: round(v, 2) for k, v in T.items()},
            "models_load_ms": round(self.load_ms, 1),
        }


def check_hypernet_exists(path: Path | None) -> None:
    from .hypernet import DEFAULT_HYPERNET

    p = Path(path or DEFAULT_HYPERNET)
    if not p.is_file():
        raise ModelFileError(f"{p}: hypernet not found (pass --hypernet PATH, or reinstall p2p-edge for the shipped default)")


def forget_user(*, history: Path | None = None, user: str | None = None) -> list[str]:
    """Delete what p2p-edge wrote for a user: the per-user dir (adapter, profile) and the caches derived from
    the history (summary, item vectors). The history file itself is the user's and is never touched."""
    import shutil

    from .profile import EmbeddingCache, SummaryCache

    uid = user or user_id_for(history)
    shas = set()
    d = user_dir(uid)
    prof = d / "profile.json"
    if prof.is_file():
        try:
            shas.add(json.loads(prof.read_text(encoding="utf-8"))["history"]["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if history is not None:
        if not Path(history).is_file():
            raise InputError(history, "history file not found (use --user ID to forget by user id)")
        shas.add(file_sha256(history))  # the raw bytes' sha256, as History.sha256
    done = []
    if d.is_dir():
        shutil.rmtree(d)
        done.append(f"deleted {d}")
    n = 0
    for sha in shas:
        # any encoder id: the deletion covers every encoder's cache dir
        n += SummaryCache().delete_for_history(sha) + EmbeddingCache("").delete_for_history(sha)
    done.append(f"deleted {n} cached file(s)")
    if len(done) == 1 and n == 0:
        done = [f"nothing stored for user '{uid}'"]
    return done

