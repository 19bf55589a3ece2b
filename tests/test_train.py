"""Training on a tiny random llama: the SFT loss reaches the hypernet, and per-user profiles give per-user LoRAs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from p2p_edge.train.config import Config, HypernetSettings, TrainCfg, load_config  # noqa: E402
from p2p_edge.train.lm import Row, collate, encode_example
from p2p_edge.train.model import SharedLora
from p2p_edge.train.losses import sft_loss
from p2p_edge.train.loop import train
from p2p_edge.train.model import HypernetModule, HypernetModuleConfig, LoraInjector  # noqa: E402

WORDS = "review write a title for this the guitar bread strings red blue good bad 1 2 3 4 5".split()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", ":", "\n"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    tok.eos_token = "<|im_end|>"
    return tok


def tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).requires_grad_(False).eval()


def tiny_cfg(tmp_path: Path, **train_kw) -> Config:
    kw = dict(steps=60, batch_size=4, lr=3e-3, warmup=5, eval_every=30, save_every=30, val_examples=4,
              max_len=32, mixed_precision="no", threads=1)
    kw.update(train_kw)
    return Config(out_dir=str(tmp_path), hypernet=HypernetSettings(hidden=32, dropout=0.0, a_init_scale=1.0),
                  train=TrainCfg(**kw))


def two_user_rows(tok):
    """Same prompt, different targets: only the profile can tell the users apart."""
    a = encode_example(tok, "write a title for this review", "red", 32)
    b = encode_example(tok, "write a title for this review", "blue", 32)
    return [Row(*a, user=0), Row(*b, user=1)] * 4


def first_target_logits(model, tok, gen, emb, row):
    inj = LoraInjector(model, gen.cfg.modules, gen.cfg.alpha, gen.cfg.rank)
    ids = torch.tensor([row.ids])
    pos = next(i for i, l in enumerate(row.labels) if l != -100) - 1
    with torch.no_grad(), inj.use(gen(torch.from_numpy(emb[row.user : row.user + 1]))):
        out = model(input_ids=ids).logits[0, pos]
    inj.remove()
    return out


def test_encode_example_masks_prompt():
    tok = tiny_tokenizer()
    ids, labels = encode_example(tok, "write a title for this review", "red", 32)
    assert len(ids) == len(labels)
    tgt = [i for i, l in zip(ids, labels) if l != -100]
    assert tok.decode(tgt).split() == ["red", "<|im_end|>"]
    # an over-long prompt is cut but the target survives whole
    ids, labels = encode_example(tok, "review " * 100 + "write a title", "red", 24)
    assert len(ids) <= 24 and [l for l in labels if l != -100] == tgt


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_loss_on_target_positions_only_equals_the_loss_over_full_logits(arch):
    """token_losses runs the LM head on target positions only; loss and hypernet gradients must be those of the
    whole model's logits."""
    import transformers
    from torch import nn

    from p2p_edge.train.lm import IGNORE

    from p2p_edge.train.losses import token_losses

    tok = tiny_tokenizer()
    if arch == "llama":
        model = tiny_llama(len(tok))
    else:
        torch.manual_seed(0)
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)).requires_grad_(False).eval()
    hc = HypernetModuleConfig(emb_dim=8, n_layers=2, module_shapes={"q_proj": (32, 32), "v_proj": (32, 16)},
                        hidden=32, dropout=0.0, a_init_scale=1.0)
    torch.manual_seed(1)
    gen, emb = HypernetModule(hc), torch.randn(2, 8)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.1 * torch.randn_like(p))   # B heads start at zero: make the LoRA matter
    inj = LoraInjector(model, hc.modules, hc.alpha, hc.rank)
    rows = two_user_rows(tok)[:3] + [Row(*encode_example(tok, "a longer prompt " * 3, "green", 32), user=1)]
    ids, mask, labels, users = collate(rows, tok.pad_token_id)   # ragged: padding and prompts of two lengths

    tok_loss, valid = token_losses(model, inj, gen, emb[users], ids, mask, labels)
    fast = tok_loss.sum() / valid.sum()
    fast_grads = torch.autograd.grad(fast, list(gen.parameters()))
    with inj.use(gen(emb[users])):
        logits = model(input_ids=ids, attention_mask=mask).logits
    ref = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=IGNORE)
    ref_grads = torch.autograd.grad(ref, list(gen.parameters()))
    assert float(fast) == pytest.approx(float(ref), rel=1e-5)
    assert (tok_loss[~valid] == 0).all()
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_one_step_reduces_loss_on_fixed_batch():
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    hc = HypernetModuleConfig(emb_dim=8, n_layers=2, module_shapes={"q_proj": (32, 32), "v_proj": (32, 16)},
                        hidden=32, dropout=0.0, a_init_scale=1.0)
    gen = HypernetModule(hc)
    inj = LoraInjector(model, hc.modules, hc.alpha, hc.rank)
    emb = torch.randn(2, 8)
    batch = collate(two_user_rows(tok), tok.pad_token_id)
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-2)
    before = float(sft_loss(model, inj, gen, emb, batch))
    loss = sft_loss(model, inj, gen, emb, batch)
    loss.backward()
    assert all(p.grad is None for p in model.parameters())  # base frozen
    assert gen.head_b["q_proj"].weight.grad.abs().sum() > 0   # gradient reaches the hypernet
    opt.step()
    after = float(sft_loss(model, inj, gen, emb, batch))
    assert after < before


