"""The profile format (summary + Example lines), retrieval, the summary prompt budget, and the private caches."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLE_HISTORY
from p2p_edge import profile as P
from p2p_edge.history import HistoryItem, load_history
from p2p_edge.profile import (
    EmbeddingCache,
    SummaryCache,
    build_profile,
    generate_summary,
    item_text,
    profile_text,
    retrieve,
    summary_prompt,
)


def item(text="did a thing", n=1, **kw) -> HistoryItem:
    return HistoryItem(text=text, id=kw.pop("id", f"i{n}"), line=n, **kw)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


class FakeEncoder:
    """Deterministic pseudo-embeddings from a hash of the text; records every call."""

    dim = 8

    def __init__(self):
        self.calls: list[list[str]] = []

    def vec(self, t: str) -> np.ndarray:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little"))
        v = rng.standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.stack([self.vec(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


# ------------------------------------------------------------------------------------------------ item_text


def test_item_text_plain():
    assert item_text(item("Week two of the starter.")) == "Week two of the starter."


def test_item_text_title_rating_label():
    it = item("Holds tune well.", title="Sturdy capo", rating=4.0, label="music")
    assert item_text(it) == "Sturdy capo: Holds tune well. (rated 4, category music)"


@pytest.mark.parametrize("rating, shown", [(4.5, "rated 4.5"), (0.0, "rated 0"), (-1.0, "rated -1"), (5, "rated 5")])
def test_item_text_rating_formats(rating, shown):
    assert item_text(item("x", rating=rating)) == f"x ({shown})"


def test_item_text_label_only():
    assert item_text(item("x", label="cooking")) == "x (category cooking)"


def test_item_text_prompt_output_pair():
    it = item("A plain 8-inch chef's knife.", prompt="Best first knife?", output="A plain 8-inch chef's knife.")
    assert item_text(it) == "Q: Best first knife? A: A plain 8-inch chef's knife."


def test_item_text_prompt_without_output_is_not_shown_as_a_question():
    assert item_text({"text": "t", "prompt": "p"}) == "t"


def test_item_text_accepts_dicts_like_items():
    d = {"text": "Holds tune well.", "title": "Sturdy capo", "rating": 4, "label": "music"}
    assert item_text(d) == item_text(item("Holds tune well.", title="Sturdy capo", rating=4.0, label="music"))


def test_item_text_collapses_whitespace():
    assert item_text(item("  a\n\n b\tc  ", title=" T\nx ")) == "T x: a b c"


def test_item_text_clipping():
    it = item("w" * 1000, title="T" * 200, label="L" * 100)
    out = item_text(it)
    title, rest = out.split(": ", 1)
    assert title == "T" * 79 + "…"  # title <= 80 chars
    text = rest.split(" (category ")[0]
    assert len(text) == P.ITEM_CHARS and text.endswith("…") and text[:-1] == "w" * (P.ITEM_CHARS - 1)
    assert out.endswith(f"(category {'L' * 39}…)")
    assert len(item_text(it, max_chars=50).split(": ", 1)[1].split(" (")[0]) == 50


def test_item_text_exactly_at_the_limit_is_not_clipped():
    assert item_text(item("x" * P.ITEM_CHARS)) == "x" * P.ITEM_CHARS


# --------------------------------------------------------------------------------------------- profile_text


def test_profile_text_summary_and_examples():
    items = [item("first", 1, rating=3.0), item("second", 2, label="music")]
    assert profile_text("Likes   guitars\nand bread.", items) == (
        "About this user: Likes guitars and bread.\n"
        "Example 1: first (rated 3)\n"
        "Example 2: second (category music)"
    )


def test_profile_text_without_summary():
    assert profile_text(None, [item("only")]) == "Example 1: only"
    assert profile_text("", [item("only")]) == "Example 1: only"


def test_profile_text_empty():
    assert profile_text(None, []) == "About this user: (no history)"


def test_profile_text_clips_summary():
    out = profile_text("s" * 2000, [item("x")])
    first, second = out.split("\n")
    assert first == "About this user: " + "s" * (P.SUMMARY_CHARS - 1) + "…"
    assert second == "Example 1: x"


def test_profile_text_clips_each_example():
    out = profile_text(None, [item("y" * 2000), item("z" * 2000, 2)])
    lines = out.split("\n")
    assert [len(l) for l in lines] == [len("Example 1: ") + P.ITEM_CHARS] * 2


# ------------------------------------------------------------------------------------------------- retrieve


def _vecs(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q[:n].astype(np.float32)  # orthonormal rows


def test_retrieve_top_k_by_cosine_in_chronological_order():
    v = _vecs(6)
    query = 0.9 * v[4] + 0.4 * v[1] + 0.1 * v[2]
    assert retrieve(query, v, 2) == [1, 4]  # 4 scores highest, but the result is in file order
    assert retrieve(query, v, 3) == [1, 2, 4]
    assert retrieve(query, v, 1) == [4]


def test_retrieve_uses_similarity_not_position():
    v = _vecs(6)
    assert retrieve(v[0], v, 1) == [0]
    assert retrieve(-v[5] + 2 * v[0], v, 1) == [0]


def test_retrieve_k_larger_than_n():
    v = _vecs(3)
    assert retrieve(v[0], v, 10) == [0, 1, 2]
    assert retrieve(None, v, 10) == [0, 1, 2]


@pytest.mark.parametrize("k", [0, -1])
def test_retrieve_k_zero(k):
    v = _vecs(4)
    assert retrieve(v[0], v, k) == [] and retrieve(None, v, k) == []


def test_retrieve_without_query_takes_the_most_recent():
    v = _vecs(6)
    assert retrieve(None, v, 2) == [4, 5]
    assert retrieve(None, v, 1) == [5]


def test_retrieve_no_items():
    assert retrieve(np.ones(4, np.float32), np.zeros((0, 4), np.float32), 3) == []
    assert retrieve(None, np.zeros((0, 4), np.float32), 3) == []


def test_retrieve_returns_python_ints():
    assert all(type(i) is int for i in retrieve(_vecs(4)[0], _vecs(4), 3))


# ------------------------------------------------------------------------------------------- summary_prompt


TEMPLATE = "BEGIN\n{items}\nEND"


def _items_block(prompt: str) -> list[str]:
    assert prompt.startswith("BEGIN\n") and prompt.endswith("\nEND")
    return prompt[len("BEGIN\n"):-len("\nEND")].split("\n")


def test_summary_prompt_small_history_keeps_everything_in_order():
    items = [item(f"note {i}", i) for i in range(1, 4)]
    assert _items_block(summary_prompt(items, TEMPLATE)) == ["- note 1", "- note 2", "- note 3"]


def test_summary_prompt_budget_keeps_the_most_recent():
    items = [item(f"item-{i:02d} " + "x" * 150, i) for i in range(40)]
    lines = _items_block(summary_prompt(items, TEMPLATE))
    kept = [int(l[len("- item-"):][:2]) for l in lines]
    assert kept == list(range(40 - len(kept), 40))           # a contiguous run of the newest, oldest first
    assert 1 < len(kept) < 40                                  # the oldest were dropped
    assert len("\n".join(lines)) <= P.SUMMARY_PROMPT_CHARS     # inside the budget
    # ...and the budget is used: the next older item would not have fit
    older = "- " + item_text(items[40 - len(kept) - 1], P.SUMMARY_ITEM_CHARS)
    assert len("\n".join([older] + lines)) > P.SUMMARY_PROMPT_CHARS


def test_summary_prompt_items_are_clipped():
    lines = _items_block(summary_prompt([item("z" * 5000)], TEMPLATE))
    assert lines == ["- " + "z" * (P.SUMMARY_ITEM_CHARS - 1) + "…"]


def test_summary_prompt_default_template_is_the_shipped_prompt():
    items = [item("Gerald the starter", 1, label="cooking")]
    out = summary_prompt(items)
    template = (P.PROMPTS_DIR / "summary.txt").read_text(encoding="utf-8")
    assert "{items}" in template and "{items}" not in out
    assert out == template.replace("{items}", "- Gerald the starter (category cooking)")


def test_generate_summary_uses_the_base_model_greedily():
    class FakeLLM:
        def __init__(self):
            self.log = []

        def use(self, adapter):
            self.log.append(("use", adapter))

        def complete(self, messages, max_tokens, repeat_penalty):
            self.log.append(("complete", messages, max_tokens, repeat_penalty))
            return "  Likes\n guitars   and bread.  "

    llm = FakeLLM()
    items = [item("a", 1), item("b", 2)]
    assert generate_summary(llm, items, TEMPLATE) == "Likes guitars and bread."
    assert llm.log[0] == ("use", None)  # summaries always come from the plain base model
    _, messages, max_tokens, _ = llm.log[1]
    assert messages == [{"role": "user", "content": summary_prompt(items, TEMPLATE)}]
    assert max_tokens == P.SUMMARY_MAX_TOKENS


def test_generate_summary_never_empty():
    class Silent:
        def use(self, a):
            pass

        def complete(self, *a, **k):
            return "   "

    assert generate_summary(Silent(), [item("a")], TEMPLATE) == "(no summary)"


# ---------------------------------------------------------------------------------------------- build_profile


def test_build_profile_queries_with_the_summary():
    enc = FakeEncoder()
    items = [item(f"t{i}", i, id=f"id{i}") for i in range(5)]
    texts = [item_text(it) for it in items]
    # make the summary's vector equal to item 1's, so retrieval must pick it
    enc.vec = (lambda orig: (lambda t: orig(texts[1]) if t == "SUMMARY" else orig(t)))(enc.vec)
    prof = build_profile(enc, items, summary="SUMMARY", summary_source="given", top_k=1)
    assert prof.retrieved_ids == ["id1"]
    assert prof.text == profile_text("SUMMARY", [items[1]])
    np.testing.assert_allclose(prof.embedding, enc.vec(prof.text))
    assert enc.calls == [texts, ["SUMMARY"], [prof.text]]


def test_build_profile_with_precomputed_vectors_and_no_summary():
    enc = FakeEncoder()
    items = [item(f"t{i}", i, id=f"id{i}") for i in range(5)]
    vecs = np.stack([enc.vec(item_text(it)) for it in items])
    prof = build_profile(enc, items, summary=None, summary_source="none", top_k=2, item_vecs=vecs)
    assert prof.retrieved_ids == ["id3", "id4"]  # no query -> most recent
    assert enc.calls == [[prof.text]]            # the item vectors were not encoded again
    assert prof.summary is None and prof.summary_source == "none"


def test_build_profile_through_the_cache_encodes_nothing_the_second_time(tmp_path):
    enc = FakeEncoder()
    items = [item(f"t{i}", i, id=f"id{i}") for i in range(5)]
    cache = P.EmbeddingCache("fake", root=tmp_path)
    kw = dict(summary="SUMMARY", summary_source="cache", top_k=2, habits="average rating 3.0", habits_weight=0.5)
    first = build_profile(cache.encoder_for(enc, "h" * 64), items, **kw)
    assert enc.calls == [[item_text(it) for it in items], ["SUMMARY"], [first.text], [P.habits_line(kw["habits"])]]
    enc.calls.clear()
    again = build_profile(cache.encoder_for(enc, "h" * 64), items, **kw)
    assert enc.calls == []                          # items, summary, profile text and habits line all cached
    assert again.text == first.text and again.retrieved_ids == first.retrieved_ids
    np.testing.assert_allclose(again.embedding, first.embedding, rtol=1e-6)
    build_profile(cache.encoder_for(enc, "k" * 64), items, **kw)   # another history: its own file
    assert len(enc.calls) == 4


def test_build_profile_real_encoder_retrieves_by_meaning(encoder_dir):
    from p2p_edge.encoder import Encoder

    hist = load_history(EXAMPLE_HISTORY)
    enc = Encoder(encoder_dir, threads=1)
    prof = build_profile(enc, hist.items, summary="Bakes sourdough bread and keeps a starter named Gerald.",
                         summary_source="given", top_k=2)
    by_id = {it.id: it for it in hist.items}
    assert len(prof.retrieved_ids) == 2
    assert all(by_id[i].label == "cooking" for i in prof.retrieved_ids)
    assert any("Gerald" in by_id[i].text for i in prof.retrieved_ids)
    lines = [by_id[i].line for i in prof.retrieved_ids]
    assert lines == sorted(lines)
    assert prof.embedding.shape == (384,) and abs(np.linalg.norm(prof.embedding) - 1) < 1e-5


# ------------------------------------------------------------------------------------------------ SummaryCache


def test_summary_cache_round_trip_and_privacy(tmp_path):
    c = SummaryCache(tmp_path)
    k = c.key("h" * 64, "m" * 64, "prompt {items}")
    assert c.get(k) is None
    c.put(k, "Likes guitars — and Gerald ☕", "h" * 64)
    assert SummaryCache(tmp_path).get(k) == "Likes guitars — and Gerald ☕"  # persisted, not in memory
    f = tmp_path / "summaries" / f"{k}.json"
    assert f.is_file() and mode(f) == 0o600 and mode(f.parent) == 0o700
    assert json.loads(f.read_text(encoding="utf-8"))["history_sha256"] == "h" * 64
    assert not [p for p in f.parent.iterdir() if p.name.endswith(".tmp")]


def test_summary_cache_key_depends_on_every_input():
    c = SummaryCache(Path("/nonexistent"))
    k = c.key("a", "b", "c")
    assert k == c.key("a", "b", "c")
    assert len({k, c.key("x", "b", "c"), c.key("a", "x", "c"), c.key("a", "b", "x")}) == 4


def test_summary_cache_default_root_is_under_p2p_edge_home(tmp_path):
    c = SummaryCache()
    c.put("k1", "s", "h")
    assert (tmp_path / "p2p-home" / "cache" / "summaries" / "k1.json").is_file()


def test_summary_cache_corrupt_entry_is_a_miss(tmp_path):
    c = SummaryCache(tmp_path)
    c.put("k", "s", "h")
    (tmp_path / "summaries" / "k.json").write_text("{trunc")
    assert c.get("k") is None
    (tmp_path / "summaries" / "k.json").write_text('["not", "a", "dict"]')
    assert c.get("k") is None


def test_summary_cache_delete_for_history(tmp_path):
    c = SummaryCache(tmp_path)
    c.put("k1", "s1", "h1")
    c.put("k2", "s2", "h1")
    c.put("k3", "s3", "h2")
    assert c.delete_for_history("h1") == 2
    assert c.get("k1") is None and c.get("k2") is None and c.get("k3") == "s3"
    assert SummaryCache(tmp_path / "empty").delete_for_history("h1") == 0


# ---------------------------------------------------------------------------------------------- EmbeddingCache


def test_embedding_cache_hit_avoids_re_encoding(tmp_path):
    enc = FakeEncoder()
    texts = ["alpha", "beta", "gamma"]
    c = EmbeddingCache("enc-A", root=tmp_path)
    v1 = c.encode(enc.encode, texts, "h" * 64)
    assert enc.calls == [texts]
    np.testing.assert_array_equal(v1, np.stack([enc.vec(t) for t in texts]))
    assert v1.dtype == np.float32

    v2 = EmbeddingCache("enc-A", root=tmp_path).encode(enc.encode, texts, "h" * 64)  # a new process, same cache
    assert enc.calls == [texts]  # no new call
    np.testing.assert_array_equal(v1, v2)

    v3 = c.encode(enc.encode, ["gamma", "delta", "alpha"], "h" * 64)
    assert enc.calls[1:] == [["delta"]]  # only the new text
    np.testing.assert_array_equal(v3, np.stack([enc.vec(t) for t in ["gamma", "delta", "alpha"]]))


def test_embedding_cache_files_are_private(tmp_path):
    c = EmbeddingCache("enc-A", root=tmp_path)
    c.encode(FakeEncoder().encode, ["a"], "h" * 64)
    files = list((tmp_path / "embeddings").rglob("*.npz"))
    assert len(files) == 1
    assert mode(files[0]) == 0o600 and mode(files[0].parent) == 0o700
    assert not list((tmp_path / "embeddings").rglob("*.tmp"))


def test_embedding_cache_is_per_encoder_and_per_history(tmp_path):
    enc = FakeEncoder()
    EmbeddingCache("enc-A", root=tmp_path).encode(enc.encode, ["a", "b"], "h1" * 32)
    EmbeddingCache("enc-B", root=tmp_path).encode(enc.encode, ["a", "b"], "h1" * 32)
    EmbeddingCache("enc-A", root=tmp_path).encode(enc.encode, ["a", "b"], "h2" * 32)
    assert len(enc.calls) == 3




@pytest.mark.parametrize("damage", [
    pytest.param(lambda b: b"not a zip, not a pickle", id="junk"),
    pytest.param(lambda b: b"", id="empty"),
    pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
    pytest.param(lambda b: b"PK\x03\x04 not really a zip", id="zip-magic-junk"),
])
def test_embedding_cache_corrupt_file_is_re_encoded(tmp_path, damage):
    """A damaged cache file is a miss (re-encode and rewrite), never a crash of `personalize`."""
    enc = FakeEncoder()
    c = EmbeddingCache("enc-A", root=tmp_path)
    c.encode(enc.encode, ["a", "b"], "h" * 64)
    (f,) = list((tmp_path / "embeddings").rglob("*.npz"))
    f.write_bytes(damage(f.read_bytes()))
    v = c.encode(enc.encode, ["a", "b"], "h" * 64)
    assert len(enc.calls) == 2
    np.testing.assert_array_equal(v, np.stack([enc.vec("a"), enc.vec("b")]))
    c.encode(enc.encode, ["a", "b"], "h" * 64)
    assert len(enc.calls) == 2  # the file was rewritten


def test_embedding_cache_delete_for_history(tmp_path):
    c = EmbeddingCache("enc-A", root=tmp_path)
    c.encode(FakeEncoder().encode, ["a"], "h" * 64)
    assert c.delete_for_history("h" * 64) == 1
    assert c.delete_for_history("h" * 64) == 0


@pytest.mark.parametrize("weight", [0.0, 1.0, 2.5])
def test_build_profile_habits_weight_adds_the_habits_line_vector(weight):
    enc = FakeEncoder()
    items = [item(f"t{i}", i, id=f"id{i}", label="cooking") for i in range(3)]
    habits = P.item_habits(items)
    prof = build_profile(enc, items, summary=None, summary_source="none", top_k=1, habits=habits, habits_weight=weight)
    want = enc.vec(prof.text) + weight * enc.vec(f"Habits: {habits}")
    np.testing.assert_allclose(prof.embedding, want / np.linalg.norm(want), rtol=1e-6, atol=1e-7)
    # no habits (no labels, no ratings): the text vector alone, whatever the weight
    plain = [item(f"t{i}", i, id=f"id{i}") for i in range(3)]
    prof = build_profile(enc, plain, summary=None, summary_source="none", top_k=1, habits=P.item_habits(plain),
                         habits_weight=weight)
    np.testing.assert_allclose(prof.embedding, enc.vec(prof.text), rtol=1e-6)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_training_profiles_are_the_vectors_the_client_builds(weight):
    """Training (train.profiles.embed_profiles) and the client (build_profile) must give a user the same vector."""
    from p2p_edge.train.profiles import embed_profiles, profile_items

    users = [{"user_id": f"u{n}", "history": [
        {"id": f"{n}-{i}", "time": None, "text": f"story {n} {i}", "label": ["A", "B"][(i + n) % 2 if n else 0],
         **({"rating": 1 + i % 5} if n == 1 else {})} for i in range(6)]} for n in range(3)]
    users.append({"user_id": "plain", "history": [{"id": f"p{i}", "time": None, "text": f"p {i}"} for i in range(6)]})
    summaries = {(u["user_id"], 4): f"summary of {u['user_id']}" for u in users}
    enc = FakeEncoder()
    train_vecs = embed_profiles(enc, users, 2, summaries, top_k=2, habits_weight=weight)["full"]
    for row, u in enumerate(users):
        items = profile_items(u, 2)
        prof = build_profile(enc, items, summary=summaries[(u["user_id"], 4)], summary_source="given", top_k=2,
                             habits=P.item_habits(items), habits_weight=weight)
        np.testing.assert_allclose(train_vecs[row], prof.embedding, rtol=1e-5, atol=1e-6)
