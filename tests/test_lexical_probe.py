"""bench.lexical_probe: the per-user token statistics it scores with."""

import numpy as np

from bench.lexical_probe import render, user_statistics


def test_a_users_statistics_raise_their_own_tokens_and_a_mean_user_has_no_direction():
    emb = np.eye(4)                    # token i's embedding is axis i; the head is tied
    counts = {"x": np.array([9.0, 1, 0, 0]), "y": np.array([1.0, 9, 0, 0]), "z": np.array([5.0, 5, 0, 0])}
    stats = user_statistics(counts, ["x", "y"], emb, emb, mu=10.0)
    shift_x, uni_x = stats["x"]
    assert shift_x[0] > 0 > shift_x[1] and abs(np.linalg.norm(shift_x) - 1) < 1e-6   # a unit shift toward "a"
    assert uni_x[0] > 0 > uni_x[1]
    shift_z, uni_z = stats["z"]        # z is the training users' mean: no direction, a and b alike
    assert np.allclose(shift_z, 0, atol=1e-6) and abs(uni_z[0] - uni_z[1]) < 1e-6


def test_render_has_a_row_per_model_and_statistic():
    ci = {"diff": -0.01, "ci": [-0.02, -0.005]}
    s = {"beta": 2, "train_own_minus_none": -0.01, "own_minus_none": ci, "own_minus_other": ci,
         "own_beats_other_share": 0.75}
    r = {"config": "c.toml", "task": "blog_post", "mu": 2000.0, "grids": {"centroid": [1, 2], "unigram": [0.1]},
         "n_users": {"train": 10, "val": 5}, "read_part": "val",
         "parts": {"base": {"none": 3.0, "centroid": s, "unigram": s}, "h": {"none": 2.9, "centroid": s, "unigram": s}}}
    md = render(r, "python -m bench.lexical_probe ...")
    assert md.count("| base | centroid | 2 |") == 1 and md.count("| h | unigram |") == 1 and "75%" in md
