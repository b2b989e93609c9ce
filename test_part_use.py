import copy
import importlib.util
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import data_fetch
import minicollab
from minicollab import Collab, CollabNN, DotProductBias, train

torch.set_num_threads(1)  # tiny tensors; and two busy cores make torch's threads wait on each other


# ---- using a Collab: predict, recommend, similar, fold_in, save and load, train() ----

# Users 10, 20, 30; items 'a'..'e', where 'a' and 'c' are two ids of one film.
TITLES = ["Alien (1979)", "Star Wars (1977)", "Alien (1979)", "Silence of the Lambs, The (1991)",
          "Godfather, The (1972)"]
USER_FACTORS, USER_BIAS = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.0, 0.5, -0.5]
MOVIE_FACTORS = [[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.6, 0.8], [-1.0, 0.0]]
MOVIE_BIAS = [0.3, -0.2, 0.1, 0.45, -0.5]
RATED = [8, 0, 14, 6]  # user index * 5 + item index, as a file lists them: 20-d, 10-a, 30-e, 20-b


def hand_collab(kind="dot", users=(10, 20, 30), items="abcde", rated=RATED, loss="mse"):
    """A Collab of 3 users and 5 items whose dot model's numbers are set by hand."""
    if kind == "dot":
        model = DotProductBias(3, 5, 2)
        with torch.no_grad():
            for name, v in [("user_factors", USER_FACTORS), ("user_bias", USER_BIAS),
                            ("movie_factors", MOVIE_FACTORS), ("movie_bias", MOVIE_BIAS)]:
                getattr(model, name).copy_(torch.tensor(v))
    else:
        torch.manual_seed(0)
        model = CollabNN((3, 2), (5, 3), (6, 4))
    return Collab(model, list(users), list(items), dict(zip(items, TITLES)), rated, loss)


def by_hand():
    """The dot model's (3, 5) predictions: 5.5 * sigmoid(u . m + user bias + movie bias)."""
    x = np.array(USER_FACTORS) @ np.array(MOVIE_FACTORS).T
    return 5.5 / (1 + np.exp(-(x + np.array(USER_BIAS)[:, None] + MOVIE_BIAS)))


def rank2(n, n_users, n_items, seed=0):
    """n distinct (user, item) pairs rated round(3 + a rank-2 dot product), clipped to 1..5."""
    g = np.random.default_rng(seed)
    pairs = g.choice(n_users * n_items, n, replace=False)
    u, i = pairs // n_items, pairs % n_items
    a, b = g.normal(size=(n_users, 2)), g.normal(size=(n_items, 2))
    return u, i, np.clip(np.round(3 + (a[u] * b[i]).sum(1)), 1, 5)


def write_csv(path, u, i, r):
    path.write_text("user,item,rating\n" + "".join(f"{a},{b},{c:g}\n" for a, b, c in zip(u, i, r)))
    return path


def table_rows(out):
    """The epoch table's rows, split; asserts fastai's header is there."""
    lines = out.splitlines()
    head = [s.split() for s in lines].index(["epoch", "train_loss", "valid_loss", "time"])
    return [s.split() for s in lines[head + 1:] if re.fullmatch(r"\d+ +[\d.]+ +[\d.]+ +[\d.]+", s)]


def test_predict_equals_the_formula_by_hand_and_broadcasts_as_numpy():
    c = hand_collab()
    grid = c.predict(np.array([10, 20, 30])[:, None], list("abcde"))  # (n_users, n_items)
    assert grid.shape == (3, 5) and np.allclose(grid, by_hand(), rtol=1e-6)
    assert np.allclose(c.predict([30, 10], "d"), by_hand()[[2, 0], 3], rtol=1e-6)
    for users, items, message in [(99, "a", "unknown user 99"), ([10, 20], ["a", "z"], "item 'z'")]:
        with pytest.raises(KeyError, match=message):
            c.predict(users, items)


# 10 rated 'a', so its copy 'c' is no news; 20 is shown one Alien, the id predicted higher
RECOMMENDED = {10: ["d", "b", "e"], 20: ["a", "e"], 30: ["d", "a", "b"]}