@pytest.mark.parametrize("shared_lora", [False, True])
def test_hypernet_separates_two_users(tmp_path, shared_lora):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    cfg = tiny_cfg(tmp_path, steps=80)
    cfg.hypernet.shared_lora = shared_lora
    gen = train(cfg, model, tok, rows, rows[:2], emb, out_dir=tmp_path, meta={}, progress=False, log=lambda *_: None)
    gen.eval()
    assert hasattr(gen, "shared_a") == shared_lora
    red, blue = tok.convert_tokens_to_ids("red"), tok.convert_tokens_to_ids("blue")
    la = first_target_logits(model, tok, gen, emb, rows[0])
    lb = first_target_logits(model, tok, gen, emb, rows[1])
    assert la[red] > la[blue] and lb[blue] > lb[red]
    # the log and a resumable checkpoint exist
    log = [json.loads(line) for line in open(tmp_path / "train_log.jsonl")]
    assert log[-1]["step"] == 80 and "val_loss" in log[-1]
    ck = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ck["step"] == 80 and ck["method"] == "p2p"


def test_shared_lora_cannot_separate_users(tmp_path):
    """The MT-LoRA control gives every user the same LoRA, so it cannot tell the two users apart."""
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    gen = train(tiny_cfg(tmp_path, steps=20, method="mt_lora"), model, tok, rows, rows[:2], emb,
                out_dir=tmp_path, meta={}, progress=False, log=lambda *_: None)
    assert isinstance(gen, SharedLora)
    la = first_target_logits(model, tok, gen, emb, rows[0])
    lb = first_target_logits(model, tok, gen, emb, rows[1])
    assert torch.allclose(la, lb)


def test_resume_continues_from_checkpoint(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    train(tiny_cfg(tmp_path, steps=10, save_every=5), model, tok, rows, rows[:2], emb, out_dir=tmp_path, meta={},
          progress=False, log=lambda *_: None)
    msgs = []
    train(tiny_cfg(tmp_path, steps=15, save_every=5), model, tok, rows, rows[:2], emb, out_dir=tmp_path, meta={},
          progress=False, log=msgs.append)
    assert any("resumed" in m and "step 10" in m for m in msgs)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "train_log.jsonl")]
    assert steps == list(range(0, 16))   # step 0: the divergence guard's reference, measured once


