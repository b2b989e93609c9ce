"""Tests for minicollab.py, one claim of fastbook chapter 8 each, checked two ways or against a number worked out
by hand; then data_fetch.py, on tiny zips served from 127.0.0.1; then one end-to-end run on the real MovieLens-100k."""

import copy
import hashlib
import http.server
import io
import math
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import data_fetch
import minicollab
from data_fetch import DataError, cache_dir, load_movielens
from minicollab import (DEFAULTS, Adam, Collab, CollabError, CollabNN, DotProductBias, IdMap, add_weight_decay,
                        create_params, emb_sz, fit_one_cycle, lr_find, one_cycle, parse_args, read_ratings,
                        sigmoid_range, split)

HERE = pathlib.Path(__file__).resolve().parent
# These tensors are tiny: one thread is faster, and it keeps OpenMP threads from spinning against another
# process's (with two busy cores, an ML-100k epoch went from 0.07 s to 14 s).
torch.set_num_threads(1)
TABLE_HEADER = ["epoch", "train_loss", "valid_loss", "time"]  # fastai's epoch table


# ---- minicollab.py: tiny data sets ------------------------------------------------------------------------------

def synthetic(n_users=30, n_items=40, rank=2, seed=0):
    """Every user rates every item: 3 + 0.7 * a rank-2 dot product, clipped to 0.5..5.5. (users, items, ratings)."""
    g = torch.Generator().manual_seed(seed)
    users, items = (t.flatten() for t in torch.meshgrid(torch.arange(n_users), torch.arange(n_items), indexing="ij"))
    u, v = torch.randn(n_users, rank, generator=g), torch.randn(n_items, rank, generator=g)
    return users, items, (3 + 0.7 * (u[users] * v[items]).sum(1)).clamp(0.5, 5.5)  # each (1200,)


def split_data(data, seed=0):
    """(train, valid) lists of tensors, 80/20, as the command line splits them."""
    train_idx, valid_idx = split(len(data[2]), 0.2, seed)
    return [t[train_idx] for t in data], [t[valid_idx] for t in data]


def fit_synthetic(seed=0, epochs=10, lr_max=3e-2, log=None, **kwargs):
    """A seeded DotProductBias (5 factors) trained on synthetic(): (model, history, valid)."""
    train, valid = split_data(synthetic())
    torch.manual_seed(seed)
    model = DotProductBias(30, 40, n_factors=5, y_range=(0, 6))
    history = fit_one_cycle(model, train, valid, epochs, lr_max, bs=64, seed=seed, log=log or (lambda s: None),
                            **kwargs)
    return model, history, valid


# ---- minicollab.py: embeddings, the models, weight decay -------------------------------------------------------

def test_embedding_lookup_is_a_one_hot_matrix_product():
    torch.manual_seed(0)
    weights = create_params([5, 3])  # 5 users, 3 factors
    idx = torch.tensor([3, 0, 3, 1])
    one_hot = F.one_hot(idx, 5).float()  # (4, 5)
    assert weights[idx].shape == (4, 3) and torch.equal(weights[idx], one_hot @ weights)
    g = torch.randn(4, 3)  # an upstream gradient
    (by_index,) = torch.autograd.grad((weights[idx] * g).sum(), weights)
    (by_matmul,) = torch.autograd.grad(((one_hot @ weights) * g).sum(), weights)
    assert torch.allclose(by_index, by_matmul)
    # by hand: row 3 was looked up twice, row 2 and 4 never
    assert torch.equal(by_index[3], g[0] + g[2]) and torch.equal(by_index[0], g[1]) and torch.equal(by_index[1], g[3])
    assert not by_index[2].any() and not by_index[4].any()


def test_dot_product_bias_is_the_books_formula_written_with_one_hot_matrices():
    torch.manual_seed(0)
    model = DotProductBias(4, 3, n_factors=2, y_range=(0, 5.5))
    users, items = torch.tensor([0, 3, 3, 1]), torch.tensor([2, 2, 0, 1])
    ou, oi = F.one_hot(users, 4).float(), F.one_hot(items, 3).float()  # (4, 4), (4, 3)
    dot = ((ou @ model.user_factors) * (oi @ model.item_factors)).sum(1)  # (4,)
    by_hand = torch.sigmoid(dot + ou @ model.user_bias + oi @ model.item_bias) * 5.5
    pred = model(users, items)
    assert pred.shape == (4,) and torch.allclose(pred, by_hand)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(pred.sum(), params), torch.autograd.grad(by_hand.sum(), params)):
        assert a.shape == b.shape and torch.allclose(a, b)
    # and one number by hand: factors (1, 2) . (0.5, -0.25) = 0, biases ln 3 and 0: sigmoid(ln 3) * 5.5 = 4.125
    with torch.no_grad():
        model.user_factors[0], model.item_factors[2] = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -0.25])
        model.user_bias[0], model.item_bias[2] = math.log(3), 0.0
    assert model(torch.tensor([0]), torch.tensor([2])).item() == pytest.approx(4.125, abs=1e-6)


def test_sigmoid_range_bounds_and_midpoint():
    x = torch.tensor([-1e4, -5.0, 0.0, math.log(3), 5.0, 1e4])
    y = sigmoid_range(x, 0, 5.5)
    assert y.shape == (6,) and (y.diff() > 0).all()
    assert y[2].item() == 2.75  # the midpoint of (0, 5.5)
    assert y[3].item() == pytest.approx(4.125)  # sigmoid(ln 3) = 3/4
    assert y[0].item() == 0.0 and y[-1].item() == 5.5  # saturates at the ends, never beyond
    assert torch.allclose(sigmoid_range(x, 1, 5), 1 + 4 / (1 + torch.exp(-x)))  # the formula, written out
    assert torch.allclose(sigmoid_range(-x, 1, 5), 6 - sigmoid_range(x, 1, 5))  # symmetric about the midpoint


def test_create_params_is_a_parameter_drawn_from_n_0_001():
    torch.manual_seed(0)
    p = create_params([1000, 50])
    assert isinstance(p, nn.Parameter) and p.requires_grad and p.shape == (1000, 50) and p.dtype == torch.float32
    assert abs(p.std().item() - 0.01) < 0.0005 and abs(p.mean().item()) < 0.0003
    assert not torch.equal(create_params([1000, 50]), p)  # each call draws afresh
    torch.manual_seed(0)
    assert torch.equal(create_params([1000, 50]), p)  # ...from torch's seeded generator


def test_emb_sz_is_fastais_rule_of_thumb():
    assert emb_sz(943) == 74 and emb_sz(1682) == 102  # round(1.6 * 943**0.56) = round(74.1); 1682: round(101.9)
    assert emb_sz(10**7) == 600  # capped
    model = CollabNN(943, 1682)
    assert model.user_factors.shape == (943, 74) and model.item_factors.shape == (1682, 102)
    first = next(m for m in model.layers if isinstance(m, nn.Linear))
    assert first.in_features == 74 + 102 and first.out_features == 100


@pytest.mark.parametrize("make", [lambda: DotProductBias(6, 5, n_factors=3, y_range=(1, 5)),
                                  lambda: CollabNN(6, 5, layers=(8, 4), y_range=(1, 5))], ids=["dot", "nn"])
@pytest.mark.parametrize("bs", [7, 1])
def test_models_return_shape_bs_inside_y_range(make, bs):
    torch.manual_seed(0)
    model = make()
    users, items = torch.randint(6, (bs,)), torch.randint(5, (bs,))
    pred = model(users, items)
    assert pred.shape == (bs,)  # not (bs, 1): (bs, 1) - (bs,) would broadcast to (bs, bs)
    assert (pred - torch.full((bs,), 3.0)).shape == (bs,)
    assert ((pred > 1) & (pred < 5)).all()
    with torch.no_grad():  # huge weights saturate the sigmoid, and the output still stays in range
        for p in model.parameters():
            p.mul_(1e4)
    pred = model(users, items)
    assert pred.shape == (bs,) and ((pred >= 1) & (pred <= 5)).all()


def test_weight_decay_by_hand_equals_autograd_of_the_l2_penalty():
    torch.manual_seed(0)
    users, items, ratings = synthetic()
    model = DotProductBias(31, 40, n_factors=5)  # user 30 never appears: its gradient is weight decay alone
    params, wd = list(model.parameters()), 0.1
    F.mse_loss(model(users, items), ratings).backward()
    add_weight_decay(params, wd)
    by_hand = [p.grad.clone() for p in params]
    model.zero_grad()
    penalty = wd / 2 * sum((p ** 2).sum() for p in params)
    (F.mse_loss(model(users, items), ratings) + penalty).backward()
    for a, p in zip(by_hand, params):
        assert torch.allclose(a, p.grad, rtol=1e-5, atol=1e-8)
    assert torch.equal(by_hand[0][30], wd * model.user_factors[30].detach())  # d/dp of wd/2 p^2 = wd p
    assert by_hand[0][30].abs().sum() > 0


# ---- minicollab.py: Adam and the one-cycle schedule ------------------------------------------------------------

