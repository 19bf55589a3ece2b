"""Lexical profile inputs: the client-side statistic, the hypernet part that reads it, and warm starts."""

import numpy as np
import pytest
import torch

from p2p_edge.lexical import history_text, lexical_vector, token_centroid, token_counts
from p2p_edge.train.config import load_config
from p2p_edge.errors import InputError
from p2p_edge.train.loop import train
from p2p_edge.train.model import HypernetModule, HypernetModuleConfig
from test_train import first_target_logits, tiny_cfg, tiny_llama, tiny_tokenizer, two_user_rows

WORDS = ["a", "b", "c", "d"]
tokenize = lambda text: [WORDS.index(w) for w in text.split()]  # noqa: E731


def test_token_counts_read_title_and_text():
    items = [{"title": "a", "text": "b b"}, {"text": "c"}, {"title": None, "text": "a"}]
    assert token_counts(items, tokenize, 4).tolist() == [2, 2, 1, 0]


def test_token_centroid_is_the_mean_row_over_every_token_of_titles_and_texts():
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    items = [{"title": "a", "text": "b b"}, {"text": "d", "rating": 5}, {"text": ""}]
    assert history_text(items[0]) == "a b b" and history_text(items[2]) == ""
    want = (table[0] + 2 * table[1] + table[3]) / 4
    np.testing.assert_allclose(token_centroid(items, tokenize, table), want)
    assert token_centroid([{"text": ""}], tokenize, table).tolist() == [0.0, 0.0]   # no tokens: zeros, not NaN
    with pytest.raises(ValueError, match="token_centroid"):
        lexical_vector("bag_of_words", items, tokenize, table)


def test_only_the_branch_reads_the_lexical_part():
    cfg = HypernetModuleConfig(emb_dim=8 + 4, lexical_dim=4, profile_branch=True, n_layers=2,
                               module_shapes={"q_proj": (16, 16), "v_proj": (16, 8)})
    gen = HypernetModule(cfg).eval()
    for head in gen.head_b.values():   # B non-zero so the LoRAs depend on the inputs
        torch.nn.init.normal_(head.weight)
    e = torch.randn(2, 12)
    moved = e.clone()
    moved[:, 8:] += 1.0
    with torch.no_grad():
        same = gen(e)
        assert all(torch.equal(v, gen(moved)[k]) for k, v in same.items())   # branch's last layer is still zero
        torch.nn.init.normal_(gen.profile_in[2].weight)
        assert not torch.equal(gen(e)["v_proj.lora_b"], gen(moved)["v_proj.lora_b"])
    assert gen.trunk[1].in_features == 8 + cfg.type_emb_dim + cfg.depth_emb_dim
    with pytest.raises(ValueError, match="profile_branch"):
        HypernetModuleConfig(emb_dim=12, lexical_dim=4, n_layers=2, module_shapes={"q_proj": (16, 16)})


def test_a_lexical_hypernet_warm_starts_from_one_without_it_and_learns_from_the_lexical_part(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    quiet = lambda *_: None  # noqa: E731
    same = np.ones((3, 8), np.float32)                                   # the embeddings cannot tell users apart
    lex = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)   # the lexical part can
    plain = train(tiny_cfg(tmp_path / "a", steps=5), model, tok, rows, rows[:2], same, out_dir=tmp_path / "a",
                  meta={}, progress=False, log=quiet).eval()
    cfg = tiny_cfg(tmp_path / "b", steps=3, lr=0.0, init_from=str(tmp_path / "a" / "last.pt"))
    cfg.hypernet.profile_branch = True
    both = np.concatenate([same, lex], 1)
    warm = train(cfg, model, tok, rows, rows[:2], both, out_dir=tmp_path / "b", meta={}, progress=False,
                 log=quiet, lexical_dim=4).eval()
    with torch.no_grad():   # lr 0: the same LoRAs as the hypernet it started from
        for k, v in plain(torch.from_numpy(same)).items():
            torch.testing.assert_close(warm(torch.from_numpy(both))[k], v, rtol=0, atol=1e-6)
    cfg = tiny_cfg(tmp_path / "c", steps=80)
    cfg.hypernet.profile_branch = True
    gen = train(cfg, model, tok, rows, rows[:2], both, out_dir=tmp_path / "c", meta={}, progress=False, log=quiet,
                lexical_dim=4).eval()
    red, blue = tok.convert_tokens_to_ids("red"), tok.convert_tokens_to_ids("blue")
    la = first_target_logits(model, tok, gen, both, rows[0])
    lb = first_target_logits(model, tok, gen, both, rows[1])
    assert la[red] > la[blue] and lb[blue] > lb[red]   # only the lexical part tells the two users apart


def test_config_names_a_bad_lexical_input(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[profiles]\nlexical = "bag"\n[hypernet]\nprofile_branch = true\n')
    with pytest.raises(InputError, match="profiles.lexical"):
        load_config(p)
    p.write_text('[profiles]\nlexical = "token_centroid"\n')
    with pytest.raises(InputError, match="profile_branch"):
        load_config(p)
    p.write_text('[profiles]\nlexical = "token_centroid"\n[hypernet]\nprofile_branch = true\n')
    assert load_config(p).profiles.lexical == "token_centroid"


def test_train_only_trains_the_named_parameters_and_keeps_the_rest(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    rows = two_user_rows(tok)
    quiet = lambda *_: None  # noqa: E731
    both = np.concatenate([np.ones((3, 8), np.float32),
                           np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)], 1)
    start = train(tiny_cfg(tmp_path / "a", steps=5), model, tok, rows, rows[:2], both[:, :8], out_dir=tmp_path / "a",
                  meta={}, progress=False, log=quiet).eval()
    cfg = tiny_cfg(tmp_path / "b", steps=20, init_from=str(tmp_path / "a" / "last.pt"))
    cfg.hypernet.profile_branch = True
    cfg.train.train_only = ["profile_in."]
    gen = train(cfg, model, tok, rows, rows[:2], both, out_dir=tmp_path / "b", meta={}, progress=False, log=quiet,
                lexical_dim=4).eval()
    before, after = start.state_dict(), gen.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())          # trunk, heads, embeddings: as loaded
    assert gen.profile_in[2].weight.abs().sum() > 0                          # the branch left zero
    cfg = tiny_cfg(tmp_path / "c", steps=1)
    cfg.train.train_only = ["no_such_module."]
    with pytest.raises(InputError, match="train.train_only"):
        train(cfg, model, tok, rows, rows[:2], both[:, :8], out_dir=tmp_path / "c", meta={}, progress=False, log=quiet)