def blow_up(monkeypatch, *, val_after: int = 10**9, val_bad: int = 10**9, train_at: int = 10**9):
    """Wraps the SFT loss: the `val_bad` validation losses after the first `val_after` evaluations come out 3x, and
    the `train_at`-th training loss is nan, so the divergence guard meets a blow-up at a known step."""
    import p2p_edge.train.loop as loop

    real, calls = loop.sft_loss, {"val": 0, "train": 0}

    def fake(model, injector, gen, *a, **k):
        loss = real(model, injector, gen, *a, **k)
        kind = "train" if gen.training else "val"
        calls[kind] += 1
        if kind == "val" and val_after < calls["val"] <= val_after + val_bad:
            return loss * 3
        return loss * float("nan") if kind == "train" and calls["train"] == train_at else loss

    monkeypatch.setattr(loop, "sft_loss", fake)


def test_a_validation_blow_up_stops_training_before_it_overwrites_the_checkpoint(tmp_path, monkeypatch):
    from p2p_edge.errors import TrainingDiverged

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    blow_up(monkeypatch, val_after=2)   # val rows[:2] at batch 4: one call per evaluation; step 0 and step 5 are fine
    # every later evaluation is 3x: both rewinds (to step 5, at half the lr each) meet it again, then it stops
    with pytest.raises(TrainingDiverged, match=r"step 10: val loss .* > 1.5 x .*2 rewinds.*train.lr \(now 0.003\)"):
        train(tiny_cfg(tmp_path, steps=30, eval_every=5, save_every=5), model, tok, rows, rows[:2], emb,
              out_dir=tmp_path, meta={}, progress=False, log=lambda *_: None)
    log = [json.loads(line) for line in open(tmp_path / "train_log.jsonl")]
    assert log[0]["step"] == 0 and log[-1]["step"] == 10 and log[-1]["val_loss"] > 1.5 * log[0]["val_loss"]
    assert [r["rewind_to"] for r in log if "rewind_to" in r] == [5, 5]
    ck = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ck["step"] == 5 and ck["val_loss_start"] == pytest.approx(log[0]["val_loss"])


def test_a_one_off_blow_up_rewinds_to_the_last_good_state_at_half_the_lr_and_trains_on(tmp_path, monkeypatch):
    from p2p_edge.train.loop import lr_at

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    blow_up(monkeypatch, val_after=2, val_bad=1, train_at=14)   # step 10's first evaluation; the 14th step is nan
    cfg = tiny_cfg(tmp_path, steps=15, eval_every=5, save_every=5)
    train(cfg, model, tok, rows, rows[:2], emb, out_dir=tmp_path, meta={}, progress=False, log=lambda *_: None)
    log = [json.loads(line) for line in open(tmp_path / "train_log.jsonl")]
    rewinds = [(i, r) for i, r in enumerate(log) if "rewind_to" in r]
    # step 10's val loss -> back to step 5 (x0.5); the nan at the 14th step drawn (step 9 again) -> back to step 5 (x0.25)
    assert [(r["step"], r["rewind_to"], r["lr_scale"]) for _, r in rewinds] == [(10, 5, 0.5), (9, 5, 0.25)]
    after = log[rewinds[-1][0] + 1:]
    assert [r["step"] for r in after] == list(range(6, 16))
    assert all(r["lr"] == pytest.approx(0.25 * lr_at(r["step"] - 1, cfg.train)) for r in after)
    ck = torch.load(tmp_path / "last.pt", weights_only=False)
    assert (ck["step"], ck["lr_scale"], ck["rewinds_used"]) == (15, 0.25, 2)
    assert torch.load(tmp_path / "good.pt", weights_only=False)["step"] == 15   # passed its evaluation
    # a resume keeps the lowered lr
    longer = tiny_cfg(tmp_path, steps=20, eval_every=5, save_every=5)
    train(longer, model, tok, rows, rows[:2], emb, out_dir=tmp_path, meta={}, progress=False, log=lambda *_: None)
    resumed = [json.loads(line) for line in open(tmp_path / "train_log.jsonl")][len(log):]
    assert [r["step"] for r in resumed] == list(range(16, 21))
    assert all(r["lr"] == pytest.approx(0.25 * lr_at(r["step"] - 1, longer.train)) for r in resumed)