def test_adam_first_step_by_hand():
    # one parameter p = 1 with loss p^2 (gradient 2): both running means, debiased, give back 2 and 2^2
    p = nn.Parameter(torch.tensor([1.0]))
    opt = Adam([p])
    (p ** 2).sum().backward()
    opt.step(lr=0.1, mom=0.9)
    assert p.item() == pytest.approx(1 - 0.1 * 2 / (2 + 1e-5), abs=1e-7) and p.grad is None


def test_adam_by_hand_equals_torch_adam_step_for_step():
    torch.manual_seed(0)
    users, items, ratings = synthetic()
    ours = DotProductBias(30, 40, n_factors=5)
    theirs, start = copy.deepcopy(ours), copy.deepcopy(ours)
    lr, mom = 1e-2, 0.9
    opt = Adam(ours.parameters())
    torch_opt = torch.optim.Adam(theirs.parameters(), lr=lr, betas=(mom, 0.99), eps=1e-5)
    for step in range(8):
        batch = slice(100 * step, 100 * step + 100)
        for model in (ours, theirs):
            F.mse_loss(model(users[batch], items[batch]), ratings[batch]).backward()
        opt.step(lr, mom)
        torch_opt.step()
        torch_opt.zero_grad()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), f"step {step}"
    moved = [(a - b).abs().max().item() for a, b in zip(ours.parameters(), start.parameters())]
    assert min(moved) > 1e-3  # every parameter went somewhere: the comparison above was not of two still models


def fastai_sched_cos(start, end, pos):
    """fastai's SchedCos, written as fastai writes it (callback/schedule.py)."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def fastai_combined_cos(pct, start, middle, end, pct_start=0.25):
    """fastai's combined_cos(pct_start, start, middle, end) evaluated at pct: two SchedCos phases."""
    if pct < pct_start:
        return fastai_sched_cos(start, middle, pct / pct_start)
    return fastai_sched_cos(middle, end, (pct - pct_start) / (1 - pct_start))


def test_one_cycle_endpoints_peak_and_mid_phase_by_hand():
    lr_max = 1e-2
    assert one_cycle(0.0, lr_max) == pytest.approx((lr_max / 25, 0.95))  # start
    assert one_cycle(0.25, lr_max) == pytest.approx((lr_max, 0.85))  # peak, at pct_start
    # half-way through the warm-up, cos(pi/2) = 0: the mean of the two ends
    assert one_cycle(0.125, lr_max) == pytest.approx(((lr_max / 25 + lr_max) / 2, 0.90))
    # a third of the way through the annealing, cos(pi/3) = 1/2: three quarters of the way back from the end
    lr, mom = one_cycle(0.5, lr_max)
    end_lr = one_cycle(1.0, lr_max)[0]
    assert lr == pytest.approx(end_lr + 0.75 * (lr_max - end_lr)) and mom == pytest.approx(0.85 + 0.25 * 0.10)
    assert 0 < end_lr < lr_max / 1e4 and one_cycle(1.0, lr_max)[1] == pytest.approx(0.95)  # end


def test_one_cycle_is_monotone_in_each_phase():
    warm = [one_cycle(p, 1.0) for p in np.linspace(0, 0.25, 50, endpoint=False)]
    anneal = [one_cycle(p, 1.0) for p in np.linspace(0.25, 1, 150)]
    for phase, lr_sign in ((warm, 1), (anneal, -1)):
        lrs, moms = np.array(phase).T
        assert (lr_sign * np.diff(lrs) > 0).all() and (-lr_sign * np.diff(moms) > 0).all()  # momentum mirrors lr


def test_one_cycle_momentum_and_warm_up_match_fastais_formula():
    for pct in np.linspace(0, 1, 41):
        lr, mom = one_cycle(pct, 3e-3)
        assert mom == pytest.approx(fastai_combined_cos(pct, 0.95, 0.85, 0.95), abs=1e-12)
        if pct < 0.25:
            assert lr == pytest.approx(fastai_combined_cos(pct, 3e-3 / 25, 3e-3, 3e-3 / 1e5), rel=1e-12)


def test_one_cycle_annealing_matches_fastais_formula():
    # fastai's fit_one_cycle: combined_cos(pct_start, lr_max/div, lr_max, lr_max/div_final)
    assert one_cycle(1.0, 1e-2)[0] == pytest.approx(1e-2 / 1e5, rel=1e-9)
    for pct in np.linspace(0.25, 1, 31):
        assert one_cycle(pct, 1e-2)[0] == pytest.approx(fastai_combined_cos(pct, 1e-2 / 25, 1e-2, 1e-2 / 1e5))


# ---- minicollab.py: the data: id maps, reading ratings, the split -----------------------------------------------

def test_id_map_round_trips_strings_and_ints_sorted():
    users = IdMap(["bob", "alice", "carol", "alice"])
    assert users.ids.tolist() == ["alice", "bob", "carol"] and len(users) == 3  # unique, sorted
    idx = users.encode(["carol", "alice", "carol"])
    assert idx.tolist() == [2, 0, 2] and users.decode(idx).tolist() == ["carol", "alice", "carol"]
    items = IdMap(np.array([10, 9, 100, 9]))
    assert items.ids.tolist() == [9, 10, 100]  # as numbers: 10 after 9, unlike the strings "10" < "9"
    assert items.encode([100, 9, 10]).tolist() == [2, 0, 1] and items.decode([2, 0, 1]).tolist() == [100, 9, 10]
    assert items.decode(items.encode(items.ids)).tolist() == items.ids.tolist()


def test_id_map_unknown_or_wrong_type_id_is_a_key_error_naming_it():
    users, items = IdMap(["alice", "bob"]), IdMap([9, 10, 100])
    with pytest.raises(KeyError, match="unknown id.*dave"):
        users.encode(["alice", "dave"])
    with pytest.raises(KeyError, match="unknown id.*11"):
        items.encode([9, 11])
    with pytest.raises(KeyError, match="5.* is a.*int.*but these ids are strings"):
        users.encode([5])
    with pytest.raises(KeyError, match="x.* is a.*str.*but these ids are numbers"):
        items.encode(["x"])


def test_id_map_error_names_the_id_as_the_user_wrote_it():
    messages = []
    for ids, bad in ((["alice", "bob"], "dave"), ([9, 10], 11), (["alice"], 5), ([9], "x")):
        with pytest.raises(KeyError) as e:
            IdMap(ids).encode([bad])
        messages.append(e.value.args[0])
    assert messages[:2] == ["unknown id 'dave'", "unknown id 11"]
    assert not any("np." in m for m in messages)


