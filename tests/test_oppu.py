"""The OPPU baseline (bench/oppu.py): per-user peft LoRA training on a tiny random llama, and one slow check that
its adapter, written with write_adapter, does in llama.cpp what it does in torch on the real SmolLM2 base."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from test_train import tiny_llama, tiny_tokenizer  # noqa: E402  (tests/ is on sys.path, see conftest)

from bench.oppu import OppuCfg, OppuTrainer, user_examples  # noqa: E402
from p2p_edge.gguf import read_adapter  # noqa: E402
from p2p_edge.base import BaseSpec  # noqa: E402
from p2p_edge.eval.task import Task  # noqa: E402
from p2p_edge.train.dataset import Corpus, Example  # noqa: E402
from p2p_edge.train.model import LoraInjector  # noqa: E402

TINY_SPEC = BaseSpec(arch="llama", n_layers=2, hidden=32, n_head=4, n_head_kv=2, head_dim=8, name="tiny", sha256="")
USER_1 = [("write a title for this review guitar strings", "red"), ("write a title for this bread review", "red good"),
          ("review the guitar", "1 2"), ("write a review for this guitar", "red")]
USER_2 = [("write a title for this review guitar strings", "blue"), ("write a title for this bread review", "bad blue"),
          ("review the bread", "5"), ("write a review for this bread", "blue 4")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: tiny matmuls are slower on two, and CI machines may be busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_trainer(**kw) -> tuple[OppuTrainer, torch.nn.Module]:
    """A trainer on a fresh tiny llama (same seed, same weights every time) and an untouched copy of that base."""
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    base = copy.deepcopy(model)
    cfg = OppuCfg(**{"steps": 25, "lr": 1e-2, "max_len": 32, **kw})
    return OppuTrainer(model, tok, cfg), base


def batch_ids(trainer, examples) -> torch.Tensor:
    rows = trainer.encode(examples)
    n = min(len(r.ids) for r in rows)
    return torch.tensor([r.ids[:n] for r in rows])


def eval_loss(trainer, examples) -> float:
    """Mean SFT loss (per target token, over batches) of the trainer's current adapter on ``examples``."""
    rows = trainer.encode(examples)
    bs = trainer.cfg.batch_size
    with torch.no_grad():
        return float(np.mean([float(trainer._loss(rows[i:i + bs])) for i in range(0, len(rows), bs)]))


def test_fit_lowers_the_sft_loss_on_the_users_examples():
    trainer, _ = tiny_trainer()
    trainer.reset()
    before = eval_loss(trainer, USER_1)  # B = 0: the base model's loss
    lora = trainer.fit(USER_1)
    after = eval_loss(trainer, USER_1)
    assert after < before - 0.3  # 3.33 -> 2.94; the tiny random model plateaus near 2.8
    assert trainer.last_losses[-1] < trainer.last_losses[0] and len(trainer.last_losses) == 25
    assert set(lora.a) == {"q_proj", "v_proj"} and lora.rank == 8 and lora.alpha == 16.0
    assert lora.a["q_proj"].shape == (2, 8, 32) and lora.b["v_proj"].shape == (2, 16, 8)
    assert lora.a["q_proj"].dtype == np.float32 and np.abs(lora.b["q_proj"]).max() > 0
    assert all(p.grad is None for p in trainer.model.parameters())  # nothing left behind, base never trained