def test_recommend_skips_rated_films_in_the_predicted_order_one_id_per_title():
    c = hand_collab()
    for user, ids in RECOMMENDED.items():
        top = c.recommend(user, 5)
        assert [o for o, _, _ in top] == ids
        assert [t for _, t, _ in top] == [TITLES["abcde".index(o)] for o in ids]
        expected = by_hand()[user // 10 - 1, ["abcde".index(o) for o in ids]]
        assert [p for _, _, p in top] == pytest.approx(expected, rel=1e-6)
        assert all(c.similar(o, 2) and float(c.predict(user, o)[0]) == p for o, _, p in top)
    assert [o for o, _, _ in c.recommend(10, 2)] == ["d", "b"]


def test_rated_codes_in_file_order_give_the_recommendations_of_sorted_codes():
    shuffled, ordered = hand_collab(rated=RATED), hand_collab(rated=sorted(RATED))
    assert shuffled.rated.tolist() == sorted(RATED)
    assert all(shuffled.recommend(u) == ordered.recommend(u) for u in (10, 20, 30))


@pytest.mark.parametrize("query, same_as, message", [
    ("a", "a", None), ("Alien (1979)", "a", None), ("ALIEN (1979)", "a", None),
    ("star wars (1977)", "b", None),
    ("Silence of the Lambs", None, "did you mean 'Silence of the Lambs, The (1991)'"),
    ("Godfather (1972)", None, "did you mean 'Godfather, The (1972)'"),
    ("zz", None, "no item 'zz'; items look like 'Alien (1979)'")])
def test_similar_finds_an_item_by_id_or_title_in_any_case_else_names_the_real_title(
        query, same_as, message):
    c = hand_collab()
    if message:
        with pytest.raises(ValueError, match=re.escape(message)) as e:
            c.similar(query)
        assert "\n" not in str(e.value)
    else:
        assert c.similar(query) == c.similar(same_as) != []


def test_a_did_you_mean_hint_names_each_film_once():
    with pytest.raises(ValueError, match="did you mean") as e:
        hand_collab().similar("Aliens (1986)")
    hinted = re.findall(r"'([^']+)'", str(e.value).split("did you mean")[1])
    assert len(hinted) == len(set(hinted))


def test_similar_never_lists_the_same_film_and_follows_the_cosine():
    c = hand_collab()  # 'a' is (1, 0): 'c' (0.9, 0.1) is its own copy, then d 0.6, b 0, e -1
    assert c.similar("a", 5) == [("d", TITLES[3]), ("b", TITLES[1]), ("e", TITLES[4])]
    assert [t for _, t in c.similar("b", 5)] == [TITLES[3], "Alien (1979)", TITLES[4]]


def test_biases_order_films_by_movie_bias_one_per_film():
    low, high = hand_collab().biases(5)
    assert [o for o, _ in low] == ["e", "b", "c", "d"]  # 'a', Alien's other id, comes later
    assert [o for o, _ in high] == ["d", "a", "b", "e"]
    assert [t for _, t in high] == [TITLES[3], "Alien (1979)", TITLES[1], TITLES[4]]


def test_a_collab_built_from_numpy_values_saves_loads_bit_identically_and_folds_in(tmp_path):
    uids, iids = np.unique(np.array([30, 10, 20, 10])), np.unique(np.array([3, 1, 2, 4]))
    torch.manual_seed(0)
    model = DotProductBias(3, 4, 2, y_range=np.array([0.0, 5.5]))
    c = Collab(model, uids, iids, dict(zip(iids, ["A (1)", "B (2)", "C (3)", "D (4)"])),
               np.array([5, 0, 2]))
    c.save(tmp_path / "m.pt")
    loaded, grid = Collab.load(tmp_path / "m.pt"), (uids[:, None], iids)
    assert np.array_equal(loaded.predict(*grid), c.predict(*grid))
    assert loaded.titles == {1: "A (1)", 2: "B (2)", 3: "C (3)", 4: "D (4)"}
    loaded.fold_in(np.int64(40), np.array([1, 2]), np.array([5.0, 1.0]))
    assert loaded.users.ids == [10, 20, 30, 40] and loaded.predict(40, [1, 2]).shape == (2,)


def plain(v):
    """True if v is made only of dicts, lists, strs, ints, floats and tensors."""
    if isinstance(v, (dict, list)):
        return all(map(plain, [*v.keys(), *v.values()] if isinstance(v, dict) else v))
    return isinstance(v, (str, int, float, torch.Tensor))


@pytest.mark.parametrize("kind, users, items, loss", [
    ("dot", (10, 20, 30), "abcde", "mse"), ("nn", ("ann", "bob", "cy"), (1, 2, 3, 4, 5), "bce")])
def test_save_load_round_trips_predictions_ids_and_only_plain_values(tmp_path, kind, users,
                                                                       items, loss):
    c = hand_collab(kind, users, items, loss=loss)
    c.save(tmp_path / "m.pt")
    loaded, grid = Collab.load(tmp_path / "m.pt"), (np.array(users)[:, None], list(items))
    assert type(loaded.model) is type(c.model) and np.array_equal(loaded.predict(*grid),
                                                                 c.predict(*grid))
    assert (loaded.users.ids, loaded.items.ids, loaded.titles, loaded.loss) == \
        (list(users), list(items), c.titles, loss)
    assert torch.equal(loaded.rated, c.rated) and loaded.recommend(users[0]) == \
        c.recommend(users[0])
    assert plain(torch.load(tmp_path / "m.pt", weights_only=True))
    assert not [g for g in torch.serialization.get_safe_globals()  # no allow-list of our own
                if not getattr(g, "__module__", "torch").startswith("torch")]


def test_load_refuses_a_pickled_object_without_running_it(tmp_path):
    marker = tmp_path / "it-ran"  # unpickled, RunsCode() makes this folder
    runs_code = type("RunsCode", (), {"__reduce__": lambda self: (os.mkdir, (str(marker),))})
    torch.save(dict(state=runs_code()), tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="is no minicollab model"):
        Collab.load(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the file is as dangerous as it looks
    assert marker.exists()


@pytest.mark.parametrize("bad", ["truncated", "random", "empty", "foreign", "missing"])
def test_load_of_a_bad_file_is_a_one_line_value_error(tmp_path, bad):
    path, good = tmp_path / "m.pt", tmp_path / "good.pt"
    hand_collab().save(good)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")  # torch's, not ours
    if bad != "missing":
        path.write_bytes(dict(truncated=good.read_bytes()[:good.stat().st_size // 2], empty=b"",
                              random=np.random.default_rng(0).bytes(500),
                              foreign=(tmp_path / "foreign.pt").read_bytes())[bad])
    with pytest.raises(ValueError) as e:
        Collab.load(path)
    assert str(e.value).startswith(f"no model file at {path};" if bad == "missing" else
                                   f"{path} is no minicollab model (") and "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["dot", "nn"])
def test_fold_in_lowers_the_new_users_error_and_leaves_every_other_row_bit_identical(kind):
    u, i, r = rank2(4000, 80, 80)
    new = u == 0  # user 0 is held out of training, then folded in
    c = train(u[~new], i[~new], r[~new], model=kind, log=lambda s: None)
    before = {k: p.detach().clone() for k, p in c.model.named_parameters()}
    grid = (np.arange(1, 80)[:, None], np.arange(80))
    predicted = c.predict(*grid)
    untrained, error = copy.deepcopy(c), lambda c: np.mean((c.predict(0, i[new]) - r[new]) ** 2)
    untrained.fold_in(0, i[new], r[new], steps=0)  # a row of zeros: where fold_in starts
    c.fold_in(0, i[new], r[new])
    assert error(c) < 0.5 * error(untrained)
    assert np.array_equal(c.predict(*grid), predicted)
    for k, p in c.model.named_parameters():
        assert torch.equal(p[:79] if "user" in k else p, before[k]), k
    assert c.users.ids == list(range(1, 80)) + [0]
    assert {o for o, _, _ in c.recommend(0, 80)} == set(range(80)) - set(i[new])


def test_fold_in_default_wd_is_10_over_the_number_of_ratings():
    rows = []
    for wd in [None, 10 / 3, 0.0]:  # three ratings
        (c := hand_collab()).fold_in(40, ["a", "b", "d"], [5.0, 1.0, 4.0], wd=wd)
        rows.append(c.model.user_factors[3].detach())
    assert torch.equal(rows[0], rows[1]) and not torch.equal(rows[0], rows[2])


@pytest.mark.parametrize("user, items, ratings, error, message", [
    (10, ["a"], [5.0], ValueError, "fold_in: user 10 is in the model already"),
    ("x", ["a"], [5.0], ValueError, "fold_in: user 'x' is no id like 10"),
    (40, ["a", "b"], [5.0], ValueError, "fold_in: give one finite rating per item"),
    (40, [], [], ValueError, "fold_in: give one finite rating per item"),
    (40, ["a"], [float("nan")], ValueError, "fold_in: give one finite rating per item"),
    (40, ["z"], [5.0], KeyError, "unknown item 'z'"),
    (40, ["a"], [5.0], ValueError, "fold_in: a cross-entropy model has no ratings to fit")])
def test_a_bad_fold_in_is_one_line_and_changes_nothing(user, items, ratings, error, message):
    c = hand_collab(loss="bce" if "cross-entropy" in message else "mse")
    with pytest.raises(error, match=message) as e:
        c.fold_in(user, items, ratings)
    assert "\n" not in str(e.value) and c.users.ids == [10, 20, 30]
    assert c.model.user_factors.shape == (3, 2) and c.rated.tolist() == sorted(RATED)


def test_train_from_python_gives_the_valid_loss_the_command_line_prints(tmp_path, capsys):
    u, i, r = rank2(450, 30, 30)
    assert minicollab.main(["--ratings", str(write_csv(tmp_path / "r.csv", u, i, r)),
                            "--seed", "0"]) == 0
    printed = [row[2] for row in table_rows(capsys.readouterr().out)]
    c = train(u, i, r, seed=0, log=lambda s: None)
    assert [f"{h['valid_loss']:.6f}" for h in c.history] == printed
    assert len(printed) == minicollab.DEFAULTS["dot", "mse"]["epochs"]
    assert all(h.keys() == {"train_loss", "valid_loss", "time"} for h in c.history)


def test_train_with_cross_entropy_gives_chances_and_a_top_n():
    u, i, r = rank2(450, 30, 30)
    c = train(u, i, r, loss="bce", epochs=2, log=lambda s: None)
    p = c.predict(np.arange(30)[:, None], np.arange(30))
    assert p.shape == (30, 30) and (p > 0).all() and (p < 1).all() and c.loss == "bce"
    assert c.top_n.keys() == {"recall", "ndcg", "popular_recall", "popular_ndcg"}
    assert all(0 <= v <= 1 for v in c.top_n.values()) and len(c.history) == 2


CACHE = pathlib.Path(os.environ.get("MINICOLLAB_DATA", "~/.cache/minicollab")).expanduser()


@pytest.mark.skipif(not list(CACHE.glob("ml-100k*")), reason="end to end: needs ML-100k cached")
def test_end_to_end_on_movielens_100k_the_books_loss_and_neighbours():
    d = data_fetch.load("ml-100k")
    c = train(d["user"], d["item"], d["rating"], d["titles"], log=lambda s: None)
    assert c.history[-1]["valid_loss"] < 0.85  # the book: about 0.82
    assert c.similar("Star Wars (1977)")[0][1] == "Empire Strikes Back, The (1980)"


# ---- the command line ----

MOVIES = ["Star Wars (1977)", "Silence of the Lambs, The (1991)", "Godfather, The (1972)",
          "Alien (1979)", "Brazil (1985)"]


@pytest.fixture
def data(tmp_path, monkeypatch):
    """In the working folder: r.csv (20 of 6 users x 5 items), movies.csv, sub/, link.csv."""
    pairs = [(u, i) for u in range(1, 7) for i in range(1, 6) if (u + i) % 3]  # 1 rated 1, 3, 4
    write_csv(tmp_path / "r.csv", *zip(*[(u, i, 1 + 4 * (u * i % 3 > 0)) for u, i in pairs]))
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f'{i},"{t}",Drama\n' for i, t in enumerate(MOVIES, 1)))
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.csv").symlink_to(tmp_path / "r.csv")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(argv, capsys):
    return (minicollab.main(argv), *capsys.readouterr())


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here")
NO_PLOT = pytest.mark.skipif(not importlib.util.find_spec("matplotlib"), reason="no matplotlib")


@pytest.mark.parametrize("flags, message", [
    ("--epochs 0", "argument --epochs: 0 is out of range: give 1 or more"),
    ("--epochs 2.5", "argument --epochs: invalid int value: '2.5'"),
    ("--epochs nan", "invalid int value: 'nan'"), ("--lr 0", "--lr: 0 is out of range: give more"),
    ("--lr nan", "--lr: nan is out of range"), ("--lr inf", "--lr: inf is out of range"),
    ("--lr 1e400", "--lr: 1e400 is out of range"), ("--lr fast", "invalid float value: 'fast'"),
    ("--wd -1", "--wd: -1 is out of range: give 0 or more"), ("--wd inf", "--wd: inf is out"),
    ("--wd nan", "--wd: nan is out"), ("--wd x", "--wd: invalid float value: 'x'"),
    ("--bs 0", "--bs: 0 is out of range"), ("--bs 1e3", "--bs: invalid int value: '1e3'"),
    ("--bs inf", "--bs: invalid int value: 'inf'"), ("--n-factors 0", "--n-factors: 0 is out"),
    ("--n-factors x", "--n-factors: invalid int"), ("--seed -1", "--seed: -1 is out of range"),
    ("--seed nan", "--seed: invalid int value"), ("--valid-pct inf", "--valid-pct: inf is out"),
    ("--valid-pct 0", "--valid-pct: 0 is out of range: give between 0 and 1"),
    ("--valid-pct 1", "--valid-pct: 1 is out"), ("--valid-pct nan", "--valid-pct: nan is out"),
    ("--top 0", "--top: 0 is out of range"), ("--top 1.5", "--top: invalid int value: '1.5'"),
    ("--model nn --layers 0", "--layers: 0 is out"), ("--model nn --layers 8,-1", "-1 is out"),
    ("--model nn --layers 8,,4", "argument --layers: invalid sizes value: '8,,4'"),
    ("--layers 16", "--layers are CollabNN's hidden layers: add --model nn"),
    ("--model cnn", "argument --model: invalid choice: 'cnn'"), ("--bogus", "unrecognized arg"),
    ("--loss mae", "argument --loss: invalid choice: 'mae'"), ("--load m --wd 2", "ignores --wd"),
    ("--load m.pt --ratings r.csv --user-col user", "--load ignores --ratings, --user-col"),
    ("--lr-find --epochs 3", "--lr-find ignores --epochs"), ("--save sub", "cannot write sub"),
    ("--lr-find --save m.pt --top 3", "--lr-find ignores --save, --top"),
    ("--save nodir/m.pt", "cannot write nodir/m.pt: name a file in a folder that exists"),
    pytest.param("--plot nodir/p.png", "cannot write nodir/p.png", marks=NO_PLOT),
    pytest.param("--plot sub", "cannot write sub", marks=NO_PLOT),
    pytest.param("--save m.png --plot m.png", "--save and --plot both name m.png", marks=NO_PLOT),
    ("--save r.csv", "r.csv is this run's data: save to another file"),
    ("--save ./r.csv", "./r.csv is this run's data"), ("--plot link.csv", "link.csv is this run's"),
    ("--save movies.csv", "movies.csv is this run's data"),
    ("--recommend 99", "unknown user '99'"), ("--recommend one", "unknown user 'one'"),
    ("--similar Zardoz", "no item 'Zardoz'; items look like 'Star Wars (1977)'"),
    ("--similar 'Godfather (1972)'", "did you mean 'Godfather, The (1972)'"),
    pytest.param("--device cuda", "device 'cuda' is not usable here", marks=NO_GPU),
    ("--device tpu", "device 'tpu' is not usable here: give auto, cpu, or cuda with a GPU"),
    ("--load nope.pt", "no model file at nope.pt; train one with --save nope.pt"),
    ("--load r.csv", "r.csv is no minicollab model")])
def test_command_line_refusals_are_one_error_line_before_training(data, capsys, flags, message):
    given = (data / "r.csv").read_bytes(), (data / "movies.csv").read_bytes()
    argv = shlex.split(flags)
    code, out, err = cli(argv if argv[0] == "--load" else ["--ratings", "r.csv", *argv], capsys)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "<lambda>" not in err and "train_loss" not in out
    assert ((data / "r.csv").read_bytes(), (data / "movies.csv").read_bytes()) == given


@pytest.mark.parametrize("loss, top", [("mse", 5.5), ("bce", 1.0)])
def test_a_default_run_prints_the_epoch_table_the_ranking_line_and_a_top_list(data, capsys, loss,
                                                                              top):
    code, out, err = cli(["--ratings", "r.csv", "--loss", loss], capsys)
    epochs = range(minicollab.DEFAULTS["dot", loss]["epochs"])
    assert (code, err) == (0, "") and [row[0] for row in table_rows(out)] == list(map(str, epochs))
    lines = out.splitlines()
    ranking = next(n for n, s in enumerate(lines) if s.startswith("top 10 for"))
    assert re.fullmatch(r"top 10 for all \d+ users with a liked valid item: recall@10 [\d.]+, "
                        r"NDCG@10 [\d.]+; most popular [\d.]+, [\d.]+", lines[ranking])
    assert ranking > lines.index(next(s for s in lines if s.startswith("epoch")))
    head = lines.index(next(s for s in lines if s.startswith("top 2 for user 1")))
    shown = [s.split(None, 1) for s in lines[head + 1:head + 3]]
    assert sorted(t for _, t in shown) == sorted(MOVIES[1::3])  # user 1 rated items 1, 3 and 4
    assert all(0 < float(p) < top for p, _ in shown)
    assert ("(chance of rating)" in lines[head]) == (loss == "bce")


def test_a_default_run_when_movies_csv_lists_the_lambs_but_no_one_rated_them(data, capsys):
    write_csv(data / "r.csv", [1, 2, 3, 1], [1, 1, 3, 3], [5, 3, 4, 2])  # items 1 and 3
    code, out, err = cli(["--ratings", "r.csv", "--epochs", "1"], capsys)
    assert (code, err) == (0, "") and "most like" not in out


def test_cross_entropy_when_no_validation_rating_is_liked(tmp_path, capsys):
    r = np.ones(20)
    r[minicollab.split(20)[0][0]] = 5  # one liked rating, in training
    path = write_csv(tmp_path / "r.csv", np.arange(20) % 6, np.arange(20) % 5, r)
    code, out, err = cli(["--ratings", str(path), "--loss", "bce", "--epochs", "1"], capsys)
    assert code == 0 or err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("shape, seed", [((450, 30, 30), 0), ((450, 30, 30), 1),
                                         ((2000, 50, 60), 2), ((2000, 50, 60), 3)])
def test_lr_find_suggests_a_rate_that_beats_a_tiny_one(tmp_path, capsys, shape, seed):
    u, i, r = rank2(*shape, seed)  # (ratings, users, items)
    path = write_csv(tmp_path / "r.csv", u, i, r)
    code, out, err = cli(["--ratings", str(path), "--lr-find", "--seed", str(seed)], capsys)
    lr = float(re.fullmatch(r"suggested learning rate: (\S+)", out.splitlines()[-1])[1])
    assert code == 0 and err == "" and 1e-3 < lr < 1 and "train_loss" not in out
    losses = [train(u, i, r, lr=rate, seed=seed, log=lambda s: None).history[-1]["valid_loss"]
              for rate in (lr, 1e-8)]
    assert losses[0] < 0.9 * losses[1]


def test_save_then_load_and_recommend(data, capsys):
    assert cli(["--ratings", "r.csv", "--epochs", "1", "--save", "m.pt"], capsys)[0] == 0
    code, out, err = cli(["--load", "m.pt", "--recommend", "1", "--top", "1"], capsys)
    (_, title, p), = Collab.load("m.pt").recommend(1, 1)
    assert (code, err) == (0, "") and out == f"top 1 for user 1:\n  {p:.2f}  {title}\n"
    assert title in (MOVIES[1], MOVIES[4]) and "train_loss" not in out


def test_plot_writes_a_png(data, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = cli(["--ratings", "r.csv", "--epochs", "1", "--plot", "p.png"], capsys)
    assert (code, err) == (0, "") and "saved the PCA plot to p.png" in out
    assert (data / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def copy_program(folder):
    """minicollab.py and data_fetch.py, copied into folder as a package."""
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for m in (minicollab, data_fetch):
        shutil.copy(m.__file__, folder)
    return folder


def program(folder, command):
    """A bash command line run in folder, torch on one thread, with a data cache of its own."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MINICOLLAB_DATA=str(folder / "cache"))
    return subprocess.run(command.replace("python ", f"{shlex.quote(sys.executable)} "), cwd=folder,
                          shell=True, executable="/bin/bash", env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_a_model_saved_by_the_program_loads_from_a_package_whose_main_finds_its_data_fetch(
        data, capsys, monkeypatch):
    pkg = copy_program(data / "pkg")
    r = program(pkg, f"python minicollab.py --ratings {data / 'r.csv'} --epochs 1 --save m.pt")
    assert r.returncode == 0 and r.stderr == "" and "saved the model to m.pt" in r.stdout
    monkeypatch.syspath_prepend(str(data))
    monkeypatch.setitem(sys.modules, "data_fetch", None)  # `import data_fetch` would fail
    try:
        packaged = importlib.import_module("pkg.minicollab")
        c = packaged.Collab.load(pkg / "m.pt")
        assert type(c) is packaged.Collab and c.users.ids == [1, 2, 3, 4, 5, 6]
        assert np.array_equal(c.predict(1, [2, 5]), Collab.load(pkg / "m.pt").predict(1, [2, 5]))
        code = packaged.main(["--ratings", "r.csv", "--epochs", "1", "--recommend", "1"])
        out, err = capsys.readouterr()
        assert (code, err) == (0, "") and "pkg.data_fetch" in sys.modules
        assert out.splitlines()[-3] == "top 2 for user 1:"
    finally:
        for name in ["pkg", "pkg.minicollab", "pkg.data_fetch"]:
            sys.modules.pop(name, None)


def test_a_closed_stdout_ends_the_program_quietly(tmp_path):
    folder = copy_program(tmp_path / "prog")
    items = [f"a-film-whose-id-is-long-enough-to-fill-the-pipe-{n:05d}" for n in range(4000)]
    rows = [(2, o, 1 + n % 5) for n, o in enumerate(items)] + [(1, o, 4) for o in items[:5]]
    write_csv(tmp_path / "r.csv", *zip(*rows))  # user 1's 3,995 lines: far more than a pipe holds
    r = program(folder, f"set -o pipefail; python minicollab.py --ratings {tmp_path / 'r.csv'} "
                "--epochs 1 --recommend 1 --top 4000 | head -1")
    assert (r.returncode, r.stdout, r.stderr) == (0, "4,005 ratings, 2 users, 4,000 items\n", "")


def test_import_prints_nothing_and_makes_no_cache(tmp_path):
    folder = copy_program(tmp_path / "prog")
    r = program(folder, "python -c 'import minicollab'")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "") and not (folder / "cache").exists()