def test_id_map_encodes_a_million_ids_in_one_call():
    ids = IdMap(np.arange(0, 2000, 2))  # 1000 even ids
    raw = np.random.default_rng(0).choice(ids.ids, 1_000_000)
    idx = ids.encode(raw)
    assert idx.shape == (1_000_000,) and np.array_equal(idx, raw // 2)


RATINGS_CSV = "userId,movieId,rating,timestamp\n1,10,4.0,100\n2,10,3.5,101\n1,9,5,102\n3,20,1,103\n"


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def test_read_ratings_takes_the_first_three_columns_by_default(tmp_path):
    users, items, ratings = read_ratings(write(tmp_path / "r.csv", RATINGS_CSV))
    assert users.tolist() == [1, 2, 1, 3] and items.tolist() == [10, 10, 9, 20]
    assert users.dtype == items.dtype == np.int64 and ratings.dtype == np.float32
    assert ratings.tolist() == [4.0, 3.5, 5.0, 1.0] and ratings.sum() == 13.5


def test_read_ratings_picks_columns_by_name_in_a_tsv(tmp_path):
    text = "who\twhen\tscore\tmovie\nalice\t5\t4.5\tAlien\nbob\t6\t2\tHeat\nalice\t7\t3\tHeat\n"
    path = write(tmp_path / "r.tsv", text, encoding="utf-8-sig")  # a BOM, as Excel writes, before "who"
    users, items, ratings = read_ratings(path, user_col="who", item_col="movie", rating_col="score")
    assert users.tolist() == ["alice", "bob", "alice"] and items.tolist() == ["Alien", "Heat", "Heat"]
    assert ratings.tolist() == [4.5, 2.0, 3.0]


def test_read_ratings_errors_name_the_problem(tmp_path):
    good = write(tmp_path / "r.csv", RATINGS_CSV)
    with pytest.raises(CollabError, match="no column 'stars'; columns found: userId, movieId, rating, timestamp"):
        read_ratings(good, rating_col="stars")
    with pytest.raises(CollabError, match=r"columns found: user, item\b"):
        read_ratings(write(tmp_path / "two.csv", "user,item\n1,2\n"))
    with pytest.raises(CollabError, match=r"line 4: rating 'five' is not a number"):
        read_ratings(write(tmp_path / "word.csv", RATINGS_CSV.replace("1,9,5,", "1,9,five,")))
    with pytest.raises(CollabError, match=r"line 3: rating is nan"):
        read_ratings(write(tmp_path / "nan.csv", RATINGS_CSV.replace("2,10,3.5,", "2,10,nan,")))
    with pytest.raises(CollabError, match=r"line 5: rating is inf"):
        read_ratings(write(tmp_path / "inf.csv", RATINGS_CSV.replace("3,20,1,", "3,20,inf,")))
    with pytest.raises(CollabError, match=r"line 3: too few fields"):
        read_ratings(write(tmp_path / "short.csv", RATINGS_CSV.replace("2,10,3.5,101", "2,10")))
    with pytest.raises(CollabError, match="no ratings file at"):
        read_ratings(tmp_path / "missing.csv")


def test_split_sizes_seed_disjoint_and_covering():
    train, valid = split(10, 0.2, seed=0)
    assert (len(train), len(valid)) == (8, 2)
    train, valid = split(1000, 0.2, seed=0)
    assert (len(train), len(valid)) == (800, 200)
    assert torch.equal(torch.cat([train, valid]).sort().values, torch.arange(1000))  # disjoint and covering
    again = split(1000, 0.2, seed=0)
    assert torch.equal(again[0], train) and torch.equal(again[1], valid)  # the seed decides
    assert not torch.equal(split(1000, 0.2, seed=1)[1], valid)
    assert [len(s) for s in split(2, 0.2)] == [1, 1]  # never an empty side


@pytest.mark.parametrize("n, valid_pct", [(1, 0.2), (0, 0.2), (10, 0.0), (10, 1.0), (10, 1.5), (10, -0.1)])
def test_split_rejects_too_few_rows_and_bad_fractions(n, valid_pct):
    with pytest.raises(CollabError, match="at least two ratings" if n < 2 else "between 0 and 1"):
        split(n, valid_pct)


# ---- minicollab.py: fit_one_cycle and lr_find -------------------------------------------------------------------

def test_fit_one_cycle_history_and_printed_fastai_table(capsys):
    model, history, valid = fit_synthetic(epochs=3, log=print)
    lines = capsys.readouterr().out.splitlines()
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all(set(h) == {"epoch", "train_loss", "valid_loss", "time"} for h in history)
    assert lines[0].split() == TABLE_HEADER and len(lines) == 1 + 3
    for h, line in zip(history, lines[1:]):
        fields = line.split()
        assert [line.index(f) for f in fields] == [lines[0].index(c) for c in TABLE_HEADER]  # columns line up
        assert int(fields[0]) == h["epoch"] and re.fullmatch(r"\d+\.\d\d", fields[3])
        assert float(fields[1]) == pytest.approx(h["train_loss"], abs=1e-6)
        assert float(fields[2]) == pytest.approx(h["valid_loss"], abs=1e-6)
    with torch.no_grad():  # valid_loss is the MSE on the validation set, computed here another way
        mse = F.mse_loss(model(valid[0], valid[1]), valid[2]).item()
    assert history[-1]["valid_loss"] == pytest.approx(mse, rel=1e-5)


def test_training_on_low_rank_data_gets_far_below_the_variance():
    _, history, valid = fit_synthetic(epochs=10)
    variance = valid[2].var(unbiased=False).item()  # the MSE of always predicting the mean rating
    assert variance > 0.5 and history[-1]["valid_loss"] < 0.05 * variance
    assert history[-1]["train_loss"] < 0.1 * history[0]["train_loss"]


def test_the_same_seed_gives_the_same_table_twice():
    def table(seed):
        lines = []
        fit_synthetic(seed=seed, epochs=3, log=lines.append)
        return [line.split()[:3] for line in lines]  # all but the time column
    first = table(0)
    assert len(first) == 4 and first == table(0) and first != table(1)


def test_a_too_high_learning_rate_is_a_clear_error():
    with pytest.raises(CollabError, match="NaN.*lower learning rate"):  # 1e30 overflows the factors to inf - inf
        fit_synthetic(epochs=2, lr_max=1e30)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(epochs=-1), dict(lr_max=0.0), dict(lr_max=-1e-3),
                                 dict(lr_max=float("nan")), dict(bs=0), dict(wd=-1e-4)])
def test_fit_one_cycle_rejects_bad_settings(bad):
    settings = dict(epochs=1, lr_max=1e-2, bs=64, wd=0.0) | bad
    train, valid = split_data(synthetic())
    with pytest.raises(CollabError, match="must be positive"):
        fit_one_cycle(DotProductBias(30, 40, 5), train, valid, log=lambda s: None, **settings)


def test_lr_find_suggests_a_rate_in_range_and_leaves_the_weights_alone():
    train, _ = split_data(synthetic())
    torch.manual_seed(0)
    model = DotProductBias(30, 40, n_factors=5)
    before = copy.deepcopy(model.state_dict())
    suggestion, lrs, losses = lr_find(model, train, start_lr=1e-7, end_lr=10, bs=64)
    assert 1e-7 <= suggestion <= 10 and suggestion == pytest.approx(lrs[int(np.argmin(losses))] / 10)
    assert len(lrs) == len(losses) > 10 and lrs[0] == pytest.approx(1e-7)
    assert np.allclose(np.diff(np.log(lrs)), math.log(1e8) / 99)  # exponential steps from 1e-7 to 10 in 100
    assert min(losses) < 0.9 * losses[0]  # it did train while it swept...
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)  # ...and undid it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gives_the_cpu_table():
    train, valid = split_data(synthetic())
    histories = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = DotProductBias(30, 40, n_factors=5, y_range=(0, 6)).to(device)
        on = lambda ts: [t.to(device) for t in ts]
        histories.append(fit_one_cycle(model, on(train), on(valid), 3, 3e-2, bs=64, log=lambda s: None))
        pred = model(*on(valid)[:2])
        assert pred.device.type == device and pred.shape == (len(valid[2]),)
    for cpu, cuda in zip(*histories):
        assert cuda["valid_loss"] == pytest.approx(cpu["valid_loss"], rel=1e-3)


# ---- minicollab.py: the command line ----------------------------------------------------------------------------

@pytest.fixture
def tiny_csv(tmp_path):
    """30 ratings: 6 users x 5 items, rating 1 + (user * item) % 5."""
    rows = "".join(f"{u},{i},{1 + u * i % 5}\n" for u in range(1, 7) for i in range(1, 6))
    return write(tmp_path / "tiny.csv", "user,item,rating\n" + rows)


def table_rows(out):
    """The rows of the epoch table in printed output, split into fields; asserts the header is there."""
    lines = out.splitlines()
    head = next(n for n, line in enumerate(lines) if line.split() == TABLE_HEADER)
    rows = []
    for line in lines[head + 1:]:
        if not re.fullmatch(r"\d+ +\d+\.\d+ +\d+\.\d+ +\d+\.\d\d", line.strip()):
            break
        rows.append(line.split())
    return rows


def run_main(argv, capsys):
    code = minicollab.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_command_line_trains_and_prints_the_table(tiny_csv, capsys):
    code, out, err = run_main(["--ratings", str(tiny_csv), "--epochs", "2", "--device", "cpu"], capsys)
    assert code == 0 and "Traceback" not in err and "error" not in err
    assert [row[0] for row in table_rows(out)] == ["0", "1"]  # one row per epoch
    assert "30 ratings, 6 users, 5 items" in out + err


def error_line(code, err):
    """A bad input ends in exit status 1 and one line 'error: ...' on stderr, no traceback; returns that line."""
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("flags, message", [
    (["--rating-col", "stars"], "no column 'stars'; columns found: user, item, rating"),
    (["--valid-pct", "1.5"], "valid-pct must be between 0 and 1, got 1.5"),
    (["--epochs", "0"], "epochs=0"),
    (["--bs", "0"], "bs=0"),
    (["--lr", "-0.01"], "lr=-0.01"),
    (["--factors", "0"], "--factors and --layers must be positive"),
    (["--epochs", "1", "--save", "/no/such/dir/m.pt"], "cannot save the model to /no/such/dir/m.pt"),
])
def test_command_line_bad_settings_are_one_line_errors(tiny_csv, capsys, flags, message):
    code, _, err = run_main(["--ratings", str(tiny_csv), "--device", "cpu", *flags], capsys)
    assert message in error_line(code, err)


