"""bench.fit_gap: which generators it accepts, and the users it reads."""

import pytest
import torch

from bench.fit_gap import generator_inputs, load_generator, pick, render
from p2p_edge.errors import InputError
from p2p_edge.train.model import HypernetModule, HypernetModuleConfig

CFG = HypernetModuleConfig(emb_dim=8, n_layers=2, module_shapes={"q_proj": (16, 16), "v_proj": (16, 8)})


def test_a_training_checkpoint_loads_as_the_same_hypernet(tmp_path):
    gen = HypernetModule(CFG).eval()
    torch.save({"config": CFG.to_dict(), "state_dict": gen.state_dict(), "step": 3, "method": "p2p"}, tmp_path / "a.pt")
    name, path, got = load_generator(f"probe={tmp_path / 'a.pt'}")
    e = torch.randn(2, 8)
    assert name == "probe" and path.endswith("a.pt")
    assert all(torch.equal(v, got(e)[k]) for k, v in gen(e).items())


def test_bad_generators_are_one_line_errors(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    for spec in ("nameonly", f"x={tmp_path / 'missing.pt'}", f"x={tmp_path / 'x.txt'}"):
        with pytest.raises(InputError, match="hypernet"):
            load_generator(spec)
    torch.save({"config": CFG.to_dict(), "state_dict": {}, "step": 0, "method": "mt_lora"}, tmp_path / "m.pt")
    with pytest.raises(InputError, match="mt_lora"):   # the MT-LoRA control has no profile to swap
        load_generator(f"m={tmp_path / 'm.pt'}")


def test_pick_is_a_seeded_sorted_subset():
    users = [f"u{i:02d}" for i in range(30)]
    a = pick(users, 10)
    assert a == pick(users, 10) and a != pick(users, 10, seed=1)
    assert a == sorted(a) and len(set(a)) == 10 and set(a) <= set(users)
    assert pick(users, 0) == users


def test_render_has_a_row_per_part_and_hypernet():
    ci = {"diff": -0.01, "ci": [-0.02, -0.005]}
    h = {"own": 3.5, "own_minus_base": ci, "own_minus_other": ci, "own_beats_other_share": 0.9}
    r = {"config": "c.toml", "task": "blog_post", "hypernets": {"a": "a.onnx"},
         "parts": {"train": {"n_users": 5, "base": 4.0, "hypernets": {"a": h}},
                   "val": {"n_users": 5, "base": 4.0, "hypernets": {"a": h}}}}
    md = render(r, "python -m bench.fit_gap ...")
    assert md.count("| train | 5 | a |") == 1 and md.count("| val | 5 | a |") == 1 and "90%" in md


def test_each_generator_reads_the_part_of_the_profile_inputs_it_was_trained_on():
    import numpy as np

    lexical = HypernetModule(HypernetModuleConfig(emb_dim=12, lexical_dim=4, profile_branch=True, n_layers=2,
                                                  module_shapes={"q_proj": (16, 16), "v_proj": (16, 8)}))
    plain = HypernetModule(CFG)
    inputs = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
    got = generator_inputs("c.toml", [("p", "p.pt", plain), ("l", "l.pt", lexical)], inputs)
    assert torch.equal(got["p"], torch.from_numpy(inputs[:, :8])) and torch.equal(got["l"], torch.from_numpy(inputs))
    with pytest.raises(InputError, match="hypernet l reads 12-d profiles"):   # a config without the lexical input
        generator_inputs("c.toml", [("l", "l.pt", lexical)], inputs[:, :8])
