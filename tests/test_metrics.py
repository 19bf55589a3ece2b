import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_edge.eval import metrics as M


def test_mae_rmse_basic():
    assert M.mae([1, 5, 3], [2, 5, 1]) == pytest.approx((1 + 0 + 2) / 3)
    assert M.rmse([1, 5, 3], [2, 5, 1]) == pytest.approx(math.sqrt((1 + 0 + 4) / 3))


def test_unparseable_rating_is_worst_error():
    # target 1 -> worst 4 (answer 5); target 3 -> worst 2; target 5 -> worst 4
    assert M.rating_errors([None, None, None], [1, 3, 5], 1, 5).tolist() == [4, 2, 4]
    assert M.mae([None], [4]) == 3
    assert M.rmse([None, 4], [2, 4]) == pytest.approx(math.sqrt(9 / 2))
    # a different scale
    assert M.mae([None], [2], lo=0, hi=10) == 8


def test_length_mismatch():
    with pytest.raises(ValueError):
        M.mae([1], [1, 2])
    with pytest.raises(ValueError):
        M.accuracy(["a"], [])


def test_accuracy_none_is_wrong():
    assert M.accuracy(["a", None, "b", "c"], ["a", "b", "b", "x"]) == 0.5


def test_macro_f1_hand_computed():
    labels = ["A", "B", "C", "Other"]
    preds = ["A", "A", "B", None, "C"]
    targs = ["A", "B", "B", "A", "B"]
    # F1 = 2tp / (2tp + fp + fn). A: tp1 fp1 fn1 -> 2/4 ; B: tp1 fp0 fn2 -> 2/4 ; C: tp0 fp1 fn0 -> 0 ;
    # Other: neither a target nor a prediction -> left out of the mean
    assert M.macro_f1(preds, targs, labels) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert M.macro_f1(["A", "B"], ["A", "B"], labels) == 1.0
    with pytest.raises(ValueError):
        M.macro_f1(["A"], ["Z"], labels)


def test_tokenize():
    assert M.tokenize("The CAT, don't  sat!") == ["the", "cat", "don", "t", "sat"]
    assert M.tokenize(None) == [] and M.tokenize("") == []


def test_rouge1_hand_computed():
    # pred: the cat sat on the mat (6); ref: the cat is on the mat (6)
    # clipped unigram overlap: the x2, cat, on, mat = 5 -> P = R = 5/6
    assert M.rouge1("The cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # pred "a a a" vs ref "a b": overlap min(3,1)=1, P=1/3, R=1/2, F=2*(1/6)/(5/6)=0.4
    assert M.rouge1("a a a", "a b") == pytest.approx(0.4)
    assert M.rouge1("", "a b") == 0.0 and M.rouge1("x", "") == 0.0 and M.rouge1(None, "a") == 0.0
    assert M.rouge1("x y", "a b") == 0.0


def test_rouge2_hand_computed():
    # bigrams pred: (the cat)(cat sat)(sat down) ; ref: (the cat)(cat ran) -> overlap 1, P=1/3, R=1/2 -> 0.4
    assert M.rouge_n("the cat sat down", "the cat ran", 2) == pytest.approx(0.4)


def test_rougeL_hand_computed():
    # pred: police killed the gunman ; ref: police kill the gunman -> LCS = police the gunman = 3, P=R=3/4
    assert M.rougeL("police killed the gunman", "police kill the gunman") == pytest.approx(0.75)
    # Lin 2004's example: ref "police killed the gunman", cand "the gunman kill police" -> LCS 2 ("the gunman")
    assert M.rougeL("the gunman kill police", "police killed the gunman") == pytest.approx(0.5)
    # order matters for L but not for 1
    assert M.rouge1("b a", "a b") == 1.0
    assert M.rougeL("b a", "a b") == pytest.approx(0.5)
    # pred 3 tokens, ref 5, LCS 2: P=2/3, R=2/5 -> F = 2*(4/15)/(16/15) = 0.5
    assert M.rougeL("a x c", "a b c d e") == pytest.approx(0.5)


def test_mean_rouge():
    assert M.mean_rouge1(["a b", None], ["a b", "c"]) == pytest.approx(0.5)
    assert M.mean_rougeL(["a b", "c"], ["a b", "c"]) == 1.0


def test_bootstrap_ci_covers_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    v = rng.normal(0.3, 1.0, size=200)
    mean, lo, hi = M.bootstrap_ci(v, n=500, seed=3)
    assert mean == pytest.approx(v.mean())
    assert lo < mean < hi
    assert hi - lo < 0.5
    assert M.bootstrap_ci(v, n=500, seed=3) == (mean, lo, hi)
    assert M.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        M.bootstrap_ci([])
    with pytest.raises(ValueError):
        M.bootstrap_ci([1.0, float("nan")])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=40), st.integers(0, 10**6))
def test_bootstrap_interval_brackets_mean_property(values, seed):
    mean, lo, hi = M.bootstrap_ci(values, n=200, seed=seed)
    assert lo - 1e-9 <= hi + 1e-9
    assert min(values) - 1e-9 <= lo and hi <= max(values) + 1e-9


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, size=100)
    a = base + 0.1  # a is uniformly better by 0.1 on every user
    d, lo, hi = M.paired_bootstrap_ci(a, base, n=300)
    assert d == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    noisy = base + rng.normal(0, 0.05, size=100)
    d, lo, hi = M.paired_bootstrap_ci(noisy, base, n=300)
    assert lo < d < hi and lo < 0 < hi
    with pytest.raises(ValueError):
        M.paired_bootstrap_ci([1, 2], [1])


def test_bootstrap_stat():
    vals = np.array([0.0, 1.0, 1.0, 0.0])
    res = M.bootstrap_stat(4, lambda idx: float(vals[idx].mean()), n=200)
    assert res["value"][0] == 0.5 and res["value"][1] <= 0.5 <= res["value"][2]
