"""bench.target_nll: per-user target loss with no adapter, the own profile's LoRA and a donor's, and its summary."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from bench.target_nll import main, summarise, user_task_nll  # noqa: E402
from p2p_edge.train.lm import Row, collate, encode_example
from p2p_edge.train.losses import sft_loss
from p2p_edge.train.model import HypernetModule, HypernetModuleConfig, LoraInjector  # noqa: E402
from test_train import tiny_llama, tiny_tokenizer  # noqa: E402


def setup(perturb: bool):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    hc = HypernetModuleConfig(emb_dim=8, n_layers=2, module_shapes={"q_proj": (32, 32), "v_proj": (32, 16)},
                        hidden=32, dropout=0.0, a_init_scale=1.0)
    torch.manual_seed(1)
    gen = HypernetModule(hc).eval()
    if perturb:   # the B heads start at zero (delta W = 0): move them so profiles matter
        with torch.no_grad():
            for p in gen.parameters():
                p.add_(0.2 * torch.randn_like(p))
    rows = [Row(*encode_example(tok, "write a title for this review", t, 32), user=0) for t in ("red", "blue good")]
    return tok, model, gen, LoraInjector(model, hc.modules, hc.alpha, hc.rank), torch.randn(2, 8), rows


def test_the_three_variants_are_the_training_loss_with_those_adapters():
    tok, model, gen, inj, emb, rows = setup(perturb=True)
    r = user_task_nll(model, inj, gen, emb, rows, donor_row=1, pad_id=tok.pad_token_id)
    n = r["own"][1]
    assert n == r["base"][1] == r["shuffled"][1] == 2 + 3   # target words + end of turn each
    batch = collate(rows, tok.pad_token_id)
    with torch.no_grad():
        own = float(sft_loss(model, inj, gen, emb, batch))
        donor = float(sft_loss(model, inj, gen, emb, (*batch[:3], torch.ones_like(batch[3]))))
        base = float(model(input_ids=batch[0], attention_mask=batch[1], labels=batch[2]).loss)
    assert r["own"][0] / n == pytest.approx(own, rel=1e-5)
    assert r["shuffled"][0] / n == pytest.approx(donor, rel=1e-5)
    assert r["base"][0] / n == pytest.approx(base, rel=1e-5)
    assert abs(own - donor) > 1e-4 and abs(own - base) > 1e-4


def test_a_fresh_hypernet_is_the_base_model():
    tok, model, gen, inj, emb, rows = setup(perturb=False)
    r = user_task_nll(model, inj, gen, emb, rows, donor_row=1, pad_id=tok.pad_token_id)
    assert r["own"][0] == pytest.approx(r["base"][0], rel=1e-6)
    assert r["shuffled"][0] == pytest.approx(r["base"][0], rel=1e-6)


def test_summary_weighs_users_equally_and_pairs_them(tmp_path):
    per_user = {"headline": {
        "a": {"base": (40.0, 10), "own": (30.0, 10), "shuffled": (31.0, 10)},    # 4.0 / 3.0 / 3.1 per token
        "b": {"base": (8.0, 2), "own": (4.0, 2), "shuffled": (4.0, 2)},          # 4.0 / 2.0 / 2.0
    }}
    s = summarise(per_user)["headline"]
    assert (s["n_users"], s["n_tokens"]) == (2, 12)
    assert (s["base"], s["own"], s["shuffled"]) == pytest.approx((4.0, 2.5, 2.55))
    assert s["own_minus_base"]["diff"] == pytest.approx(-1.5)
    lo, hi = s["own_minus_base"]["ci"]
    assert -2.0 <= lo <= -1.5 <= hi <= -1.0   # two users: the resamples are -1, -1.5 or -2
    assert s["own_minus_shuffled"]["diff"] == pytest.approx(-0.05)


def test_bad_run_specs_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["no-equals-sign", "--out", str(out)]) == 2
    assert "CONFIG=CHECKPOINT" in capsys.readouterr().err
    assert main([f"{tmp_path / 'c.toml'}={tmp_path / 'last.pt'}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "c.toml" in err and "no such file" in err and "\n" not in err
    assert not list(tmp_path.glob("o.*"))
