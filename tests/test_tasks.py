import textwrap
from pathlib import Path

import pytest

from p2p_edge.errors import InputError
from p2p_edge.eval.task import Task
from p2p_edge.eval.task_config import default_config_path, load_config

BASE = """
[splits]
seed = 3
test_fraction = 0.2
val_fraction = 0.2

[splits.ood]
k = 3
n_test_clusters = 1

[tasks.rate]
dataset = "data/reviews.jsonl"
kind = "rating"
input_fields = ["text"]
target_field = "rating"
prompt = "Review: {text}\\nStars 1-5? Number only."
max_input_chars = 20
metrics = ["mae", "rmse", "accuracy"]

[tasks.title]
dataset = "/abs/reviews.jsonl.gz"
kind = "generation"
input_fields = ["text"]
target_field = "title"
prompt = "{text}\\nTitle:"
metrics = ["rouge1", "rougeL"]

[tasks.cat]
dataset = "${P2P_TEST_DATA:-here}/news.jsonl"
kind = "classification"
input_fields = ["title", "text"]
target_field = "label"
labels = ["POLITICS", "U.S. NEWS", "NEWS", "WORLD NEWS"]
prompt = "{title}: {text}\\nOne of: {labels}."
metrics = ["accuracy", "macro_f1"]
global_item_ids = true

[tasks.autocat]
dataset = "news.jsonl"
kind = "classification"
input_fields = ["text"]
target_field = "label"
labels = { auto_top_k = 2 }
prompt = "{text} -> {labels}"
metrics = ["accuracy"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tasks.toml"
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.delenv("P2P_TEST_DATA", raising=False)
    return load_config(write(tmp_path, BASE))


def test_load_basic(cfg, tmp_path):
    assert list(cfg.tasks) == ["rate", "title", "cat", "autocat"]
    rate = cfg.tasks["rate"]
    assert rate.kind == "rating" and rate.scale == (1, 5)
    assert rate.dataset == (tmp_path / "data" / "reviews.jsonl").resolve()
    assert rate.requires == ("text", "rating")
    assert cfg.tasks["title"].dataset == Path("/abs/reviews.jsonl.gz")
    assert cfg.tasks["cat"].dataset == (tmp_path / "here" / "news.jsonl").resolve()
    assert cfg.splits.seed == 3 and cfg.splits.ood.k == 3 and cfg.splits.method == "shuffle"
    assert cfg.tasks["cat"].global_item_ids and not rate.global_item_ids


def test_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("P2P_TEST_DATA", "/data/x")
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.tasks["cat"].dataset == Path("/data/x/news.jsonl")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("P2P_TEST_DATA", "rel")
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.tasks["cat"].dataset == tmp_path / "rel" / "news.jsonl"


def test_env_unset_without_default(tmp_path, monkeypatch):
    monkeypatch.delenv("P2P_NOPE", raising=False)
    p = write(tmp_path, BASE.replace("data/reviews.jsonl", "${P2P_NOPE}/r.jsonl"))
    with pytest.raises(InputError, match="P2P_NOPE") as e:
        load_config(p)
    assert e.value.field == "tasks.rate.dataset"


@pytest.mark.parametrize(
    "old,new,key",
    [
        ('kind = "rating"', 'kind = "regression"', "tasks.rate.kind"),
        ('metrics = ["mae", "rmse", "accuracy"]', 'metrics = ["mae", "rouge1"]', "tasks.rate.metrics"),
        ('prompt = "Review: {text}\\nStars 1-5? Number only."', 'prompt = "Review: {body}"', "tasks.rate.prompt"),
        ('prompt = "Review: {text}\\nStars 1-5? Number only."', 'prompt = "no fields"', "tasks.rate.prompt"),
        ('prompt = "Review: {text}\\nStars 1-5? Number only."', 'prompt = "{text.upper}"', "tasks.rate.prompt"),
        ("max_input_chars = 20", "max_input_chars = 0", "tasks.rate.max_input_chars"),
        ("max_input_chars = 20", 'max_input_chars = "20"', "tasks.rate.max_input_chars"),
        ("max_input_chars = 20", "max_input_chars = 20\ncolour = 1", "tasks.rate.colour"),
        ('target_field = "rating"', 'target_field = "text"', "tasks.rate.target_field"),
        ("test_fraction = 0.2", "test_fraction = 0.9", "splits.val_fraction"),
        ("test_fraction = 0.2", "test_fraction = 1.5", "splits.test_fraction"),
        ("n_test_clusters = 1", "n_test_clusters = 3", "splits.ood.n_test_clusters"),
        # the per-query protocol is gone: an old config that still has it is told so, by key
        ("[splits.ood]", "[protocol]\ntrain_queries_per_user = 2\n\n[splits.ood]", "protocol"),
        ("global_item_ids = true", "global_item_ids = true\nprotocol = { train_queries_per_user = 7 }",
         "tasks.cat.protocol"),
        ("labels = { auto_top_k = 2 }", "labels = { auto_top_k = 0 }", "tasks.autocat.labels.auto_top_k"),
        ("labels = { auto_top_k = 2 }", "", "tasks.autocat.labels"),
        ('target_field = "rating"', 'target_field = "rating"\nlabels = ["a"]', "tasks.rate.labels"),
        ('kind = "rating"', 'kind = "rating"\nscale = [5, 1]', "tasks.rate.scale"),
        ('target_field = "rating"', 'target_field = "rating"\nrequires = ["text"]', "tasks.rate.requires"),
        ('labels = ["POLITICS",', 'labels = ["politics", "POLITICS",', "tasks.cat.labels"),
    ],
)
def test_config_errors_name_the_key(tmp_path, old, new, key):
    assert old in BASE
    p = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(InputError) as e:
        load_config(p)
    assert e.value.field == key
    assert str(p) in str(e.value) and key in str(e.value)
    assert "\n" not in str(e.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.toml")
    p = write(tmp_path, "[tasks\nx = 1\n")
    with pytest.raises(InputError, match="invalid TOML") as e:
        load_config(p)
    assert e.value.line == 1
    with pytest.raises(InputError, match="no tasks") as e:
        load_config(write(tmp_path, "[splits]\nseed = 1\n"))
    with pytest.raises(InputError) as e:
        load_config(write(tmp_path, BASE + "\n[extra]\nx = 1\n"))
    assert e.value.field == "extra"


def test_render_truncates_and_lists_labels(cfg):
    rate = cfg.tasks["rate"]
    item = {"id": "1", "text": "one two three four five six seven", "rating": 4}
    # 20 chars = "one two three four f" -> cut at the last space within the last 20%
    assert rate.render(item) == "Review: one two three four\nStars 1-5? Number only."
    assert rate.render({"text": " short ", "rating": 1}) == "Review: short\nStars 1-5? Number only."
    cat = cfg.tasks["cat"]
    out = cat.render({"title": "T", "text": "body", "label": "POLITICS"})
    assert out == "T: body\nOne of: POLITICS, U.S. NEWS, NEWS, WORLD NEWS, Other."
    with pytest.raises(ValueError):
        rate.render({"id": "x", "text": "  "})


def test_targets(cfg):
    rate = cfg.tasks["rate"]
    assert rate.target({"rating": 4}) == "4" and rate.target({"rating": 5.0}) == "5" and rate.target({"rating": "3"}) == "3"
    for bad in (0, 6, 3.5, "x", True):
        with pytest.raises(ValueError):
            rate.target({"rating": bad})
    assert not rate.qualifies({"text": "t", "rating": 7}) and rate.qualifies({"text": "t", "rating": 2})
    assert not rate.qualifies({"text": "", "rating": 2}) and not rate.qualifies({"text": "t"})
    cat = cfg.tasks["cat"]
    assert cat.target({"label": "politics"}) == "POLITICS"
    assert cat.target({"label": "SPORTS"}) == "Other"
    assert cat.label_space == ("POLITICS", "U.S. NEWS", "NEWS", "WORLD NEWS", "Other")
    title = cfg.tasks["title"]
    assert title.target({"title": "  Great strings \n"}) == "Great strings"


def test_parse_rating(cfg):
    rate = cfg.tasks["rate"]
    assert rate.parse("Rating: 4 stars") == "4"
    assert rate.parse("I'd say 5") == "5"
    assert rate.parse("5/5") == "5"
    assert rate.parse("3.5 stars") == "4"  # rounded half up
    assert rate.parse("10/10, would buy again") is None
    assert rate.parse("0 or 9, then 2") == "2"
    for junk in ("junk", "", "five stars", None):
        assert rate.parse(junk) is None


def test_parse_classification(cfg):
    cat = cfg.tasks["cat"]
    assert cat.parse("Category: politics") == "POLITICS"
    assert cat.parse("It is U.S. News.") == "U.S. NEWS"  # the longer label wins over NEWS
    assert cat.parse("world news") == "WORLD NEWS"
    assert cat.parse("news") == "NEWS"
    assert cat.parse("Politics, maybe World News") == "POLITICS"  # earliest mention
    assert cat.parse("other") == "Other"
    assert cat.parse("newsletter sports") is None  # word boundaries
    assert cat.parse("junk") is None and cat.parse(None) is None


def test_parse_generation(cfg):
    assert cfg.tasks["title"].parse("  A title \n") == "A title"


def test_auto_labels(cfg):
    auto = cfg.tasks["autocat"]
    assert auto.labels is None
    with pytest.raises(RuntimeError, match="resolve_labels"):
        auto.target({"label": "A"})
    items = [{"text": "t", "label": x} for x in ["B", "A", "C", "A", "B", "D", "Other"]] + [{"label": "Z"}]
    r = auto.resolve_labels(items)
    assert r.labels == ("A", "B")  # tie on count -> alphabetical; "Z" lacks text, "Other" is never a top label
    assert r.label_space == ("A", "B", "Other")
    assert r.target({"label": "c"}) == "Other"
    assert r.render({"text": "x"}) == "x -> A, B, Other"


def test_no_other_label_drops_unknown(tmp_path):
    p = write(tmp_path, BASE.replace('labels = ["POLITICS",', 'other_label = ""\nlabels = ["POLITICS",'))
    cat = load_config(p).tasks["cat"]
    assert cat.label_space == ("POLITICS", "U.S. NEWS", "NEWS", "WORLD NEWS")
    assert not cat.qualifies({"title": "t", "text": "x", "label": "SPORTS"})
    assert cat.qualifies({"title": "t", "text": "x", "label": "news"})


def test_score_and_example_scores(cfg):
    rate = cfg.tasks["rate"]
    s = rate.score(["4", None, "5"], ["5", "1", "5"])
    assert s["mae"] == pytest.approx((1 + 4 + 0) / 3)
    assert s["rmse"] == pytest.approx(((1 + 16 + 0) / 3) ** 0.5)
    assert s["accuracy"] == pytest.approx(1 / 3)
    assert s["parse_rate"] == pytest.approx(2 / 3)
    assert rate.example_scores(None, "1") == {"mae": 4.0, "sq_err": 16.0, "accuracy": 0.0}
    cat = cfg.tasks["cat"]
    s = cat.score(["POLITICS", "NEWS", None], ["POLITICS", "Other", "NEWS"])
    assert s["accuracy"] == pytest.approx(1 / 3)
    # POLITICS f1=1, NEWS tp0 fp1 fn1 -> 0, Other tp0 fp0 fn1 -> 0
    assert s["macro_f1"] == pytest.approx(1 / 3)
    assert cat.example_scores("NEWS", "NEWS") == {"accuracy": 1.0}
    title = cfg.tasks["title"]
    s = title.score(["the cat sat", ""], ["the cat", "x"])
    assert s["rouge1"] == pytest.approx((0.8 + 0) / 2)
    assert set(title.example_scores("a", "a")) == {"rouge1", "rougeL"}
    with pytest.raises(ValueError):
        rate.score(["1"], [])


def test_task_is_frozen(cfg):
    with pytest.raises(Exception):
        cfg.tasks["rate"].kind = "generation"  # type: ignore[misc]
    assert isinstance(cfg.tasks["rate"], Task)


def test_repo_config_loads():
    """configs/tasks.toml (no data needed: paths are not opened)."""
    cfg = load_config(default_config_path())
    assert {"amazon_rating", "amazon_title", "news_headline", "news_category"} <= set(cfg.tasks)
    t = cfg.tasks
    assert t["amazon_rating"].metrics == ("mae", "rmse", "accuracy")
    assert t["news_category"].auto_top_k == 8 and t["news_category"].other_label == "Other"
    assert t["news_category"].global_item_ids and not t["amazon_rating"].global_item_ids
    assert cfg.splits.test_fraction == 0.1 and cfg.splits.val_fraction == 0.1