def test_a_rewind_replays_the_same_batches_and_puts_last_pt_back(tmp_path, monkeypatch):
    import p2p_edge.train.loop as loop

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = [Row(r.ids, r.labels, r.user) for r in two_user_rows(tok)]   # 8 distinct objects: a batch is their ids
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    drawn, real = [], loop.collate
    monkeypatch.setattr(loop, "collate", lambda b, pad: (drawn.append([id(r) for r in b]) if len(b) == 4 else None)
                        or real(b, pad))   # batch 4; the 2 val rows come as one batch of 2
    # eval every 4 steps, save every 3: last.pt is saved at step 9, after the last good state (8), before the blow-up
    # is seen at step 12
    blow_up(monkeypatch, val_after=3, val_bad=1)
    with pytest.raises(Exception, match="step 12"):   # stop on the first blow-up, but after putting last.pt back
        train(tiny_cfg(tmp_path, steps=16, eval_every=4, save_every=3, rewinds=0), model, tok, rows, rows[:2], emb,
              out_dir=tmp_path, meta={}, progress=False, log=lambda *_: None)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 8
    first = list(drawn)
    for f in tmp_path.glob("*.pt"):
        f.unlink()
    drawn.clear()
    blow_up(monkeypatch, val_after=3, val_bad=1)
    train(tiny_cfg(tmp_path / "b", steps=16, eval_every=4, save_every=3), model, tok, rows, rows[:2], emb,
          out_dir=tmp_path / "b", meta={}, progress=False, log=lambda *_: None)
    assert len(first) == 12 and len(drawn) == 12 + 8   # 12 steps, back to step 8, steps 9-16
    assert drawn[12:16] == drawn[8:12] == first[8:12]   # steps 9-12 drawn again after the rewind


def test_the_guard_keeps_its_reference_across_a_resume_and_can_be_turned_off(tmp_path, monkeypatch):
    from p2p_edge.errors import TrainingDiverged

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    train(tiny_cfg(tmp_path, steps=5, eval_every=5, save_every=5), model, tok, rows, rows[:2], emb,
          out_dir=tmp_path, meta={}, progress=False, log=lambda *_: None)
    blow_up(monkeypatch, val_after=0)   # every validation loss after the resume is 3x: judged against step 0's
    with pytest.raises(TrainingDiverged, match="step 10: val loss"):
        train(tiny_cfg(tmp_path, steps=10, eval_every=5, save_every=5), model, tok, rows, rows[:2], emb,
              out_dir=tmp_path, meta={}, progress=False, log=lambda *_: None)
    train(tiny_cfg(tmp_path, steps=10, eval_every=5, save_every=5, diverge_ratio=0), model, tok, rows, rows[:2],
          emb, out_dir=tmp_path, meta={}, progress=False, log=lambda *_: None)   # off: trains on
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 10


def test_a_nan_training_loss_stops_at_once(tmp_path, monkeypatch):
    from p2p_edge.errors import TrainingDiverged

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    blow_up(monkeypatch, train_at=3)
    with pytest.raises(TrainingDiverged, match="step 3: train loss is nan"):
        train(tiny_cfg(tmp_path, steps=30, eval_every=5, save_every=2, diverge_ratio=0, rewinds=0), model, tok, rows,
              rows[:2], emb, out_dir=tmp_path, meta={}, progress=False, log=lambda *_: None)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 0   # back to the last evaluated state