def test_extracted_weights_reproduce_the_peft_model():
    """Orientation and scale: the base + LoraInjector(extracted weights) computes what peft computes."""
    trainer, base = tiny_trainer()
    lora = trainer.fit(USER_1)
    ids = batch_ids(trainer, USER_1 + USER_2)
    with torch.no_grad():
        peft_logits = trainer.model(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
        inj = LoraInjector(base, ["q_proj", "v_proj"], lora.alpha, lora.rank)
        weights = {f"{m}.lora_{k}": torch.from_numpy(getattr(lora, k)[m])[None] for m in lora.a for k in "ab"}
        with inj.use(weights):
            injected = base(input_ids=ids).logits
        inj.remove()
    assert (peft_logits - base_logits).abs().max() > 0.1  # the adapter does something
    torch.testing.assert_close(injected, peft_logits, atol=1e-4, rtol=1e-4)


def test_no_state_leaks_between_users():
    trainer, _ = tiny_trainer()
    first = trainer.fit(USER_1)
    after_user_1 = trainer.fit(USER_2)
    fresh, _ = tiny_trainer()
    alone = fresh.fit(USER_2)
    for m in ("q_proj", "v_proj"):
        np.testing.assert_allclose(after_user_1.a[m], alone.a[m], rtol=0, atol=1e-6)
        np.testing.assert_allclose(after_user_1.b[m], alone.b[m], rtol=0, atol=1e-6)
        assert not np.allclose(first.b[m], alone.b[m])  # different users, different adapters
    # every user starts from the same seeded init (peft's: B = 0), and A trains too
    trainer.reset()
    fresh.reset()
    init, init_fresh = trainer.extract(), fresh.extract()
    np.testing.assert_array_equal(init.a["q_proj"], init_fresh.a["q_proj"])
    assert not init.b["q_proj"].any() and not np.allclose(init.a["q_proj"], alone.a["q_proj"])


def test_adapter_writes_the_gguf_and_times_each_stage(tmp_path):
    trainer, _ = tiny_trainer(steps=3)
    path, ms = trainer.adapter(USER_1, tmp_path / "oppu.gguf", TINY_SPEC, dtype="f32")
    assert set(ms) == {"train_ms", "extract_ms", "write_ms", "total_ms"} and all(v > 0 for v in ms.values())
    assert ms["total_ms"] >= ms["train_ms"] + ms["extract_ms"] + ms["write_ms"] - 1e-6
    back, meta = read_adapter(path, TINY_SPEC)  # undoes write_adapter's q row permutation
    lora = trainer.extract()
    for m in ("q_proj", "v_proj"):
        np.testing.assert_array_equal(back.a[m], lora.a[m])
        np.testing.assert_array_equal(back.b[m], lora.b[m])
    assert back.alpha == 16.0 and meta["method"] == "oppu" and meta["n_examples"] == "4"


# ------------------------------------------------------------------------------------------------- examples
def _task(name: str, kind: str, target: str, prompt: str, dataset: str = "/d/shop.users.jsonl.gz") -> Task:
    return Task(name=name, dataset=Path(dataset), kind=kind, input_fields=("text",), target_field=target,
                prompt=prompt, metrics=("accuracy",), requires=("text", target))


def test_user_examples_are_profile_items_never_queries():
    rating = _task("rating", "rating", "rating", "Review: {text}\nStars?")
    title = _task("title", "generation", "title", "Review: {text}\nTitle?")
    other = _task("headline", "generation", "title", "Article: {text}\nHeadline?", "/d/news.users.jsonl.gz")
    profile = [{"id": f"p{i}", "text": f"old review {i}", "rating": 1 + i % 5, "title": f"title {i}"} for i in range(6)]
    profile[2] = {"id": "p2", "text": "no rating, no title"}                      # qualifies for nothing
    profile[4] = {"id": "q1", "text": "a duplicate of a query", "rating": 3}      # same id as a held-out query
    queries = [{"id": "q1", "text": "query one", "rating": 5, "title": "Q one"},
               {"id": "q2", "text": "query two", "rating": 2, "title": "Q two"}]
    uid = "shop/u1"
    corpus = Corpus(uids=[uid], emb={}, profiles={uid: {"summary": "", "items": profile}},
                    examples={uid: [Example(uid, t.name, t.render(q), t.target(q), q) for q in queries
                                    for t in (rating, title)]},
                    tasks={"rating": rating, "title": title, "headline": other}, splits={})

    got = user_examples(corpus, uid)  # default: the tasks of the user's dataset (not news' headline)
    kept = (profile[0], profile[1], profile[3], profile[5])
    assert got == [(t.render(p), t.target(p)) for p in kept for t in (rating, title)]
    query_texts = {q["text"] for q in queries} | {"a duplicate of a query"}
    assert not any(text in prompt for prompt, _ in got for text in query_texts)
    assert not {target for _, target in got} & {"Q one", "Q two"}

    # the cap keeps the most recent items that give examples
    assert user_examples(corpus, uid, ["rating"], max_items=2) == [("Review: old review 3\nStars?", "4"),
                                                                   ("Review: old review 5\nStars?", "1")]
    assert user_examples(corpus, uid, [title], max_items=0) == [(title.render(p), title.target(p)) for p in kept]


# ------------------------------------------------------------------------------------------ real model (slow)
TOY = [
    ("Review: These strings sound bright and stay in tune for weeks.\n"
     "How many stars (1-5) did the reviewer give? Answer with the number only.", "5"),
    ("Review: The capo slipped on the second song and scratched my neck.\n"
     "How many stars (1-5) did the reviewer give? Answer with the number only.", "1"),
    ("Review: A solid stand, heavy and stable, a bit pricey.\n"
     "Write a short title for this review. Answer with the title only.", "Heavy, stable, worth it"),
    ("Review: My tuner died after a week of light use.\n"
     "Write a short title for this review. Answer with the title only.", "Dead in a week"),
]


@pytest.mark.slow
def test_oppu_adapter_matches_in_llama_cpp(llm, base_spec, tmp_path):
    """3 OPPU steps on the real SmolLM2 base; the GGUF adapter's last-token logit delta in llama.cpp (shipped
    Q4_1 base) correlates with peft's in torch. lr 1e-2 makes the delta (std ~2) dominate llama.cpp's Q4_1
    activation-quantization noise; at 3 steps of 1e-3 (std ~0.4) the correlation is only ~0.93."""
    trainer = OppuTrainer.load(OppuCfg(steps=3, lr=1e-2))
    assert trainer.meta["sha256"] == base_spec.sha256
    path, ms = trainer.adapter(TOY, tmp_path / "oppu.gguf", base_spec)
    assert trainer.last_losses[-1] < trainer.last_losses[0]
    ids = trainer.tok.apply_chat_template([{"role": "user", "content": TOY[0][0]}], add_generation_prompt=True,
                                          tokenize=True)
    with torch.no_grad():
        on = trainer.model(torch.tensor([ids])).logits[0, -1].numpy()
        with trainer.model.disable_adapter():
            off = trainer.model(torch.tensor([ids])).logits[0, -1].numpy()
    llm.use(None)
    base_logits = llm.last_logits(ids)
    adapter = llm.load_adapter(path)
    try:
        llm.use(adapter)
        with_adapter = llm.last_logits(ids)
    finally:
        llm.free(adapter)
    torch_delta, llama_delta = on - off, with_adapter - base_logits
    corr = float(np.corrcoef(torch_delta, llama_delta)[0, 1])
    print(f"\nOPPU adapter: torch delta std {torch_delta.std():.3f}, llama.cpp {llama_delta.std():.3f}, "
          f"correlation {corr:.4f}; timings {ms}")
    assert torch_delta.std() > 0.5 and corr > 0.95
