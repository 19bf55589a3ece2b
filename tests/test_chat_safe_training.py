"""The chat-safe recipe's training pieces: long-form targets, assistant-preservation rows, config overlays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from p2p_edge.errors import InputError  # noqa: E402
from p2p_edge.train.config import load_config  # noqa: E402
from p2p_edge.train.lm import Row, collate, encode_example
from p2p_edge.train.losses import sft_loss
from p2p_edge.train.loop import train
from p2p_edge.train.model import HypernetModule, HypernetModuleConfig, LoraInjector  # noqa: E402
from p2p_edge.train.preserve import load_replies, read_prompts  # noqa: E402
from tests.test_train import tiny_cfg, tiny_llama, tiny_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def targets(tok, ids, labels):
    return tok.decode([i for i, lab in zip(ids, labels) if lab != -100]).split()


def test_a_long_target_cut_for_cpu_does_not_train_the_end_of_the_turn():
    tok = tiny_tokenizer()
    # short-answer recipes (max_target_tokens = 0): cut at max_len // 3, the turn always ends
    ids, labels = encode_example(tok, "write a title", "red blue good bad red blue", 15)
    assert targets(tok, ids, labels) == ["red", "blue", "good", "bad", "red", "<|im_end|>"]
    # long-form: cut at max_target_tokens; the end is trained only when the whole text fit
    ids, labels = encode_example(tok, "write a title", "red blue good bad red blue", 64, max_target_tokens=4)
    assert targets(tok, ids, labels) == ["red", "blue", "good", "bad"]
    ids, labels = encode_example(tok, "write a title", "red blue", 64, max_target_tokens=4)
    assert targets(tok, ids, labels) == ["red", "blue", "<|im_end|>"]
    # a reply the model did not finish itself (cut by its token limit) never teaches stopping
    ids, labels = encode_example(tok, "write a title", "red blue", 64, max_target_tokens=4, finished=False)
    assert targets(tok, ids, labels) == ["red", "blue"]
    # a system turn goes before the user turn, outside the loss
    ids, labels = encode_example(tok, "write a title", "red", 64, max_target_tokens=4, system="good")
    assert tok.decode(ids).split()[:3] == ["<|im_start|>", "<unk>", "good"]   # "system" is not in the tiny vocab
    assert "good" not in targets(tok, ids, labels)
    # an over-long prompt under a system turn is cut in its middle; the system turn and the target survive
    ids, labels = encode_example(tok, "review " * 100 + "write a title", "red", 24, 4, system="good")
    assert len(ids) <= 24 and tok.decode(ids).split()[2] == "good"
    assert targets(tok, ids, labels) == ["red", "<|im_end|>"]


def loss_setup():
    """The tiny model, a hypernet whose B head is still zero (delta W = 0), two task rows and two preservation rows."""
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    hc = HypernetModuleConfig(emb_dim=8, n_layers=2, module_shapes={"q_proj": (32, 32), "v_proj": (32, 16)},
                        hidden=32, dropout=0.0, a_init_scale=1.0)
    gen = HypernetModule(hc)
    inj = LoraInjector(model, hc.modules, hc.alpha, hc.rank)
    task = [Row(*encode_example(tok, "write a title", "red", 32), user=0)] * 2
    keep = [Row(*encode_example(tok, "review", "good bad red blue good", 32, 16), user=1)] * 2
    return tok, model, gen, inj, torch.randn(2, 8), task, keep


def move_b(gen):
    """A non-zero LoRA, so profiles and the preservation terms matter."""
    for head in gen.head_b.values():
        torch.nn.init.normal_(head.weight, std=0.5)


def train_without_and_with_preservation(tmp_path, **preserve):
    """(tok, model, emb, keep rows, hypernet trained on task rows only, hypernet trained with `preserve`'s settings)
    on the same task rows (a short answer) and one preservation row (another prompt, a long reply)."""
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    rows = [Row(*encode_example(tok, "write a title for this review", "red", 32), user=u) for u in (0, 1)] * 4
    keep = [Row(*encode_example(tok, "the guitar", "good bread strings blue good", 32, 16), user=-1)]
    plain = train(tiny_cfg(tmp_path / "a", steps=40), model, tok, rows, rows[:2], emb, out_dir=tmp_path / "a",
                  meta={}, progress=False, log=lambda *_: None)
    kept = train(tiny_cfg(tmp_path / "b", steps=40, preserve_fraction=0.25, preserve_replies="x", **preserve), model,
                 tok, rows, rows[:2], emb, out_dir=tmp_path / "b", meta={}, progress=False, log=lambda *_: None,
                 keep_rows=keep)
    with pytest.raises(ValueError, match="keep_rows"):
        train(tiny_cfg(tmp_path / "c", steps=2, preserve_fraction=0.25, preserve_replies="x"), model, tok, rows,
              rows[:2], emb, out_dir=tmp_path / "c", meta={}, progress=False, log=lambda *_: None)
    return tok, model, emb, keep, plain, kept


def test_preservation_rows_are_their_own_token_mean_times_the_weight():
    tok, model, gen, inj, emb, task, keep = loss_setup()
    move_b(gen)
    with torch.no_grad():
        lt = float(sft_loss(model, inj, gen, emb, collate(task, tok.pad_token_id)))
        lk = float(sft_loss(model, inj, gen, emb, collate(keep, tok.pad_token_id)))
        mixed = collate(task + keep, tok.pad_token_id)
        flags = torch.tensor([False, False, True, True])
        both = float(sft_loss(model, inj, gen, emb, mixed, keep=flags, keep_weight=0.5))
        plain = float(sft_loss(model, inj, gen, emb, mixed))
    inj.remove()
    assert both == pytest.approx(lt + 0.5 * lk, abs=1e-5)
    assert plain != pytest.approx(both, abs=1e-3)   # the token mean over all rows is another number


def test_training_with_preservation_rows_keeps_the_base_reply_and_learns_the_task(tmp_path):
    """Task rows teach a short answer; preservation rows (another prompt, the base model's long reply) under random
    users' profiles keep that prompt's reply likely: without them the adapter's reply to it drifts."""
    tok, model, emb, keep, plain, kept = train_without_and_with_preservation(tmp_path)

    def keep_loss(gen):
        inj = LoraInjector(model, gen.cfg.modules, gen.cfg.alpha, gen.cfg.rank)
        with torch.no_grad():
            v = float(sft_loss(model, inj, gen, torch.from_numpy(emb),
                               collate([Row(keep[0].ids, keep[0].labels, 0)], tok.pad_token_id)))
        inj.remove()
        return v

    assert keep_loss(kept) < keep_loss(plain) - 0.5


def test_an_overlay_config_holds_only_its_changes_and_paths_stay_relative_to_their_file(tmp_path):
    base = load_config(ROOT / "configs" / "train_default.toml")
    chat = load_config(ROOT / "configs" / "train_chat.toml")
    assert chat.hypernet == base.hypernet and chat.train.lr == base.train.lr
    assert chat.profiles.query_items == {**base.profiles.query_items, "blogs": 4}
    assert chat.train.preserve_fraction == 0.25 and "blog_post" in chat.tasks
    # an overlay in another folder: inherited paths still point where the base file meant
    (tmp_path / "exp").mkdir()
    over = tmp_path / "exp" / "x.toml"
    over.write_text(f'extends = "{ROOT / "configs" / "train_default.toml"}"\n[train]\nsteps = 7\n')
    cfg = load_config(over)
    assert cfg.train.steps == 7
    assert cfg.resolve(cfg.tasks_config) == (ROOT / "configs" / "tasks.toml").resolve()
    assert cfg.resolve(cfg.splits_file) == (ROOT / "configs" / "splits_default.json").resolve()
    # a cycle and a missing base are one-line errors naming the key
    loop = tmp_path / "loop.toml"
    loop.write_text('extends = "loop.toml"\n')
    with pytest.raises(InputError, match="extends"):
        load_config(loop)
    missing = tmp_path / "m.toml"
    missing.write_text('extends = "nope.toml"\n')
    with pytest.raises(InputError, match="nope.toml"):
        load_config(missing)


def test_preservation_settings_are_checked(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train]\npreserve_fraction = 0.3\n")
    with pytest.raises(InputError, match="preserve_replies"):
        load_config(p)
    p.write_text('[train]\npreserve_fraction = 1.0\npreserve_replies = "r.jsonl"\n')
    with pytest.raises(InputError, match="preserve_fraction"):
        load_config(p)


def test_prompt_files_and_replies_are_validated_with_the_line(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("# comment\nHello?\n\nHow are you?\nHello?\n")
    with pytest.raises(InputError, match=r"p.txt:5: duplicate prompt \(first on line 2\)"):
        read_prompts(p)
    r = tmp_path / "r.jsonl"
    r.write_text(json.dumps({"prompt": "a", "system": "s", "reply": "b", "finished": True}) + "\n"
                 + json.dumps({"prompt": "a", "system": "s", "reply": 3, "finished": True}) + "\n")
    with pytest.raises(InputError, match=r"r.jsonl:2: field 'reply'"):
        load_replies(r)


def test_the_open_eval_prompts_are_never_trained_on():
    train_p = set(read_prompts(ROOT / "configs" / "prompts" / "open_train.txt"))
    train_p |= set(read_prompts(ROOT / "configs" / "prompts" / "open_train_large.txt"))
    eval_p = read_prompts(ROOT / "configs" / "prompts" / "open_eval.txt")
    assert len(eval_p) >= 60 and not train_p & set(eval_p)
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    assert not {norm(x) for x in train_p} & {norm(x) for x in eval_p}


def test_the_kl_preservation_term_is_zero_at_the_base_model_and_positive_away_from_it():
    from p2p_edge.train.losses import keep_kl_term

    tok, model, gen, inj, emb, task, keep = loss_setup()   # B's head starts at zero: delta W = 0, the base model
    ids, mask, labels, users = collate(keep, tok.pad_token_id)
    with torch.no_grad():
        assert float(keep_kl_term(model, inj, gen, emb[users], ids, mask, labels)) == pytest.approx(0.0, abs=1e-6)
    move_b(gen)
    with torch.no_grad():
        kl = float(keep_kl_term(model, inj, gen, emb[users], ids, mask, labels))
        lt = float(sft_loss(model, inj, gen, emb, collate(task, tok.pad_token_id)))
        both = float(sft_loss(model, inj, gen, emb, collate(task + keep, tok.pad_token_id),
                              keep=torch.tensor([False, False, True, True]), keep_weight=2.0, keep_kl=True))
    inj.remove()
    assert kl > 1e-3
    assert both == pytest.approx(lt + 2.0 * kl, abs=1e-5)


def test_training_with_the_kl_term_stays_nearer_the_base_model_on_preserved_prompts(tmp_path):
    from p2p_edge.train.losses import keep_kl_term

    tok, model, emb, keep, plain, kept = train_without_and_with_preservation(tmp_path, preserve_loss="kl",
                                                                              preserve_weight=2.0)

    def kl(gen):
        inj = LoraInjector(model, gen.cfg.modules, gen.cfg.alpha, gen.cfg.rank)
        ids, mask, labels, _ = collate(keep, tok.pad_token_id)
        with torch.no_grad():
            v = float(keep_kl_term(model, inj, gen, torch.from_numpy(emb[:1]), ids, mask, labels))
        inj.remove()
        return v

    assert kl(kept) < 0.75 * kl(plain)