def test_config_errors_name_the_key(tmp_path):
    from p2p_edge.errors import InputError

    p = tmp_path / "c.toml"
    p.write_text('[train]\nstepz = 3\n')
    with pytest.raises(InputError, match="train.stepz"):
        load_config(p)
    p.write_text('[train]\nsteps = "many"\n')
    with pytest.raises(InputError, match="train.steps"):
        load_config(p)
    p.write_text('[hypernet]\nshared_lora = 1\n')
    with pytest.raises(InputError, match="hypernet.shared_lora"):
        load_config(p)
    p.write_text('[train]\nmethod = "oppu"\n')
    with pytest.raises(InputError, match="train.method"):
        load_config(p)
    for bad in ("1.0", "-2"):
        p.write_text(f'[train]\ndiverge_ratio = {bad}\n')
        with pytest.raises(InputError, match="train.diverge_ratio"):
            load_config(p)
    p.write_text('[train]\nrewinds = -1\n')
    with pytest.raises(InputError, match="train.rewinds"):
        load_config(p)
    p.write_text('split = [\n')
    with pytest.raises(InputError, match="invalid TOML"):
        load_config(p)


def test_default_config_parses():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "train_default.toml")
    assert cfg.train.method == "p2p" and cfg.hypernet.rank == 8 and set(cfg.tasks) >= {"news_category", "amazon_rating"}


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "configs").glob("train_*.toml")))
def test_every_shipped_config_parses_and_warm_starts_from_its_own_recipe(name):
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    if cfg.train.init_from:   # a continuation names the checkpoint another shipped config writes, same method
        src = cfg.resolve(cfg.train.init_from).parent
        writers = [load_config(p) for p in cfg.resolve(".").glob("train_*.toml")]
        assert any(cfg.resolve(w.out_dir) == src and w.train.method == cfg.train.method for w in writers), name


def test_profile_regularisers_only_perturb_when_asked():
    from p2p_edge.train.losses import perturb_profiles

    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(1000, 16), dim=-1)
    assert torch.equal(perturb_profiles(e, 0.0, 0.0), e)
    noisy = perturb_profiles(e, 0.1, 0.0)
    assert 0.05 < float((noisy - e).std()) < 0.15
    dropped = perturb_profiles(e, 0.0, 0.3)
    zero_rows = float((dropped.abs().sum(-1) == 0).float().mean())
    assert 0.2 < zero_rows < 0.4
    kept = dropped.abs().sum(-1) > 0
    assert torch.equal(dropped[kept], e[kept])  # kept profiles are untouched, not rescaled


def test_ddp_two_processes_match_one_process(tmp_path):
    """Several-process training (torchrun = what `accelerate launch --multi_gpu` starts; gloo on CPU): two ranks with
    half the batch each end with the weights of one process on the whole batch. Fails if ranks draw different
    batches, do not all-reduce their gradients, or each step on its own half."""
    import socket
    import subprocess
    import sys

    from ddp_worker import main as train_worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = Path(__file__).parent / "ddp_worker.py"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(port), str(worker), str(tmp_path / "ddp"), "4"],
                   check=True, env=env, capture_output=True, timeout=300)
    train_worker(str(tmp_path / "one"), 8)   # one process, the same global batches of 8
    train_worker(str(tmp_path / "half"), 4)  # one process on half the batch: what an unsynchronised rank computes
    load = lambda name: torch.load(tmp_path / name / "last.pt", weights_only=False)["state_dict"]  # noqa: E731
    ddp, one, half = load("ddp"), load("one"), load("half")
    gap = lambda x, y: max(float((x[k] - y[k]).abs().max()) for k in x)  # noqa: E731
    assert gap(ddp, one) < 1e-5
    assert gap(half, one) > 1e-3   # the check above can tell the two apart
    assert [json.loads(line)["step"] for line in open(tmp_path / "ddp" / "train_log.jsonl")] == list(range(0, 7))