def test_command_line_bad_files_are_one_line_errors(tmp_path, capsys):
    code, _, err = run_main(["--ratings", str(tmp_path / "missing.csv"), "--device", "cpu"], capsys)
    assert f"no ratings file at {tmp_path / 'missing.csv'}" in error_line(code, err)
    words = write(tmp_path / "words.csv", "user,item,rating\n1,1,4\n2,1,four\n")
    code, _, err = run_main(["--ratings", str(words), "--device", "cpu"], capsys)
    assert "line 3: rating 'four' is not a number" in error_line(code, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here")
def test_command_line_cuda_without_a_gpu_is_a_one_line_error(tiny_csv, capsys):
    code, _, err = run_main(["--ratings", str(tiny_csv), "--device", "cuda"], capsys)
    assert "no CUDA GPU" in error_line(code, err) and "--device cpu" in err


def test_script_runs_as_a_program(tiny_csv):
    r = subprocess.run([sys.executable, "minicollab.py", "--ratings", str(tiny_csv), "--epochs", "1"], cwd=HERE,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert [row[0] for row in table_rows(r.stdout)] == ["0"]  # one epoch, one row


def test_import_prints_nothing_downloads_nothing_and_leaves_cuda_alone(tmp_path):
    env = dict(os.environ, MINICOLLAB_DATA=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", "import minicollab, torch; print(torch.cuda.is_initialized())"],
                       cwd=HERE, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "False\n", "")
    assert not (tmp_path / "cache").exists()


# ---- minicollab.py: using the trained model ---------------------------------------------------------------------

TITLES4 = {"a": "Alien (1979)", "b": "Brazil (1985)", "c": "Casablanca (1942)", "d": "Dune (1984)"}
TINY_CONFIG = dict(model=dict(kind="dot", n_users=3, n_items=4, n_factors=2, layers=(100, 50), y_range=(0, 5.5)))


def tiny_collab(kind="dot", rated=((0, 0), (0, 1), (1, 2))):
    """Users 10, 20, 30 x items 'a'..'d' with hand-set weights; user 10 rated a and b, 20 rated c, 30 nothing."""
    torch.manual_seed(0)
    model = minicollab.make_model(kind, 3, 4, 2)
    if kind == "dot":
        with torch.no_grad():
            model.user_factors[:] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]])
            model.user_bias[:] = torch.tensor([0.1, -0.2, 0.0])
            model.item_factors[:] = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.5]])
            model.item_bias[:] = torch.tensor([0.3, -0.1, 0.0, 0.2])
    config = copy.deepcopy(TINY_CONFIG)
    config["model"]["kind"] = kind
    rated_users, rated_items = zip(*rated) if rated else ((), ())
    return Collab(model, config, IdMap([10, 20, 30]), IdMap(list("abcd")), dict(TITLES4), rated_users, rated_items)


def rated_by(c, user):
    """The raw item ids a user rated in training, read from the CSR arrays."""
    u = c.users.encode([user])[0]
    return set(c.items.decode(c.rated[c.ptr[u]:c.ptr[u + 1]]).tolist())


def test_predict_on_raw_ids_is_the_formula_by_hand():
    c = tiny_collab()
    got = c.predict([10, 30, 20], ["a", "d", "c"])
    uf, ub, itf, ib = (p.detach().numpy() for p in (c.model.user_factors, c.model.user_bias,
                                                      c.model.item_factors, c.model.item_bias))
    u, i = [0, 2, 1], [0, 3, 2]
    assert got.shape == (3,) and np.allclose(got, 5.5 / (1 + np.exp(-((uf[u] * itf[i]).sum(1) + ub[u] + ib[i]))))
    assert got[0] == pytest.approx(5.5 / (1 + math.exp(-2.4)))  # (1, 0) . (2, 0) + 0.1 + 0.3 = 2.4
    # the same model under string user ids and integer item ids gives the same numbers
    s = Collab(c.model, c.config, IdMap(["ann", "bob", "cy"]), IdMap([1, 2, 3, 4]), {}, [], [])
    assert np.array_equal(s.predict(["ann", "cy", "bob"], [1, 4, 3]), got)


@pytest.mark.parametrize("users, items, message", [
    ([99], ["a"], "unknown id 99"), ([10], ["z"], "unknown id 'z'"),
    (["10"], ["a"], "id '10' is a str, but these ids are numbers"),
    ([10], [1], "id 1 is a int, but these ids are strings")])
def test_predict_unknown_or_wrong_type_id_is_a_key_error_naming_it(users, items, message):
    with pytest.raises(KeyError) as e:
        tiny_collab().predict(users, items)
    assert e.value.args[0] == message


def test_recommend_skips_rated_items_and_follows_the_predicted_order():
    c = tiny_collab()
    # by hand, user . item + biases: user 10 on c 1.1, d -0.7; user 30 on a 1.3, c 0, d -0.55, b -1.1
    assert [t for t, _ in c.recommend(10)] == [TITLES4["c"], TITLES4["d"]]
    assert [t for t, _ in c.recommend(30, n=3)] == [TITLES4[k] for k in "acd"]
    by_title = {t: k for k, t in TITLES4.items()}
    for user in (10, 20, 30):
        for n in (1, 2, 10):
            recs = c.recommend(user, n)
            ids, scores = [by_title[t] for t, _ in recs], [r for _, r in recs]
            assert len(recs) == min(n, 4 - len(rated_by(c, user))) and not rated_by(c, user) & set(ids)
            assert scores == sorted(scores, reverse=True)
            assert np.array_equal(np.float32(scores), c.predict([user] * len(ids), ids))
    with pytest.raises(KeyError, match="unknown id 99"):
        c.recommend(99)


def test_recommend_for_a_user_who_rated_everything_is_empty():
    c = tiny_collab(rated=[(0, i) for i in range(4)])
    assert rated_by(c, 10) == set("abcd") and c.recommend(10) == [] and len(c.recommend(20)) == 4


@pytest.mark.parametrize("str_users", [False, True], ids=["int-users", "str-users"])
def test_save_load_predicts_bit_identically_without_the_data(tmp_path, str_users):
    c = tiny_collab()
    if str_users:  # and integer item ids with integer title keys, as MovieLens has
        c = Collab(c.model, c.config, IdMap(["ann", "bob", "cy"]), IdMap([1, 2, 3, 4]),
                   {1: "Alien (1979)", 2: "Brazil (1985)"}, [0, 0, 1], [0, 1, 2])
    c.save(tmp_path / "m.pt")
    assert os.listdir(tmp_path) == ["m.pt"]  # no .partial left behind
    d = Collab.load(tmp_path / "m.pt")
    users, items = np.repeat(c.users.ids, 4), np.tile(c.items.ids, 3)  # every pair
    assert np.array_equal(d.predict(users, items), c.predict(users, items))
    assert all(torch.equal(v, d.model.state_dict()[k]) for k, v in c.model.state_dict().items())
    assert [d.recommend(u, 10) for u in c.users.ids] == [c.recommend(u, 10) for u in c.users.ids]  # rated survive
    assert d.titles == c.titles and [type(k) for k in d.titles] == [type(k) for k in c.titles]
    for a, b in ((d.users, c.users), (d.items, c.items)):
        assert a.ids.tolist() == b.ids.tolist() and a.ids.dtype.kind == b.ids.dtype.kind  # int stays int, str str
    assert type(d.model) is DotProductBias and d.config == c.config


class Payload:
    """Unpickling this calls os.mkdir: what a malicious model file could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_load_uses_weights_only_so_a_pickled_object_never_runs(tmp_path):
    tiny_collab().save(tmp_path / "m.pt")
    ck = torch.load(tmp_path / "m.pt", weights_only=True)
    ck["config"]["extra"] = Payload(str(tmp_path / "it-ran"))
    torch.save(ck, tmp_path / "evil.pt")
    with pytest.raises(CollabError, match="evil.pt is not a valid minicollab model file"):
        Collab.load(tmp_path / "evil.pt")
    assert not (tmp_path / "it-ran").exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the file is armed: a plain load runs it
    assert (tmp_path / "it-ran").is_dir()


def edited_copy(good, path, digest=False):
    """good's weights with one value changed, saved to path; with digest=True the SHA-256 is updated too."""
    ck = torch.load(good, weights_only=True)
    ck["state"]["item_bias"][2] += 1e-3
    if digest:
        ck["digest"] = minicollab._digest(ck["state"])
    torch.save(ck, path)
    return path


def test_load_of_a_bad_file_is_a_one_line_collab_error(tmp_path):
    good = tmp_path / "good.pt"
    tiny_collab().save(good)
    raw = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(len(raw)))
    torch.save({"format": "minicollab-1"}, tmp_path / "other.pt")  # a valid torch file, but not a model
    edited_copy(good, tmp_path / "edited.pt")
    for name in ("truncated.pt", "random.pt", "other.pt", "edited.pt", "missing.pt"):
        with pytest.raises(CollabError) as e:
            Collab.load(tmp_path / name)
        msg = str(e.value)
        assert str(tmp_path / name) in msg and "\n" not in msg
        assert ("no model file at" if name == "missing.pt" else "is not a valid minicollab model file") in msg
    # it is the digest that catches the edit: with the digest updated, the edited weights load and predict otherwise
    resigned = Collab.load(edited_copy(good, tmp_path / "resigned.pt", digest=True))
    assert resigned.predict([30], ["c"])[0] != Collab.load(good).predict([30], ["c"])[0]


def test_edited_weights_are_caught_under_python_dash_o(tmp_path):
    good = tmp_path / "good.pt"
    tiny_collab().save(good)
    source = HERE / "minicollab.py"
    optimized = {"__name__": "minicollab_under_dash_o"}  # the module as `python -O` compiles it: asserts removed
    exec(compile(source.read_text(), str(source), "exec", optimize=1), optimized)
    with pytest.raises(optimized["CollabError"], match="not a valid minicollab model file"):
        optimized["Collab"].load(edited_copy(good, tmp_path / "edited.pt"))


def zero_user_predictions(model, items):
    """What a user with zero factors and zero bias gets: the items' biases alone, via add_user_rows."""
    model = copy.deepcopy(model)
    minicollab.add_user_rows(model, 1)
    with torch.no_grad():
        return model(torch.full_like(items, len(model.user_factors) - 1), items).numpy()