def test_contrast_term_is_the_hinge_on_own_vs_other_profile():
    """With every 'other' profile equal to the own one the gap is 0, so the term adds exactly contrastive * margin;
    with truly other profiles the losses differ (the hinge only charges when the own profile does not fit better)."""
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    emb = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32))
    hcfg = HypernetModuleConfig(emb_dim=8, n_layers=2, module_shapes={"q_proj": (32, 32), "v_proj": (32, 16)},
                          hidden=32, dropout=0.0, a_init_scale=1.0)
    gen = HypernetModule(hcfg)
    for head in gen.head_b.values():   # a non-zero LoRA, so profiles matter
        torch.nn.init.normal_(head.weight, std=0.5)
    inj = LoraInjector(model, hcfg.modules, hcfg.alpha, hcfg.rank)
    batch = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        plain = float(sft_loss(model, inj, gen, emb, batch))
        same = float(sft_loss(model, inj, gen, emb, batch, negatives=batch[3], contrastive=0.5, margin=0.2))
        other = float(sft_loss(model, inj, gen, emb, batch, negatives=1 - batch[3], contrastive=0.5, margin=0.2))
        off = float(sft_loss(model, inj, gen, emb, batch, negatives=1 - batch[3], contrastive=0.0, margin=0.2))
    inj.remove()
    assert same == pytest.approx(plain + 0.5 * 0.2, abs=1e-5)
    assert other != pytest.approx(same, abs=1e-4)
    assert off == pytest.approx(plain)


def test_negative_pool_is_other_people_of_the_same_dataset():
    from p2p_edge.train.losses import negative_pool

    uids = ["news/a", "news/b", "news/a@5", "amazon/x", "amazon/y", "news/c"]
    index = {u: i for i, u in enumerate(uids)}
    pool = negative_pool(["news/a", "news/b", "news/a@5", "amazon/x", "amazon/y"], index)
    assert pool[0] == [1] and pool[2] == [1] and sorted(pool[1]) == [0, 2]
    assert pool[3] == [4] and pool[4] == [3]   # never another dataset, never a non-train user (news/c)


def test_contrastive_training_separates_users_and_warm_start_loads_weights(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    emb = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    cfg = tiny_cfg(tmp_path / "a", steps=60, contrastive=1.0, contrastive_margin=0.5)
    with pytest.raises(ValueError, match="negatives"):
        train(cfg, model, tok, rows, rows[:2], emb, out_dir=tmp_path / "a", meta={}, progress=False, log=lambda *_: None)
    gen = train(cfg, model, tok, rows, rows[:2], emb, out_dir=tmp_path / "a", meta={}, progress=False,
                log=lambda *_: None, negatives={0: [1], 1: [0]})
    gen.eval()
    red, blue = tok.convert_tokens_to_ids("red"), tok.convert_tokens_to_ids("blue")
    la = first_target_logits(model, tok, gen, emb, rows[0])
    lb = first_target_logits(model, tok, gen, emb, rows[1])
    assert la[red] > la[blue] and lb[blue] > lb[red]
    # warm start: lr 0 keeps the loaded weights, so the result equals the source checkpoint
    msgs = []
    warm = tiny_cfg(tmp_path / "b", steps=3, lr=0.0, init_from=str(tmp_path / "a" / "last.pt"))
    gen2 = train(warm, model, tok, rows, rows[:2], emb, out_dir=tmp_path / "b", meta={}, progress=False, log=msgs.append)
    assert any("initialised from" in m for m in msgs)
    for k, v in gen.state_dict().items():
        assert torch.equal(v, gen2.state_dict()[k]), k
    bad = tiny_cfg(tmp_path / "c", steps=3, method="mt_lora", init_from=str(tmp_path / "a" / "last.pt"))
    from p2p_edge.errors import InputError

    with pytest.raises(InputError, match="train.init_from.*method 'p2p'"):
        train(bad, model, tok, rows, rows[:2], emb, out_dir=tmp_path / "c", meta={}, progress=False, log=lambda *_: None)


def test_an_evaluation_config_must_build_the_vectors_the_hypernet_was_trained_on(tmp_path):
    from p2p_edge.errors import InputError
    from p2p_edge.hypernet import HypernetCard
    from p2p_edge.train.config import check_card_profile

    def card(profile):
        return HypernetCard(id="h", emb_dim=4, rank=8, alpha=16.0, modules=("q_proj",), n_layers=1,
                            module_shapes={"q_proj": (4, 4)}, base_model={}, encoder={"name": "e"}, profile=profile)

    p = tmp_path / "c.toml"
    p.write_text("[profiles]\nhabits_weight = 1.0\n")
    cfg = load_config(p)
    check_card_profile(card({"top_k": 2, "habits_weight": 1.0}), cfg, "h.onnx")
    with pytest.raises(InputError, match="profiles.habits_weight.*is 1.0, but h.onnx was trained with 0.0"):
        check_card_profile(card({"top_k": 2}), cfg, "h.onnx")   # a v1 card: no habits vector
    with pytest.raises(InputError, match="profiles.top_k"):
        check_card_profile(card({"top_k": 3, "habits_weight": 1.0}), cfg, "h.onnx")


@pytest.mark.parametrize("requested, cuda, cpu_bf16, used", [
    ("bf16", False, False, "no"),     # a CPU without bf16 instructions: a reference loop, ~100x slower
    ("bf16", False, True, "bf16"),
    ("fp16", False, True, "no"),      # fp16 autocast only on a GPU
    ("fp16", True, False, "fp16"),
    ("bf16", True, False, "bf16"),
    ("no", False, True, "no"),
])
def test_autocast_precision_is_what_the_device_runs_natively(requested, cuda, cpu_bf16, used):
    from p2p_edge.train.loop import autocast_precision

    assert autocast_precision(requested, cuda=cuda, cpu_bf16=cpu_bf16) == used


def test_profile_branch_trains_and_joins_a_model_trained_without_it(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    # the users differ by little beside a large shared part: the branch standardises that difference
    emb = (np.ones((3, 8)) + 0.01 * np.random.default_rng(0).standard_normal((3, 8))).astype(np.float32)
    quiet = lambda *_: None  # noqa: E731
    plain = train(tiny_cfg(tmp_path / "a", steps=5), model, tok, rows, rows[:2], emb, out_dir=tmp_path / "a",
                  meta={}, progress=False, log=quiet).eval()
    # warm start with the branch from a checkpoint without it: lr 0 -> the same LoRAs (the branch starts at zero),
    # its standardisation from the training users' rows (0 and 1; row 2 is nobody's here)
    cfg = tiny_cfg(tmp_path / "b", steps=3, lr=0.0, init_from=str(tmp_path / "a" / "last.pt"))
    cfg.hypernet.profile_branch = True
    msgs = []
    warm = train(cfg, model, tok, rows, rows[:2], emb, out_dir=tmp_path / "b", meta={}, progress=False,
                 log=msgs.append).eval()
    assert any("standardised over 2 training users" in m for m in msgs)
    torch.testing.assert_close(warm.profile_mean, torch.from_numpy(emb[:2].mean(0)))
    e = torch.from_numpy(emb)
    with torch.no_grad():
        for k, v in plain(e).items():
            torch.testing.assert_close(warm(e)[k], v, rtol=0, atol=1e-6)
    # trained with the branch, it tells the two users apart
    cfg = tiny_cfg(tmp_path / "c", steps=80)
    cfg.hypernet.profile_branch = True
    gen = train(cfg, model, tok, rows, rows[:2], emb, out_dir=tmp_path / "c", meta={}, progress=False, log=quiet).eval()
    red, blue = tok.convert_tokens_to_ids("red"), tok.convert_tokens_to_ids("blue")
    la = first_target_logits(model, tok, gen, emb, rows[0])
    lb = first_target_logits(model, tok, gen, emb, rows[1])
    assert la[red] > la[blue] and lb[blue] > lb[red]
    # a checkpoint WITH the branch does not fit a config without it
    from p2p_edge.errors import InputError

    with pytest.raises(InputError, match="train.init_from.*unexpected keys"):
        train(tiny_cfg(tmp_path / "d", steps=1, init_from=str(tmp_path / "c" / "last.pt")), model, tok, rows,
              rows[:2], emb, out_dir=tmp_path / "d", meta={}, progress=False, log=quiet)