@pytest.mark.parametrize("kind", ["dot", "nn"])
def test_fold_in_lowers_the_new_users_error_and_leaves_everyone_else_alone(kind):
    c = tiny_collab(kind)
    before = {k: v.clone() for k, v in c.model.state_dict().items()}
    items, ratings = ["a", "b", "d"], np.float32([5.0, 1.0, 4.0])
    zero_row = zero_user_predictions(c.model, torch.as_tensor(c.items.encode(items)))
    if kind == "dot":  # a zero row is the items' biases alone, computed another way
        assert np.allclose(zero_row, sigmoid_range(before["item_bias"][[0, 1, 3]], 0, 5.5).numpy())
    c.fold_in(40, items, ratings)
    mse_before, mse_after = ((zero_row - ratings) ** 2).mean(), ((c.predict([40] * 3, items) - ratings) ** 2).mean()
    assert mse_after < (0.5 if kind == "dot" else 1) * mse_before  # an untrained MLP barely listens to the user
    after = c.model.state_dict()
    assert after["user_factors"].shape[0] == 4 and c.users.ids.tolist() == [10, 20, 30, 40]
    for k, v in before.items():  # the trained users' rows, every item, the MLP: bit-identical
        assert torch.equal(after[k][:len(v)], v), k
    assert all(p.requires_grad for p in c.model.parameters())  # unfrozen again, ready to train on
    assert rated_by(c, 40) == set(items) and [t for t, _ in c.recommend(40)] == [TITLES4["c"]]
    with pytest.raises(CollabError, match="user 20 is already in the model"):
        c.fold_in(20, ["a"], [3.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_saved_from_the_gpu_loads_onto_the_gpu_and_recommends_the_same(tmp_path):
    c = tiny_collab()
    c.model.cuda()
    c.save(tmp_path / "m.pt")
    d = Collab.load(tmp_path / "m.pt", "cuda")  # the CSR of rated items must stay on the CPU
    assert next(d.model.parameters()).is_cuda and d.recommend(10, 2) == c.recommend(10, 2)


@pytest.mark.parametrize("kind", ["dot", "nn"])
def test_save_after_fold_in_keeps_the_new_user(tmp_path, kind):
    c = tiny_collab(kind)
    c.fold_in(40, ["a", "d"], [5.0, 2.0])
    c.save(tmp_path / "m.pt")
    d = Collab.load(tmp_path / "m.pt")
    assert d.users.ids.tolist() == [10, 20, 30, 40] and rated_by(d, 40) == {"a", "d"}
    assert np.array_equal(d.predict([40] * 4, list("abcd")), c.predict([40] * 4, list("abcd")))
    assert d.recommend(40) == c.recommend(40) and len(d.recommend(40)) == 2
    d.fold_in(50, ["b"], [1.0])  # and a loaded model takes another
    d.save(tmp_path / "m.pt")
    assert Collab.load(tmp_path / "m.pt").users.ids.tolist() == [10, 20, 30, 40, 50]


def test_fold_in_of_a_user_id_of_the_wrong_type_is_refused():
    c = tiny_collab()
    with pytest.raises((CollabError, KeyError), match="'40' is a str"):
        c.fold_in("40", ["a"], [4.0])
    assert c.users.ids.tolist() == [10, 20, 30] and c.predict([10], ["a"]).shape == (1,)


def test_a_fold_in_with_more_items_than_ratings_is_refused_and_changes_nothing():
    c = tiny_collab()
    for ratings in ([5.0, 1.0], [5.0]):  # the second would broadcast silently
        with pytest.raises(CollabError, match="ratings"):
            c.fold_in(40, ["a", "b", "c"], ratings)
        assert c.model.user_factors.shape == (3, 2) and all(p.requires_grad for p in c.model.parameters())


def test_cosine_neighbours_put_an_items_copy_first():
    c = tiny_collab()  # a (2, 0), b (0, 2), c (1, 1), d (-1, 0.5)
    with torch.no_grad():
        c.model.item_factors[3] = c.model.item_factors[1]  # Dune is now a copy of Brazil
    assert c.similar(TITLES4["b"], n=3) == [TITLES4[k] for k in "dca"]  # cosines 1, 0.71, 0
    assert c.similar(TITLES4["d"], n=1) == [TITLES4["b"]]
    with torch.no_grad():
        c.model.item_factors[3] = 3 * c.model.item_factors[0]  # a longer copy of Alien points the same way
    f = c.model.item_factors.detach().numpy()
    cos = f @ f[0] / np.linalg.norm(f, axis=1) / np.linalg.norm(f[0])
    assert c.similar(TITLES4["a"], n=3) == [TITLES4["abcd"[i]] for i in np.argsort(-cos[1:], kind="stable") + 1]
    assert c.similar(TITLES4["a"], n=3)[0] == TITLES4["d"]


def test_similar_unknown_title_suggests_close_matches():
    with pytest.raises(CollabError, match=r"^no title 'Alein \(1979\)'; did you mean 'Alien \(1979\)'\?$"):
        tiny_collab().similar("Alein (1979)")
    with pytest.raises(CollabError, match=r"^no title 'Zardoz'$"):
        tiny_collab().similar("Zardoz")


def test_similar_lists_only_other_items_rated_often_enough():
    c = tiny_collab()  # rated in training: a and b once each, c once, d never; cosines to a: b 0, c 0.71
    assert c.similar(TITLES4["a"], n=3, min_ratings=1) == [TITLES4["c"], TITLES4["b"]]  # not d (rare), not a
    assert c.similar(TITLES4["a"], min_ratings=20) == []  # the command line's setting, on a small data set
    assert len(c.similar(TITLES4["a"])) == 3  # n=5, four items: three others, not a RuntimeError


def test_biases_order_titles_by_item_bias():
    c = tiny_collab()  # item_bias: a 0.3, b -0.1, c 0.0, d 0.2
    assert c.biases(n=2) == ([TITLES4["b"], TITLES4["c"]], [TITLES4["a"], TITLES4["d"]])
    low, high = c.biases(n=10)
    assert low == [TITLES4[k] for k in "bcda"] and high == low[::-1]


def test_pca_of_the_most_rated_items_centred_first_component_largest():
    torch.manual_seed(0)
    model = DotProductBias(5, 20, n_factors=4)
    with torch.no_grad():
        model.item_factors.mul_(torch.tensor([5.0, 1.0, 0.2, 3.0]))  # spreads of different sizes
    rated = [(u, j) for j in range(20) for u in range(j // 4)]  # item j rated by j // 4 users: 16..19 most
    c = Collab(model, TINY_CONFIG, IdMap(range(5)), IdMap(range(20)), {}, *zip(*rated))
    comps, top = c.pca(3, n_top=8)
    assert comps.shape == (8, 3) and sorted(top[:4]) == [16, 17, 18, 19] and sorted(top[4:]) == [12, 13, 14, 15]
    f = model.item_factors.detach().numpy()[top]
    f = f - f.mean(0)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    assert np.allclose(np.abs(comps.numpy()), np.abs(u[:, :3] * s[:3]), atol=1e-5)  # up to each axis's sign
    var = comps.var(0)
    assert np.allclose(comps.mean(0).numpy(), 0, atol=1e-5) and var[0] == var.max() and (var.diff() < 0).all()
    assert torch.allclose(var * 7, torch.tensor(s[:3] ** 2), rtol=1e-4)  # variance = singular value^2 / (n - 1)


@pytest.fixture
def saved_model(tmp_path, capsys):
    """Trained 1 epoch on 40 users x 8 titled items (movies.csv beside), saved, the data deleted.

    Every user rated items 1-6; only users 1-5 rated items 7 and 8 (too few for --similar's min_ratings=20)."""
    rows = "".join(f"{u},{i},{1 + u * i % 5}\n" for u in range(1, 41) for i in range(1, 9) if i <= 6 or u <= 5)
    ratings = write(tmp_path / "ratings.csv", "userId,movieId,rating\n" + rows)
    movies = write(tmp_path / "movies.csv", "movieId,title,genres\n" + "".join(
        f"{i},{t},Drama\n" for i, t in enumerate(["Alien (1979)", "Brazil (1985)", "Casablanca (1942)", "Dune (1984)",
                                                  "Eraserhead (1977)", "Fargo (1996)", "Gattaca (1997)", "Heat (1995)"],
                                                 1)))
    code, out, err = run_main(["--ratings", str(ratings), "--epochs", "1", "--device", "cpu",
                               "--save", str(tmp_path / "m.pt")], capsys)
    assert code == 0 and f"saved the model to {tmp_path / 'm.pt'}" in out
    ratings.unlink()
    movies.unlink()  # the file alone is enough
    return tmp_path / "m.pt"


def test_command_line_load_and_recommend(saved_model, capsys):
    code, out, err = run_main(["--load", str(saved_model), "--recommend", "10", "--top", "2"], capsys)
    lines = out.splitlines()
    assert (code, err, lines[0], len(lines)) == (0, "", "top 2 for user 10:", 3)
    expected = Collab.load(saved_model).recommend(10, 2)
    assert [line.split(maxsplit=1) for line in lines[1:]] == [[f"{r:.2f}", t] for t, r in expected]
    assert all(t.endswith(")") for t, _ in expected)  # titles, not ids


def test_command_line_unknown_user_and_bad_model_file_are_one_line_errors(saved_model, tmp_path, capsys):
    code, _, err = run_main(["--load", str(saved_model), "--recommend", "99"], capsys)
    assert error_line(code, err) == "error: unknown id 99\n"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model" * 100)
    code, _, err = run_main(["--load", str(garbage), "--recommend", "3"], capsys)
    assert f"{garbage} is not a valid minicollab model file" in error_line(code, err)


def test_command_line_similar_by_title(saved_model, capsys):
    code, out, err = run_main(["--load", str(saved_model), "--similar", "Fargo (1996)"], capsys)
    lines = out.splitlines()
    assert (code, err, lines[0]) == (0, "", "most like Fargo (1996):")
    c = Collab.load(saved_model)
    f = c.model.item_factors.detach().numpy()
    cos = f @ f[5] / np.linalg.norm(f, axis=1) / np.linalg.norm(f[5])  # Fargo is item 6, index 5
    assert [line.strip() for line in lines[1:]] == [c.title(i) for i in np.argsort(-cos[:5])]  # items 1-5 only
    code, _, err = run_main(["--load", str(saved_model), "--similar", "Frago (1996)"], capsys)
    assert error_line(code, err).startswith("error: no title 'Frago (1996)'; did you mean 'Fargo (1996)'")


def test_command_line_plot_writes_a_png(saved_model, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = run_main(["--load", str(saved_model), "--plot", str(tmp_path / "pca.png")], capsys)
    assert code == 0 and f"saved the PCA plot to {tmp_path / 'pca.png'}" in out
    assert (tmp_path / "pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_plot_without_matplotlib_says_so(saved_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails, installed or not
    code, _, err = run_main(["--load", str(saved_model), "--plot", str(tmp_path / "pca.png")], capsys)
    assert "--plot needs matplotlib: pip install matplotlib" in error_line(code, err)
    assert not (tmp_path / "pca.png").exists()


# ---- data_fetch.py: every source, fault and rule of the cache, on tiny zips served from 127.0.0.1 ----------

# a 4-rating MovieLens-100k by hand, in both layouts: GroupLens's u.data/u.item and recbole's .inter/.item
U_DATA = "1\t1\t4\t881250949\n2\t1\t5\t881250950\n1\t2\t3\t881250951\n3\t267\t1\t881250952\n"
U_ITEM = ("1|Toy Story (1995)|01-Jan-1995||http://x|0|1\n2|Misérables, Les (1995)|01-Jan-1995||http://x|0|1\n"
          "267|unknown||||1|0\n")
INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + U_DATA
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tToy Story\t1995\tAnimation\n"
        "2\tMisérables, Les\t1995\tDrama\n267\tunkonwn\tunkonwn\tunknown\n")
TITLES = {1: "Toy Story (1995)", 2: "Misérables, Les (1995)", 267: "unknown"}
LATEST_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,3,0.5,1445714835\n"
LATEST_MOVIES = ('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
          '3,"American President, The (1995)",Comedy|Drama|Romance\n')


def make_zip(path, files):
    """Write a zip holding {name: text}; u.item goes in latin-1 as GroupLens wrote it."""
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text.encode("latin-1" if name.endswith("u.item") else "utf-8"))
    return path


def sha256_of(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def partial_files(d):
    return sorted(p.name for p in pathlib.Path(d).glob(".partial-*"))


@pytest.fixture
def tiny_zip(tmp_path_factory, monkeypatch):
    """A tiny_zip ml-100k.zip, trusted by patching the expected SHA-256; downloads retry without pausing."""
    files = {"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM}
    path = make_zip(tmp_path_factory.mktemp("src") / "tiny-ml-100k.zip", files)
    monkeypatch.setattr(data_fetch, "ML100K_SHA256", sha256_of(path))
    monkeypatch.setattr(data_fetch, "BACKOFF", 0)
    return path


@pytest.fixture
def http_server(monkeypatch):
    """An HTTP server on 127.0.0.1 (port 0, own thread) serving .files, with faults scripted in .faults."""
    monkeypatch.setenv("no_proxy", "*")  # talk to it directly even where a proxy is set
    files, faults, hits = {}, [], []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            fault, body = faults.pop(0) if faults else None, files.get(self.path)
            if fault == "timeout":
                return time.sleep(1)  # answer nothing; the client times out first
            if fault == 500 or body is None:
                return self.send_error(500 if fault else 404)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            half = len(body) // 2
            try:
                self.wfile.write(body[:half])
                if fault == "truncate":
                    return  # close after half of what Content-Length promised
                if fault in ("slow", "stall"):
                    self.wfile.flush()
                    time.sleep(0.3 if fault == "slow" else 5)
                self.wfile.write(body[half:])
            except OSError:
                pass  # the client went away

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    srv.files, srv.faults, srv.hits, srv.url = files, faults, hits, f"http://127.0.0.1:{srv.server_port}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def closed_url(monkeypatch):
    """A URL on a local port nobody listens on: connection refused, at once."""
    monkeypatch.setenv("no_proxy", "*")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ml-100k.zip"


def no_wheel(d):
    raise OSError("no registry in this test")


def check_tiny(data):
    assert data["user"].tolist() == [1, 2, 1, 3] and data["item"].tolist() == [1, 1, 2, 267]
    assert data["rating"].dtype == np.float32 and data["rating"].sum() == 13
    assert data["user"].dtype == data["item"].dtype == data["timestamp"].dtype == np.int64
    assert data["timestamp"].tolist() == [881250949, 881250950, 881250951, 881250952]
    assert data["titles"] == TITLES


def test_cache_dir_precedence(tmp_path, monkeypatch):
    for var in ("MINICOLLAB_DATA", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "minicollab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "minicollab"
    monkeypatch.setenv("MINICOLLAB_DATA", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert not any(tmp_path.iterdir())  # asking creates nothing


def test_from_file_then_cache(tiny_zip, tmp_path, capsys):
    d = tmp_path / "missing" / "cache"  # a missing cache directory is created
    data = load_movielens(dir=d, from_file=tiny_zip)
    check_tiny(data)
    assert data["source"] == f"file {tiny_zip}" and data["path"] == d / "ml-100k.zip"
    assert capsys.readouterr().err == f"ml-100k: 4 ratings from file {tiny_zip} (cached at {d / 'ml-100k.zip'})\n"
    again = load_movielens(dir=d, quiet=True)
    assert (again["source"], again["path"]) == ("cache", d / "ml-100k.zip") and capsys.readouterr().err == ""
    check_tiny(again)


def test_wheel_fallback_gives_identical_data(tiny_zip, tmp_path, monkeypatch, closed_url):
    # the official URL is unreachable, so the "wheel" (a tiny one, through real pip) is used
    whl = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    make_zip(whl, {data_fetch.WHEEL_DIR + "ml-100k.inter": INTER, data_fetch.WHEEL_DIR + "ml-100k.item": ITEM,
                   "recbole-1.2.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n",
                   "recbole-1.2.1.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"})
    files = {"ml-100k.inter": hashlib.sha256(INTER.encode()).hexdigest(),
             "ml-100k.item": hashlib.sha256(ITEM.encode()).hexdigest()}
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", closed_url)
    monkeypatch.setattr(data_fetch, "WHEEL", str(whl))
    monkeypatch.setattr(data_fetch, "WHEEL_FILES", files)
    d = tmp_path / "cache"
    with pytest.raises(DataError, match="pip download .*SHA-256 mismatch"):  # the wheel itself is checked
        load_movielens(dir=d, quiet=True)
    assert os.listdir(d) == []
    monkeypatch.setattr(data_fetch, "WHEEL_SHA256", sha256_of(whl))
    data = load_movielens(dir=d, quiet=True)
    assert data["source"] == f"PyPI wheel {whl}" and data["path"] == d / "ml-100k.inter"
    zipped = load_movielens(dir=tmp_path / "other", from_file=tiny_zip, quiet=True)
    for k in ("user", "item", "rating", "timestamp", "titles"):  # whichever source, the same result
        assert np.array_equal(data[k], zipped[k]) if k != "titles" else data[k] == zipped[k]
    check_tiny(data)
    assert sorted(os.listdir(d)) == ["ml-100k.inter", "ml-100k.item"]  # the wheel itself is not kept
    again = load_movielens(dir=d, quiet=True)
    assert (again["source"], again["path"]) == ("cache", d / "ml-100k.inter")


def test_no_network_at_all(tmp_path, monkeypatch, closed_url):
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", closed_url)
    monkeypatch.setattr(data_fetch, "WHEEL", str(tmp_path / "nowhere" / "recbole-1.2.1-py3-none-any.whl"))
    monkeypatch.setattr(data_fetch, "BACKOFF", 0)
    with pytest.raises(DataError) as e:
        load_movielens(dir=tmp_path, quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and closed_url in msg and "pip download" in msg and "Connection refused" in msg
    assert f"to {tmp_path / 'ml-100k.zip'}, or run `python data_fetch.py --from-file PATH`" in msg
    assert os.listdir(tmp_path) == []


def test_download_and_atomic_rename(tiny_zip, tmp_path, monkeypatch, http_server):
    http_server.files["/ml-100k.zip"] = tiny_zip.read_bytes()
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", http_server.url + "/ml-100k.zip")
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
    data = load_movielens(dir=tmp_path / "c", quiet=True)
    check_tiny(data)
    assert data["source"] == http_server.url + "/ml-100k.zip"
    (tmp, dest), = renames  # written under a temp name beside the target, then renamed into place
    assert pathlib.Path(tmp).parent == dest.parent and pathlib.Path(tmp).name.startswith(".partial-ml-100k.zip")
    assert os.listdir(tmp_path / "c") == ["ml-100k.zip"] and sha256_of(dest) == sha256_of(tiny_zip)
    assert dest.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0o600


def test_checksum_mismatch_removes_the_file(tiny_zip, tmp_path, monkeypatch, http_server):
    http_server.files["/ml-100k.zip"] = b"PK not really the zip"
    url = http_server.url + "/ml-100k.zip"
    dest = tmp_path / "ml-100k.zip"
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        data_fetch.install(dest, lambda f: data_fetch.download(url, f), data_fetch.check_sha256(sha256_of(tiny_zip)))
    assert os.listdir(tmp_path) == []
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", url)  # the same through the loader, wheel unavailable
    monkeypatch.setattr(data_fetch, "fetch_wheel", no_wheel)
    with pytest.raises(DataError, match="SHA-256 mismatch.*file discarded.*no registry in this test"):
        load_movielens(dir=tmp_path, quiet=True)
    assert os.listdir(tmp_path) == []


def test_retries_timeouts_errors_and_truncation(tiny_zip, tmp_path, monkeypatch, http_server):
    http_server.files["/ml-100k.zip"] = tiny_zip.read_bytes()
    http_server.faults += ["timeout", 500, "truncate"]
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", http_server.url + "/ml-100k.zip")
    monkeypatch.setattr(data_fetch, "TIMEOUT", 0.3)
    monkeypatch.setattr(data_fetch, "RETRIES", 4)
    check_tiny(load_movielens(dir=tmp_path, quiet=True))
    assert len(http_server.hits) == 4 and os.listdir(tmp_path) == ["ml-100k.zip"]


def test_no_retry_on_404(tmp_path, monkeypatch, http_server):
    monkeypatch.setitem(data_fetch.URLS, "ml-latest-small", http_server.url + "/gone.zip")
    with pytest.raises(DataError, match="HTTP Error 404.*--name ml-latest-small --from-file PATH"):
        load_movielens("ml-latest-small", dir=tmp_path, quiet=True)
    assert len(http_server.hits) == 1 and os.listdir(tmp_path) == []


def test_no_retry_when_host_names_do_not_resolve(tmp_path, monkeypatch):
    lookups = []

    def no_dns(*args, **kwargs):
        lookups.append(args[0])
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("no_proxy", "*")
    with pytest.raises(DataError, match="files.grouplens.org.*Name or service not known"):
        load_movielens("ml-latest-small", dir=tmp_path, quiet=True)
    assert lookups == ["files.grouplens.org"]  # tried once: waiting will not bring the network back


def test_progress_only_on_a_terminal(tiny_zip, tmp_path, monkeypatch, http_server):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    http_server.files["/ml-100k.zip"] = tiny_zip.read_bytes()
    url, n = http_server.url + "/ml-100k.zip", tiny_zip.stat().st_size
    for stream, on_a_terminal in ((Tty(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        data_fetch.install(tmp_path / "x.zip", lambda f: data_fetch.download(url, f), lambda p: None)
        assert (f"{n:,} / {n:,} bytes (100%)" in stream.getvalue()) == on_a_terminal
        assert bool(stream.getvalue()) == on_a_terminal


def test_two_runs_at_once(tiny_zip, tmp_path, monkeypatch, http_server):
    http_server.files["/ml-100k.zip"] = tiny_zip.read_bytes()
    http_server.faults += ["slow", "slow"]  # both downloads are in flight together
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", http_server.url + "/ml-100k.zip")
    results = []
    runs = [threading.Thread(target=lambda: results.append(load_movielens(dir=tmp_path, quiet=True))) for _ in "ab"]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert len(results) == 2 and len(http_server.hits) == 2
    for data in results:
        check_tiny(data)
    assert os.listdir(tmp_path) == ["ml-100k.zip"] and sha256_of(tmp_path / "ml-100k.zip") == sha256_of(tiny_zip)


def test_killed_mid_download_next_run_starts_clean(tiny_zip, tmp_path, monkeypatch, http_server):
    body = tiny_zip.read_bytes() + bytes(300_000)  # big enough that a first chunk reaches the disk
    http_server.files["/big.zip"], http_server.files["/ml-100k.zip"] = body, tiny_zip.read_bytes()
    http_server.faults.append("stall")
    url = http_server.url + "/big.zip"
    code = f"import data_fetch as d; d.URLS['ml-100k'] = {url!r}; d.load_movielens(dir={str(tmp_path)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=HERE)
    deadline = time.time() + 10
    while not any(p.stat().st_size for p in tmp_path.glob(".partial-*")) and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert len(partial_files(tmp_path)) == 1 and not (tmp_path / "ml-100k.zip").exists()
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", http_server.url + "/ml-100k.zip")
    check_tiny(load_movielens(dir=tmp_path, quiet=True))  # a fresh leftover is ignored...
    assert len(partial_files(tmp_path)) == 1
    (tmp_path / ".partial-wheel-x").mkdir()  # as a run killed while pip downloads leaves
    (tmp_path / ".partial-wheel-x" / "recbole-1.2.1-py3-none-any.whl").write_bytes(b"half")
    monkeypatch.setattr(data_fetch, "STALE", 0)
    check_tiny(load_movielens(dir=tmp_path, quiet=True))  # ...and old ones removed
    assert os.listdir(tmp_path) == ["ml-100k.zip"]


def test_truncated_or_edited_cache_is_fetched_again(tiny_zip, tmp_path, monkeypatch, http_server, capsys):
    http_server.files["/ml-100k.zip"] = tiny_zip.read_bytes()
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", http_server.url + "/ml-100k.zip")
    cached = tmp_path / "ml-100k.zip"
    good = tiny_zip.read_bytes()
    for bad in (good[:100], good[:-1] + bytes([good[-1] ^ 1])):  # truncated; one byte edited, same size
        cached.write_bytes(bad)
        data = load_movielens(dir=tmp_path)
        check_tiny(data)
        assert data["source"] == http_server.url + "/ml-100k.zip" and cached.read_bytes() == good
        assert "failed its check (SHA-256 mismatch" in capsys.readouterr().err
    assert len(http_server.hits) == 2


def test_corrupt_cache_and_no_network_is_a_clear_error(tmp_path, monkeypatch, closed_url):
    make_zip(tmp_path / "ml-latest-small.zip", {"ml-latest-small/ratings.csv": "user,item\n1,2\n",
                                                "ml-latest-small/movies.csv": LATEST_MOVIES})
    monkeypatch.setitem(data_fetch.URLS, "ml-latest-small", closed_url)
    monkeypatch.setattr(data_fetch, "BACKOFF", 0)
    with pytest.raises(DataError, match="could not fetch ml-latest-small.*Connection refused"):
        load_movielens("ml-latest-small", dir=tmp_path, quiet=True)
    assert os.listdir(tmp_path) == []  # the bad copy is gone, nothing half-written is left


def test_unwritable_cache_directory(tiny_zip, tmp_path, monkeypatch):
    # we run as root, whom chmod does not stop, so use a "directory" below a regular file
    (tmp_path / "file").write_text("not a directory")
    d = tmp_path / "file" / "cache"
    with pytest.raises(DataError) as e:
        load_movielens(dir=d, from_file=tiny_zip, quiet=True)
    msg = str(e.value)
    assert str(d) in msg and "--dir" in msg and "MINICOLLAB_DATA" in msg and "\n" not in msg
    monkeypatch.setenv("MINICOLLAB_DATA", str(d))  # the same through the environment, via the fetch path
    monkeypatch.setattr(data_fetch, "fetch_wheel", no_wheel)
    with pytest.raises(DataError, match="cannot write to cache directory"):
        load_movielens(quiet=True)


def test_corrupt_cache_in_a_read_only_directory(tiny_zip, tmp_path, monkeypatch):
    (tmp_path / "ml-100k.zip").write_bytes(tiny_zip.read_bytes()[:100])

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(pathlib.Path, "unlink", read_only)  # as root we cannot make a real one here
    monkeypatch.setattr(data_fetch.tempfile, "TemporaryFile", read_only)
    with pytest.raises(DataError, match=f"cannot write to cache directory {tmp_path} \\(Read-only file system\\)"):
        load_movielens(dir=tmp_path, quiet=True)


def test_from_file_that_is_not_movielens(tiny_zip, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    other = make_zip(tmp_path / "other.zip", {"a.txt": "hi"})
    d = tmp_path / "cache"
    for path, why in ((text, "is not a zip file"), (tmp_path / "missing.zip", "does not exist"),
                      (other, "is not the ml-100k.zip from GroupLens \\(SHA-256 mismatch")):
        with pytest.raises(DataError, match=why):
            load_movielens(dir=d, from_file=path, quiet=True)
    with pytest.raises(DataError, match="is not the ml-latest-small.zip.*not ml-latest-small"):
        load_movielens("ml-latest-small", dir=d, from_file=tiny_zip, quiet=True)
    assert os.listdir(d) == []
    with pytest.raises(DataError, match="unknown data set 'ml-1m'"):
        load_movielens("ml-1m", dir=d)


def test_latest_small_download_and_structure_check(tmp_path, monkeypatch, http_server):
    def latest_zip(path, ratings):
        return make_zip(path, {"ml-latest-small/ratings.csv": ratings, "ml-latest-small/movies.csv": LATEST_MOVIES})
    good = latest_zip(tmp_path / "good.zip", LATEST_RATINGS)
    http_server.files["/ml-latest-small.zip"] = good.read_bytes()
    monkeypatch.setitem(data_fetch.URLS, "ml-latest-small", http_server.url + "/ml-latest-small.zip")
    data = load_movielens("ml-latest-small", dir=tmp_path / "c", quiet=True)
    assert data["user"].tolist() == [1, 1, 2] and data["item"].tolist() == [1, 3, 3]
    assert data["rating"].dtype == np.float32 and data["rating"].tolist() == [4.0, 4.5, 0.5]
    assert data["timestamp"].tolist() == [964982703, 964981247, 1445714835]
    assert data["titles"] == {1: "Toy Story (1995)", 3: "American President, The (1995)"}  # quoted comma
    assert load_movielens("ml-latest-small", dir=tmp_path / "c", quiet=True)["source"] == "cache"
    for ratings in (LATEST_RATINGS.replace("4.5", "four"), LATEST_RATINGS.replace(",1445714835", ""),
                    LATEST_RATINGS.replace("timestamp", "time"), LATEST_RATINGS.replace("0.5", "7")):
        bad = latest_zip(tmp_path / "bad.zip", ratings)
        with pytest.raises(DataError, match="not ml-latest-small"):
            load_movielens("ml-latest-small", dir=tmp_path / "d", from_file=bad, quiet=True)


def test_command_line(tiny_zip, tmp_path, capsys):
    assert data_fetch.main(["--dir", str(tmp_path), "--from-file", str(tiny_zip)]) == 0
    out = capsys.readouterr().out
    assert "ml-100k: 4 ratings, 3 users, 3 items, mean rating 3.250; item 1 is 'Toy Story (1995)'" in out
    assert f"path:   {tmp_path / 'ml-100k.zip'}" in out
    # a bogus file through a real process with no stdin: one line, exit status 1, no traceback
    bogus = tmp_path / "bogus.zip"
    bogus.write_text("not a zip")
    r = subprocess.run([sys.executable, "data_fetch.py", "--dir", str(tmp_path / "c"), "--from-file", str(bogus)],
                       cwd=HERE, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


# ---- data_fetch.py: the real data: needs the package registry (pip download), about 1.5 s -----------------


def test_real_ml100k_from_the_recbole_wheel(tmp_path, monkeypatch):
    def no_grouplens(url, f, quiet=False):
        raise OSError("skipped, to test the wheel")
    monkeypatch.setattr(data_fetch, "download", no_grouplens)  # the wheel even where GroupLens is reachable
    data = load_movielens(dir=tmp_path, quiet=True)
    assert data["source"] == "PyPI wheel recbole==1.2.1"
    assert len(data["rating"]) == 100_000 and len(np.unique(data["user"])) == 943
    assert len(np.unique(data["item"])) == 1682 and len(data["titles"]) == 1682
    assert data["rating"].sum(dtype=np.float64) == 352_986 and abs(data["rating"].mean() - 3.52986) < 1e-6
    assert data["timestamp"].sum() == 88_352_885_148_862
    assert (data["user"][0], data["item"][0], data["rating"][0], data["timestamp"][0]) == (196, 242, 3, 881250949)
    assert data["titles"][1] == "Toy Story (1995)" and data["titles"][267] == "unknown"
    assert data["titles"][1412] == "Land Before Time III: The Time of the Great Giving (1995) (V)"  # as in u.item
    # and a run from the cache is fast
    t = time.perf_counter()
    assert load_movielens(dir=tmp_path, quiet=True)["source"] == "cache"
    assert time.perf_counter() - t < 0.3


def test_real_grouplens_zip_matches_the_wheel(tmp_path):
    official = cache_dir() / "ml-100k.zip"
    if not official.exists() or sha256_of(official) != data_fetch.ML100K_SHA256:
        pytest.skip(f"no verified GroupLens ml-100k.zip at {official}")
    data_fetch.fetch_wheel(tmp_path)
    wheel = data_fetch.read_recbole(tmp_path / "ml-100k.inter", tmp_path / "ml-100k.item")
    zipped = data_fetch.read_ml100k_zip(official)
    for k in ("user", "item", "rating", "timestamp"):
        assert np.array_equal(zipped[k], wheel[k]) and zipped[k].dtype == wheel[k].dtype
    assert zipped["titles"] == wheel["titles"]


# ---- end to end: the tests on the real MovieLens-100k (data_fetch.py, then minicollab's defaults) --------------
# About 1-2 s of training on a CPU and ~9 s of folding in 94 users, plus a ~1 s wheel fetch on an empty cache.

def test_end_to_end_ml100k_valid_mse_at_most_0_83():
    d = load_movielens(quiet=True)
    users, items, ratings = d["user"], d["item"], d["rating"]
    user_map, item_map = IdMap(users), IdMap(items)  # built as the command line builds them
    data = [torch.as_tensor(a) for a in (user_map.encode(users), item_map.encode(items), ratings)]
    seed, args = 0, parse_args([])  # the command line's defaults
    train, valid = split_data(data, seed)
    y_range = (min(0.0, 1.1 * float(ratings.min())), 1.1 * float(ratings.max()))
    assert y_range == pytest.approx((0, 5.5))  # the book's y_range
    torch.manual_seed(seed)
    model = DotProductBias(len(user_map), len(item_map), args.factors, y_range)
    assert (len(user_map), len(item_map), args.factors) == (943, 1682, 50)
    cfg = DEFAULTS["dot"]
    history = fit_one_cycle(model, train, valid, cfg["epochs"], cfg["lr"], cfg["wd"], cfg["bs"], seed, log=print)
    assert len(history) == cfg["epochs"] == args.epochs and len(valid[2]) == 20_000
    assert history[-1]["valid_loss"] <= 0.83


def test_end_to_end_ml100k_fold_in_beats_the_items_biases_alone():
    d = load_movielens(quiet=True)
    users, items, ratings = d["user"], d["item"], d["rating"]
    rng = np.random.default_rng(0)
    held_out = rng.choice(np.unique(users), 94, replace=False)  # 10% of the 943 users, never seen in training
    seen = ~np.isin(users, held_out)
    user_map, item_map = IdMap(users[seen]), IdMap(items)
    data = [torch.as_tensor(a) for a in (user_map.encode(users[seen]), item_map.encode(items[seen]), ratings[seen])]
    train, valid = split_data(data, 0)
    cfg = DEFAULTS["dot"]
    torch.manual_seed(0)
    model = DotProductBias(len(user_map), len(item_map), 50, (0, 5.5))
    fit_one_cycle(model, train, valid, cfg["epochs"], cfg["lr"], cfg["wd"], cfg["bs"], 0, log=lambda s: None)
    config = dict(model=dict(kind="dot", n_users=len(user_map), n_items=len(item_map), n_factors=50,
                             layers=(100, 50), y_range=(0, 5.5)))
    trained = Collab(model, config, user_map, item_map, d["titles"], train[0].numpy(), train[1].numpy())
    with torch.no_grad():
        average_user = model.user_factors.mean(0), model.user_bias.mean()  # (n_factors,), ()
    se, n = dict(fold_in=0.0, biases=0.0, average=0.0), 0
    for user in held_out:
        rows = rng.permutation(np.flatnonzero(users == user))
        given, rest = rows[:10], rows[10:]  # fold in from 10 ratings, score on the others (ML-100k: >= 20 each)
        c = copy.deepcopy(trained)
        c.fold_in(int(user), items[given], ratings[given])
        i = torch.as_tensor(item_map.encode(items[rest]))
        with torch.no_grad():
            preds = dict(fold_in=c.predict(np.full(len(rest), user), items[rest]),
                         biases=sigmoid_range(model.item_bias[i], 0, 5.5).numpy(),  # zero factors and zero bias
                         average=sigmoid_range(model.item_factors[i] @ average_user[0] + average_user[1]
                                               + model.item_bias[i], 0, 5.5).numpy())
        for k, p in preds.items():
            se[k] += float(((p - ratings[rest]) ** 2).sum())
        n += len(rest)
    mse = {k: v / n for k, v in se.items()}
    print(f"\nfold-in MSE {mse['fold_in']:.3f} | items' biases alone {mse['biases']:.3f} | "
          f"average user {mse['average']:.3f} | {len(held_out)} users, {n:,} ratings")
    assert len(c.users) == len(user_map) + 1 == 943 - 94 + 1  # each fold-in went to its own copy
    assert mse["fold_in"] < mse["biases"]
