"""Tests for minicollab.py, one claim of fastbook chapter 8 each, checked two ways or against a number worked out
by hand; then data_fetch.py, on tiny files and on zips served from 127.0.0.1; then end-to-end runs on the real
MovieLens-100k. A benchmark on an ML-25M-shaped file runs only when asked: MINICOLLAB_BENCH=1 (see README)."""

import codecs
import copy
import csv
import gzip
import hashlib
import http.server
import inspect
import io
import math
import os
import pathlib
import re
import resource
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
from data_fetch import DataError, cache_dir, load_movielens, read_ratings
from minicollab import (DEFAULTS, Adam, Collab, CollabNN, DotProductBias, IdMap, add_weight_decay, create_params,
                        evaluate, fit_one_cycle, get_emb_sz, lr_find, one_cycle, sigmoid_range, split, train_step)

HERE = pathlib.Path(__file__).resolve().parent
# These tensors are tiny: one thread is faster, and it keeps OpenMP threads from spinning against another
# process's (with two busy cores, an ML-100k epoch went from 0.07 s to 14 s).
torch.set_num_threads(1)
TABLE_HEADER = ["epoch", "train_loss", "valid_loss", "time"]  # fastai's epoch table


# ---- minicollab.py: tiny data sets ------------------------------------------------------------------------------

def synthetic(n_users=30, n_items=40, rank=2, seed=0):
    """Every user rates every item: 3 + 0.7 * a rank-2 dot product, clipped to 0.5..5.5. (x, y): (1200, 2), (1200,)."""
    g = torch.Generator().manual_seed(seed)
    users, items = (t.flatten() for t in torch.meshgrid(torch.arange(n_users), torch.arange(n_items), indexing="ij"))
    u, v = torch.randn(n_users, rank, generator=g), torch.randn(n_items, rank, generator=g)
    return torch.stack([users, items], 1), (3 + 0.7 * (u[users] * v[items]).sum(1)).clamp(0.5, 5.5)


def split_data(data, seed=0):
    """(train, valid) pairs (x, y), 80/20, as the command line splits them."""
    train_idx, valid_idx = split(len(data[1]), 0.2, seed)
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
    assert torch.equal(weights.index_select(0, idx), weights[idx])  # the form the models use
    g = torch.randn(4, 3)  # an upstream gradient
    (by_index,) = torch.autograd.grad((weights.index_select(0, idx) * g).sum(), weights)
    (by_matmul,) = torch.autograd.grad(((one_hot @ weights) * g).sum(), weights)
    assert torch.allclose(by_index, by_matmul)
    # by hand: row 3 was looked up twice, row 2 and 4 never
    assert torch.equal(by_index[3], g[0] + g[2]) and torch.equal(by_index[0], g[1]) and torch.equal(by_index[1], g[3])
    assert not by_index[2].any() and not by_index[4].any()


def test_dot_product_bias_is_the_books_formula_written_with_one_hot_matrices():
    torch.manual_seed(0)
    model = DotProductBias(4, 3, 2, y_range=(0, 5.5))  # the book's DotProductBias(n_users, n_movies, n_factors)
    x = torch.tensor([[0, 2], [3, 2], [3, 0], [1, 1]])  # (bs, 2): (user, movie), as fastai's Learner passes it
    ou, oi = F.one_hot(x[:, 0], 4).float(), F.one_hot(x[:, 1], 3).float()  # (4, 4), (4, 3)
    dot = ((ou @ model.user_factors) * (oi @ model.movie_factors)).sum(1)  # (4,)
    by_hand = torch.sigmoid(dot + ou @ model.user_bias + oi @ model.movie_bias) * 5.5
    pred = model(x)
    assert pred.shape == (4,) and torch.allclose(pred, by_hand)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(pred.sum(), params), torch.autograd.grad(by_hand.sum(), params)):
        assert a.shape == b.shape and torch.allclose(a, b)
    # and one number by hand: factors (1, 2) . (0.5, -0.25) = 0, biases ln 3 and 0: sigmoid(ln 3) * 5.5 = 4.125
    with torch.no_grad():
        model.user_factors[0], model.movie_factors[2] = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -0.25])
        model.user_bias[0], model.movie_bias[2] = math.log(3), 0.0
    assert model(torch.tensor([[0, 2]])).item() == pytest.approx(4.125, abs=1e-6)


def test_the_models_keep_the_books_names_and_defaults():
    model = DotProductBias(943, 1682)
    assert [n for n, _ in model.named_parameters()] == ["user_factors", "user_bias", "movie_factors", "movie_bias"]
    assert model.user_factors.shape == (943, 50) and model.movie_bias.shape == (1682,) and model.y_range == (0, 5.5)
    assert list(inspect.signature(DotProductBias).parameters) == ["n_users", "n_movies", "n_factors", "y_range"]
    assert list(inspect.signature(CollabNN).parameters)[:2] == ["user_sz", "item_sz"]


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


def test_get_emb_sz_is_fastais_rule_of_thumb_and_builds_the_books_collab_nn():
    embs = get_emb_sz(943, 1682)  # round(1.6 * 943**0.56) = round(74.1); 1682: round(101.9)
    assert embs == [(943, 74), (1682, 102)] and get_emb_sz(10**7, 5)[0] == (10**7, 600)  # capped at 600
    model = CollabNN(*embs)  # the book's CollabNN(*embs)
    assert model.user_factors.shape == (943, 74) and model.movie_factors.shape == (1682, 102)
    linears = [m for m in model.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(176, 100), (100, 50), (50, 1)]  # fastai's
    assert [m.out_features for m in CollabNN((5, 3), (6, 4), layers=[7]).layers if isinstance(m, nn.Linear)] == [7, 1]


def test_collab_nn_is_the_concatenation_through_the_layers_by_hand():
    torch.manual_seed(0)
    model = CollabNN((4, 3), (5, 2), layers=[6])
    x = torch.tensor([[0, 4], [3, 1], [3, 3]])
    first, last = (m for m in model.layers if isinstance(m, nn.Linear))
    h = torch.cat([model.user_factors[x[:, 0]], model.movie_factors[x[:, 1]]], 1)  # (3, 5)
    by_hand = sigmoid_range(last(torch.relu(first(h)))[:, 0], 0, 5.5)
    assert torch.allclose(model.eval()(x), by_hand)


@pytest.mark.parametrize("make", [lambda: DotProductBias(6, 5, 3, y_range=(1, 5)),
                                  lambda: CollabNN((6, 4), (5, 3), layers=(8, 4), y_range=(1, 5))], ids=["dot", "nn"])
@pytest.mark.parametrize("bs", [7, 1])
def test_models_return_shape_bs_inside_y_range(make, bs):
    torch.manual_seed(0)
    model = make()
    x = torch.stack([torch.randint(6, (bs,)), torch.randint(5, (bs,))], 1)  # (bs, 2)
    pred = model(x)
    assert pred.shape == (bs,)  # not (bs, 1): (bs, 1) - (bs,) would broadcast to (bs, bs)
    assert (pred - torch.full((bs,), 3.0)).shape == (bs,)
    assert ((pred > 1) & (pred < 5)).all()
    with torch.no_grad():  # huge weights saturate the sigmoid, and the output still stays in range
        for p in model.parameters():
            p.mul_(1e4)
    pred = model(x)
    assert pred.shape == (bs,) and ((pred >= 1) & (pred <= 5)).all()


@pytest.mark.parametrize("make", [lambda: DotProductBias(30, 40, 5), lambda: CollabNN(*get_emb_sz(30, 40))],
                         ids=["dot", "nn"])
def test_a_model_trains_the_way_fastais_learner_calls_it(make):
    # fastai's Learner: pred = model(xb) with xb a (bs, 2) long tensor, MSELossFlat, an optimizer with decoupled
    # weight decay, zero_grad; no minicollab code but the model itself
    torch.manual_seed(0)
    (x, y), (xv, yv) = split_data(synthetic())
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    loss_func = lambda pred, targ: F.mse_loss(pred.view(-1), targ.view(-1))  # fastai's MSELossFlat
    before = loss_func(model(xv), yv).item()
    for epoch in range(15):
        for xb, yb in zip(x.split(64), y.split(64)):
            pred = model(xb)
            assert pred.shape == yb.shape
            loss = loss_func(pred, yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
    with torch.no_grad():
        after = loss_func(model(xv), yv).item()
    assert after < 0.5 * before and after < yv.var().item()


COPYABLE = ["sigmoid_range", "create_params", "DotProductBias", "get_emb_sz", "CollabNN", "add_weight_decay", "Adam",
            "one_cycle", "train_step", "evaluate", "fit_one_cycle", "lr_find", "split"]


def test_the_chapters_pieces_run_when_pasted_into_a_file_that_imports_only_torch_and_numpy(tmp_path):
    source = "\n\n".join(inspect.getsource(getattr(minicollab, name)) for name in COPYABLE)
    pasted = tmp_path / "assignment.py"
    pasted.write_text("import math\nimport time\n\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n"
                      "from torch import nn\n\n" + source + """

torch.manual_seed(0)
x = torch.stack([torch.arange(200) % 10, torch.arange(200) % 7], 1)
y = 1 + (x[:, 0] * x[:, 1] % 5).float()
train, valid = split(200, 0.2, 0)
for model in (DotProductBias(10, 7, 4), CollabNN(*get_emb_sz(10, 7))):
    history = fit_one_cycle(model, (x[train], y[train]), (x[valid], y[valid]), 3, 1e-2, 1e-4, 16)
    assert len(history) == 3 and history[-1]["valid_loss"] < history[0]["valid_loss"]
    assert 0 < lr_find(model, (x[train], y[train]), bs=16)[0] < 10
print("ok")
""")
    r = subprocess.run([sys.executable, str(pasted)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=""))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "ok" and r.stdout.count("epoch  train_loss") == 2


def test_weight_decay_by_hand_equals_autograd_of_the_l2_penalty():
    torch.manual_seed(0)
    x, y = synthetic()
    model = DotProductBias(31, 40, n_factors=5)  # user 30 never appears: its gradient is weight decay alone
    params, wd = list(model.parameters()), 0.1
    F.mse_loss(model(x), y).backward()
    add_weight_decay(params, wd)
    by_hand = [p.grad.clone() for p in params]
    model.zero_grad()
    penalty = wd / 2 * sum((p ** 2).sum() for p in params)
    (F.mse_loss(model(x), y) + penalty).backward()
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
    x, y = synthetic()
    ours = DotProductBias(30, 40, n_factors=5)
    theirs, start = copy.deepcopy(ours), copy.deepcopy(ours)
    lr, mom = 1e-2, 0.9
    opt = Adam(ours.parameters())
    torch_opt = torch.optim.Adam(theirs.parameters(), lr=lr, betas=(mom, 0.99), eps=1e-5)
    for step in range(8):
        batch = slice(100 * step, 100 * step + 100)
        for model in (ours, theirs):
            F.mse_loss(model(x[batch]), y[batch]).backward()
        opt.step(lr, mom)
        torch_opt.step()
        torch_opt.zero_grad()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), f"step {step}"
    moved = [(a - b).abs().max().item() for a, b in zip(ours.parameters(), start.parameters())]
    assert min(moved) > 1e-3  # every parameter went somewhere: the comparison above was not of two still models


def test_train_step_is_loss_backward_weight_decay_and_adam():
    torch.manual_seed(0)
    x, y = synthetic()
    ours = DotProductBias(30, 40, n_factors=5)
    theirs = copy.deepcopy(ours)
    opt, torch_opt = Adam(ours.parameters()), torch.optim.Adam(theirs.parameters(), 1e-2, (0.9, 0.99), 1e-5, 0.1)
    for step in range(3):  # torch's Adam(weight_decay=0.1) is L2 added to the gradient, as ours
        loss = train_step(ours, opt, x[:100], y[:100], 1e-2, 0.9, 0.1)
        F.mse_loss(theirs(x[:100]), y[:100]).backward()
        torch_opt.step()
        torch_opt.zero_grad()
        assert loss.shape == () and not loss.requires_grad
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


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


# ---- minicollab.py: ids and the split -----------------------------------------------------------------------

def test_id_map_round_trips_strings_and_ints():
    users = IdMap(["alice", "bob", "carol"], "user")
    assert users.encode(["carol", "alice", "carol"]).tolist() == [2, 0, 2] and users.encode("bob").tolist() == [1]
    items = IdMap([9, 10, 100], "item")
    idx = items.encode(np.array([100, 9, 10]))  # numpy ints find Python ints
    assert idx.tolist() == [2, 0, 1] and [items.ids[i] for i in idx] == [100, 9, 10]
    assert items.encode([9.0]).tolist() == [0]  # 9.0, as pandas hands ids over, is item 9


def test_id_map_unknown_id_is_a_key_error_naming_the_user_or_the_item():
    messages = []
    for ids, what, bad in ((["alice", "bob"], "user", "dave"), ([9, 10], "item", 11), ([9], "item", "9"),
                           (["alice"], "user", 5), ([9], "item", np.int64(11)), (["a"], "user", np.str_("b"))):
        with pytest.raises(KeyError) as e:
            IdMap(ids, what).encode([bad])
        messages.append(e.value.args[0])
    assert messages == ["unknown user 'dave'", "unknown item 11", "unknown item '9'", "unknown user 5",
                        "unknown item 11", "unknown user 'b'"]  # as the user wrote it: no np.int64(...)


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
    with pytest.raises(ValueError, match="at least two ratings"):
        split(1)


# ---- minicollab.py: fit_one_cycle and lr_find -------------------------------------------------------------------

def test_fit_one_cycle_history_and_printed_fastai_table(capsys):
    model, history, valid = fit_synthetic(epochs=3, log=print)
    lines = capsys.readouterr().out.splitlines()
    assert all(set(h) == {"train_loss", "valid_loss", "time"} for h in history) and len(history) == 3
    assert lines[0].split() == TABLE_HEADER and len(lines) == 1 + 3
    for epoch, (h, line) in enumerate(zip(history, lines[1:])):
        fields = line.split()
        assert [line.index(f) for f in fields] == [lines[0].index(c) for c in TABLE_HEADER]  # columns line up
        assert int(fields[0]) == epoch and re.fullmatch(r"\d+\.\d\d", fields[3])
        assert float(fields[1]) == pytest.approx(h["train_loss"], abs=1e-6)
        assert float(fields[2]) == pytest.approx(h["valid_loss"], abs=1e-6)
    with torch.no_grad():  # valid_loss is the MSE on the validation set, computed here another way
        mse = F.mse_loss(model(valid[0]), valid[1]).item()
    assert history[-1]["valid_loss"] == pytest.approx(mse, rel=1e-5)
    assert evaluate(model, *valid, bs=7) == pytest.approx(mse, rel=1e-5)  # in chunks, the same


def test_training_on_low_rank_data_gets_far_below_the_variance():
    _, history, valid = fit_synthetic(epochs=10)
    variance = valid[1].var(unbiased=False).item()  # the MSE of always predicting the mean rating
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
    with pytest.raises(ValueError, match="NaN.*lower learning rate"):  # 1e30 overflows the factors to inf - inf
        fit_synthetic(epochs=2, lr_max=1e30)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(epochs=-1), dict(lr_max=0.0), dict(lr_max=-1e-3),
                                 dict(lr_max=float("nan")), dict(lr_max=math.inf), dict(bs=0), dict(wd=-1e-4),
                                 dict(wd=math.inf)])
def test_fit_one_cycle_rejects_bad_settings(bad):
    settings = dict(epochs=1, lr_max=1e-2, bs=64, wd=0.0) | bad
    train, valid = split_data(synthetic())
    with pytest.raises(ValueError, match="need epochs, bs, lr_max > 0, wd >= 0"):
        fit_one_cycle(DotProductBias(30, 40, 5), train, valid, log=lambda s: None, **settings)


def test_progress_is_reported_each_step_with_the_seconds_so_far():
    calls = []
    train, valid = split_data(synthetic())
    fit_one_cycle(DotProductBias(30, 40, 5), train, valid, 2, bs=100, log=lambda s: None,
                  progress=lambda *a: calls.append(a))
    assert [c[:2] for c in calls] == [(s, 10) for s in range(1, 11)] * 2  # 960 ratings / 100: 10 steps an epoch
    assert all(0 <= c[2] < 60 for c in calls) and calls[9][2] >= calls[0][2]


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
        pred = model(on(valid)[0])
        assert pred.device.type == device and pred.shape == (len(valid[1]),)
    for cpu, cuda in zip(*histories):
        assert cuda["valid_loss"] == pytest.approx(cpu["valid_loss"], rel=1e-3)


# ---- minicollab.py: using the trained model ---------------------------------------------------------------------

TITLES4 = {"a": "Alien (1979)", "b": "Brazil (1985)", "c": "Casablanca (1942)", "d": "Dune (1984)"}


def tiny_collab(kind="dot", rated=((0, 0), (0, 1), (1, 2))):
    """Users 10, 20, 30 x items 'a'..'d' with hand-set weights; user 10 rated a and b, 20 rated c, 30 nothing."""
    torch.manual_seed(0)
    model = DotProductBias(3, 4, 2) if kind == "dot" else CollabNN((3, 2), (4, 2), layers=[5])
    with torch.no_grad():
        model.user_factors[:] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]])
        model.movie_factors[:] = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.5]])
        if kind == "dot":
            model.user_bias[:] = torch.tensor([0.1, -0.2, 0.0])
            model.movie_bias[:] = torch.tensor([0.3, -0.1, 0.0, 0.2])
    keys = torch.tensor(sorted(u * 4 + i for u, i in rated), dtype=torch.long)
    return Collab(model, IdMap([10, 20, 30], "user"), IdMap(list("abcd"), "item"), dict(TITLES4), keys)


def rated_by(c, user):
    """The raw item ids a user rated, read from the sorted user * n_items + item keys."""
    u, n = c.users.encode(user)[0], len(c.items.ids)
    return {c.items.ids[k % n] for k in c.rated.tolist() if k // n == u}


def test_predict_on_raw_ids_is_the_formula_by_hand():
    c = tiny_collab()
    got = c.predict([10, 30, 20], ["a", "d", "c"])
    uf, ub, mf, mb = (p.detach().numpy() for p in (c.model.user_factors, c.model.user_bias,
                                                    c.model.movie_factors, c.model.movie_bias))
    u, i = [0, 2, 1], [0, 3, 2]
    assert got.shape == (3,) and np.allclose(got, 5.5 / (1 + np.exp(-((uf[u] * mf[i]).sum(1) + ub[u] + mb[i]))))
    assert got[0] == pytest.approx(5.5 / (1 + math.exp(-2.4)))  # (1, 0) . (2, 0) + 0.1 + 0.3 = 2.4
    assert np.array_equal(c.predict(10, ["a", "d"]), got[[0]].tolist() + [c.predict([10], ["d"])[0]])  # broadcast
    s = Collab(c.model, IdMap(["ann", "bob", "cy"], "user"), IdMap([1, 2, 3, 4], "item"), {}, c.rated)
    assert np.array_equal(s.predict(["ann", "cy", "bob"], [1, 4, 3]), got)  # other ids, the same numbers


@pytest.mark.parametrize("users, items, message", [
    ([99], ["a"], "unknown user 99"), ([10], ["z"], "unknown item 'z'"), (["10"], ["a"], "unknown user '10'"),
    ([10], [1], "unknown item 1")])
def test_predict_unknown_id_is_a_key_error_naming_it(users, items, message):
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
    with pytest.raises(KeyError, match="unknown user 99"):
        c.recommend(99)


def test_recommend_for_a_user_who_rated_everything_is_empty():
    c = tiny_collab(rated=[(0, i) for i in range(4)])
    assert rated_by(c, 10) == set("abcd") and c.recommend(10) == [] and len(c.recommend(20)) == 4


@pytest.mark.parametrize("kind", ["dot", "nn"])
@pytest.mark.parametrize("str_users", [False, True], ids=["int-users", "str-users"])
def test_save_load_predicts_bit_identically_without_the_data(tmp_path, str_users, kind):
    c = tiny_collab(kind)
    if str_users:  # and integer item ids with integer title keys, as MovieLens has
        c = Collab(c.model, IdMap(["ann", "bob", "cy"], "user"), IdMap([1, 2, 3, 4], "item"),
                   {1: "Alien (1979)", 2: "Brazil (1985)"}, c.rated)
    c.save(tmp_path / "m.pt")
    assert os.listdir(tmp_path) == ["m.pt"]  # no .partial left behind
    d = Collab.load(tmp_path / "m.pt")
    users, items = np.repeat(c.users.ids, 4), np.tile(c.items.ids, 3)  # every pair
    assert np.array_equal(d.predict(users, items), c.predict(users, items))
    assert all(torch.equal(v, d.model.state_dict()[k]) for k, v in c.model.state_dict().items())
    assert [d.recommend(u, 10) for u in c.users.ids] == [c.recommend(u, 10) for u in c.users.ids]  # rated survive
    assert d.titles == c.titles and [type(k) for k in d.titles] == [type(k) for k in c.titles]
    assert d.users.ids == c.users.ids and d.items.ids == c.items.ids and type(d.model) is type(c.model)


@pytest.mark.parametrize("kind", ["dot", "nn"])
def test_save_keeps_the_models_own_settings_not_those_it_was_built_with(tmp_path, kind):
    c = tiny_collab(kind)
    c.model.y_range = (1.0, 5.0)  # changed after it was built: the save must not go back to (0, 5.5)
    if kind == "nn":
        c.model.layers[2].p = 0.3  # and a dropout
    c.save(tmp_path / "m.pt")
    d = Collab.load(tmp_path / "m.pt")
    assert d.model.y_range == (1.0, 5.0) and str(d.model) == str(c.model)
    assert np.array_equal(d.predict([10, 20, 30], ["a", "b", "d"]), c.predict([10, 20, 30], ["a", "b", "d"]))


class Payload:
    """Unpickling this calls os.mkdir: what a malicious model file could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_load_uses_weights_only_so_a_pickled_object_never_runs(tmp_path):
    c = tiny_collab()
    c.titles["e"] = Payload(str(tmp_path / "it-ran"))  # hidden inside an otherwise good model
    torch.save(c, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt is no minicollab model"):
        Collab.load(tmp_path / "evil.pt")
    assert not (tmp_path / "it-ran").exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the file is armed: a plain load runs it
    assert (tmp_path / "it-ran").is_dir()


def test_load_of_a_bad_file_is_a_one_line_error(tmp_path):
    good = tmp_path / "good.pt"
    tiny_collab().save(good)
    raw = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[:len(raw) // 2])
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(len(raw)))
    torch.save({"format": "minicollab-1"}, tmp_path / "other.pt")  # a valid torch file, but not a model
    torch.save(tiny_collab().model.state_dict(), tmp_path / "weights.pt")  # the weights alone
    for name in ("truncated.pt", "random.pt", "other.pt", "weights.pt", "missing.pt"):
        with pytest.raises(ValueError) as e:
            Collab.load(tmp_path / name)
        msg = str(e.value)
        assert str(tmp_path / name) in msg and "\n" not in msg
        assert ("no model file at" if name == "missing.pt" else "is no minicollab model") in msg


def zero_user_predictions(c, items):
    """What a new user with zero factors and zero bias gets, computed from the trained weights directly."""
    m, i = c.model, torch.as_tensor(c.items.encode(items))
    with torch.no_grad():
        if isinstance(m, DotProductBias):
            return sigmoid_range(m.movie_bias[i], *m.y_range).numpy()  # the items' biases alone
        h = torch.cat([torch.zeros(len(i), m.user_factors.shape[1]), m.movie_factors[i]], 1)
        return sigmoid_range(m.layers(h)[:, 0], *m.y_range).numpy()


@pytest.mark.parametrize("kind", ["dot", "nn"])
def test_fold_in_lowers_the_new_users_error_and_leaves_everyone_else_alone(kind):
    c = tiny_collab(kind)
    before = {k: v.clone() for k, v in c.model.state_dict().items()}
    items, ratings = ["a", "b", "d"], np.float32([5.0, 1.0, 4.0])
    zero_row = zero_user_predictions(c, items)
    c.fold_in(40, items, ratings)
    mse_before, mse_after = ((zero_row - ratings) ** 2).mean(), ((c.predict([40] * 3, items) - ratings) ** 2).mean()
    assert mse_after < (0.5 if kind == "dot" else 1) * mse_before  # an untrained MLP barely listens to the user
    after = c.model.state_dict()
    assert after["user_factors"].shape[0] == 4 and c.users.ids == [10, 20, 30, 40]
    for k, v in before.items():  # the trained users' rows, every item, the MLP: bit-identical
        assert torch.equal(after[k][:len(v)], v), k
    assert all(p.requires_grad and p.grad is None for p in c.model.parameters())  # ready to train on
    assert rated_by(c, 40) == set(items) and [t for t, _ in c.recommend(40)] == [TITLES4["c"]]
    with pytest.raises(ValueError, match="user 20 is in the model already"):
        c.fold_in(20, ["a"], [3.0])


def test_fold_in_of_a_float_user_id_as_pandas_gives_it_keeps_the_ids_ints(tmp_path):
    c = tiny_collab()
    c.fold_in(3000.0, ["a", "d"], np.float64([5.0, 2.0]))  # pandas hands over floats
    c.fold_in(np.int64(4000), ["b"], [1.0])
    assert c.users.ids == [10, 20, 30, 3000, 4000] and all(type(u) is int for u in c.users.ids)
    c.save(tmp_path / "m.pt")
    d = Collab.load(tmp_path / "m.pt")
    assert d.recommend(10) == c.recommend(10) and rated_by(d, 3000) == {"a", "d"}
    code, out, err = minicollab.main(["--load", str(tmp_path / "m.pt"), "--recommend", "3000"]), None, None
    assert code == 0


def test_fold_in_takes_numpy_and_torch_scalars_and_single_ratings_as_predict_does():
    for user in (torch.tensor(40), np.int64(40), np.float32(40.0), np.array([40])):
        c = tiny_collab()
        c.fold_in(user, "a", 5)  # one item and one rating, not in lists
        assert c.users.ids[-1] == 40 and type(c.users.ids[-1]) is int and rated_by(c, 40) == {"a"}
    c = tiny_collab()
    c.fold_in(40, np.array(["a", "b"]), torch.tensor([5.0, 1.0]))
    c.fold_in(50, ["a"], ["4"])  # a rating read from a text file
    assert c.predict(40, "a") > c.predict(40, "b") and c.users.ids == [10, 20, 30, 40, 50]
    s = Collab(c.model, IdMap(["x", "y", "z", "v", "w"], "user"), c.items, c.titles, c.rated)
    s.fold_in(np.str_("new"), ["a"], [4.0])
    assert s.users.ids[-1] == "new" and type(s.users.ids[-1]) is str


def test_recommend_asked_for_no_items_gives_none():
    assert tiny_collab().recommend(30, n=0) == tiny_collab().recommend(30, n=-1) == []


@pytest.mark.parametrize("user, items, ratings, message", [
    (40, ["a"], [math.nan], "finite rating"), (40, ["a", "b"], [5.0, math.inf], "finite rating"),
    (40, ["a", "b", "c"], [5.0, 1.0], "one finite rating per item"), (40, ["a", "b"], [5.0], "per item"),
    (40, [], [], "per item"), ("40", ["a"], [4.0], "not an id like the model's, such as 10"), (40.5, ["a"], [4.0], "not an id"),
    (20, ["a"], [4.0], "in the model already"), (40, ["z"], [4.0], "unknown item 'z'")])
def test_a_bad_fold_in_is_refused_and_changes_nothing(user, items, ratings, message):
    c = tiny_collab()
    with pytest.raises((ValueError, KeyError), match=message):
        c.fold_in(user, items, ratings)
    assert c.model.user_factors.shape == (3, 2) and c.users.ids == [10, 20, 30] and len(c.rated) == 3
    assert isinstance(c.model.user_factors, nn.Parameter) and c.predict([10], ["a"]).shape == (1,)


@pytest.mark.parametrize("kind", ["dot", "nn"])
def test_save_after_fold_in_keeps_the_new_user(tmp_path, kind):
    c = tiny_collab(kind)
    c.fold_in(40, ["a", "d"], [5.0, 2.0])
    c.save(tmp_path / "m.pt")
    d = Collab.load(tmp_path / "m.pt")
    assert d.users.ids == [10, 20, 30, 40] and rated_by(d, 40) == {"a", "d"}
    assert np.array_equal(d.predict([40] * 4, list("abcd")), c.predict([40] * 4, list("abcd")))
    assert d.recommend(40) == c.recommend(40) and len(d.recommend(40)) == 2
    d.fold_in(50, ["b"], [1.0])  # and a loaded model takes another
    d.save(tmp_path / "m.pt")
    assert Collab.load(tmp_path / "m.pt").users.ids == [10, 20, 30, 40, 50]


def test_cosine_neighbours_put_an_items_copy_first():
    c = tiny_collab(rated=[(u, i) for u in range(3) for i in range(4)])  # a (2, 0), b (0, 2), c (1, 1), d (-1, 0.5)
    with torch.no_grad():
        c.model.movie_factors[3] = c.model.movie_factors[1]  # Dune is now a copy of Brazil
    assert c.similar(TITLES4["b"], n=3) == [TITLES4[k] for k in "dca"]  # cosines 1, 0.71, 0
    assert c.similar(TITLES4["d"], n=1) == [TITLES4["b"]]
    with torch.no_grad():
        c.model.movie_factors[3] = 3 * c.model.movie_factors[0]  # a longer copy of Alien points the same way
    f = c.model.movie_factors.detach().numpy()
    cos = f @ f[0] / np.linalg.norm(f, axis=1) / np.linalg.norm(f[0])
    assert c.similar(TITLES4["a"], n=3) == [TITLES4["abcd"[i]] for i in np.argsort(-cos[1:], kind="stable") + 1]
    assert c.similar(TITLES4["a"], n=3)[0] == TITLES4["d"]


def test_similar_unknown_title_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"^no title 'Alein \(1979\)'; titles look like 'Alien \(1979\)'$"):
        tiny_collab().similar("Alein (1979)")


def test_similar_skips_rarely_rated_items_but_never_comes_back_empty():
    c = tiny_collab(rated=[(0, 0), (1, 0), (0, 1), (1, 1), (2, 1), (0, 2), (1, 2)])  # a 2, b 3, c 2, d 0 ratings
    assert c.similar(TITLES4["a"], n=2, min_ratings=2) == [TITLES4["c"], TITLES4["b"]]  # not d (never rated)
    assert c.similar(TITLES4["a"], n=1, min_ratings=3) == [TITLES4["b"]]  # only b is rated 3 times
    # the default asks for 20 ratings, which no item here has: the n most-rated others instead, never an empty list
    assert c.similar(TITLES4["a"], n=2) == [TITLES4["c"], TITLES4["b"]] and len(c.similar(TITLES4["a"])) == 3


def test_biases_order_titles_by_movie_bias():
    c = tiny_collab()  # movie_bias: a 0.3, b -0.1, c 0.0, d 0.2
    assert c.biases(n=2) == ([TITLES4["b"], TITLES4["c"]], [TITLES4["a"], TITLES4["d"]])
    low, high = c.biases(n=10)
    assert low == [TITLES4[k] for k in "bcda"] and high == low[::-1]


def test_pca_of_the_most_rated_items_centred_first_component_largest():
    torch.manual_seed(0)
    model = DotProductBias(5, 20, n_factors=4)
    with torch.no_grad():
        model.movie_factors.mul_(torch.tensor([5.0, 1.0, 0.2, 3.0]))  # spreads of different sizes
    rated = torch.tensor(sorted(u * 20 + j for j in range(20) for u in range(j // 4)))  # item j: j // 4 ratings
    c = Collab(model, IdMap(range(5), "user"), IdMap(range(20), "item"), {}, rated)
    comps, top = c.pca(3, n_top=8)
    assert comps.shape == (8, 3) and sorted(top[:4]) == [16, 17, 18, 19] and sorted(top[4:]) == [12, 13, 14, 15]
    f = model.movie_factors.detach().numpy()[top]
    f = f - f.mean(0)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    assert np.allclose(np.abs(comps.numpy()), np.abs(u[:, :3] * s[:3]), atol=1e-5)  # up to each axis's sign
    var = comps.var(0)
    assert np.allclose(comps.mean(0).numpy(), 0, atol=1e-5) and var[0] == var.max() and (var.diff() < 0).all()
    assert torch.allclose(var * 7, torch.tensor(s[:3] ** 2), rtol=1e-4)  # variance = singular value^2 / (n - 1)


# ---- minicollab.py: the command line ----------------------------------------------------------------------------

def write(path, text, encoding="utf-8"):
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path


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
    assert "30 ratings, 6 users, 5 items" in out


def error_line(code, err):
    """A bad input ends in exit status 1 and one line 'error: ...' on stderr, no traceback; returns that line."""
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flags, message", [
    (["--valid-pct", "1.5"], "--valid-pct 1.5 is out of range"), (["--valid-pct", "0"], "--valid-pct 0.0 is out"),
    (["--epochs", "0"], "--epochs 0 is out of range: give 1 to 10000"), (["--bs", "0"], "--bs 0 is out of range"),
    (["--lr", "-0.01"], "--lr -0.01 is out of range"), (["--lr", "inf"], "--lr inf is out of range"),
    (["--lr", "nan"], "--lr nan is out of range"), (["--lr", "1e308"], "--lr 1e+308 is out of range"),
    (["--wd", "inf"], "--wd inf is out of range"), (["--wd", "-1"], "--wd -1.0 is out of range"),
    (["--seed", "-1"], "--seed -1 is out of range"), (["--seed", str(2 ** 64)], "--seed 18446744073709551616 is"),
    (["--factors", "0"], "--factors 0 is out of range"), (["--layers", "0", "--model", "nn"], "--layers: sizes 1 to 10000"),
    (["--layers", "a,b"], "argument --layers: invalid sizes value"), (["--epochs", "abc"], "argument --epochs: invalid int"),
    (["--top", "-1"], "--top -1 is out of range"), (["--top", "0"], "--top 0 is out of range"),
    (["--device", "mps"], "--device mps: not usable here"), (["--device", "xpu"], "--device xpu: not usable here"),
    (["--device", "meta"], "--device meta: not usable here"), (["--wrong"], "unrecognized arguments: --wrong"),
    (["--save", "/no/such/dir/m.pt"], "cannot write /no/such/dir/m.pt: name a file you may write"),
    (["--save", "/tmp"], "cannot write /tmp: name a file"), (["--layers", "9"], "add --model nn"),
    (["--model", "nn", "--factors", "9"], "--factors is DotProductBias's"), (["--lr-find", "--save", "m.pt"], "give it alone"),
    (["--similar", "Zardoz"], "no title 'Zardoz'"), (["--plot", "p.png", "--factors", "2"], "--factors 3+"),
    (["--plot", "p.txt"], "--plot p.txt: give a file name ending in .png, .pdf or .svg"),
    (["--plot", "pca"], "--plot pca: give a file name ending in .png"),
    (["--plot", "/no/such/dir/p.png"], "cannot write /no/such/dir/p.png: name a file"),
    (["--data", "ml-1m"], "give --data NAME or --ratings FILE"),
    (["--recommend", "99"], "unknown user 99"), (["--recommend", "one"], "unknown user 'one'"),
    (["--recommend=--5"], "unknown user '--5'"), (["--lr-find", "--epochs", "3"], "give it alone"),
    (["--lr-find", "--lr", "0.1"], "give it alone"), (["--ratings", ""], "--ratings: give a value, not an empty"),
    (["--save", "", "--load", ""], "--save, --load: give a value"), (["--recommend", ""], "--recommend: give a value"),
    (["--save", "m.png", "--plot", "./m.png"], "--save and --plot both name m.png: give two files"),
    (["--save", " "], "--save: give a value, not an empty string"), (["--wd", "1e13"], "--wd 10000000000000.0 is out of range: give 0.0 to 1000000000000.0"),
    *[(["--save", "/proc/m.pt"], "cannot write /proc/m.pt")] * os.path.isdir("/proc"),  # an existing folder
])
def test_command_line_bad_settings_are_one_line_errors_before_training(tiny_csv, capsys, flags, message):
    code, out, err = run_main(["--ratings", str(tiny_csv), "--device", "cpu", *flags], capsys)
    assert message in error_line(code, err) and "train_loss" not in out  # refused before any training


def test_checking_where_to_save_touches_nothing_there(tmp_path, capsys):
    keep = write(tmp_path / "m.pt.partial", "mine")
    code, _, err = run_main(["--lr-find", "--save", str(tmp_path / "m.pt")], capsys)
    assert "give it alone" in error_line(code, err) and keep.read_text() == "mine" and os.listdir(tmp_path) == [keep.name]
    (tmp_path / "n.pt.partial").mkdir()  # where save() writes first: refused before training, not after
    code, out, err = run_main(["--save", str(tmp_path / "n.pt")], capsys)
    assert "cannot write" in error_line(code, err) and "train_loss" not in out


def test_all_equal_ratings_say_there_is_nothing_to_learn(tmp_path, capsys):
    same = write(tmp_path / "r.csv", "user,item,rating\n1,1,3\n1,2,3\n2,1,3\n2,2,3\n")
    code, out, err = run_main(["--ratings", str(same), "--epochs", "1"], capsys)
    assert code == 0 and err == "warning: every rating is 3: there is nothing to learn\n" and "nan" not in out


def test_the_epoch_table_keeps_its_columns_apart_for_large_losses_and_top_sets_every_list(tmp_path, capsys):
    rows = "".join(f"{u},{i},{(u * i) % 3 * 500_000}\n" for u in range(1, 9) for i in range(1, 7))  # 0 .. 1e6
    code, out, _ = run_main(["--ratings", str(write(tmp_path / "r.csv", "u,i,r\n" + rows)), "--top", "2"], capsys)
    assert code == 0 and all(len(row) == 4 for row in table_rows(out)) and float(table_rows(out)[0][1]) > 1e5
    report = out.split("\n\n")[1]  # two lowest and two highest biases; user 1 rated every item
    assert report.count("\n  ") == 4 and report.endswith("user 1 rated every item\n")


def test_a_device_that_cannot_be_used_is_refused_before_the_data_is_read(tmp_path, capsys):
    code, _, err = run_main(["--ratings", str(tmp_path / "missing.csv"), "--device", "mps"], capsys)
    assert "--device mps: not usable here" in error_line(code, err)


def test_plot_file_suffixes_in_capitals_are_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(minicollab.importlib.util, "find_spec", lambda name: True)  # as if matplotlib were here
    assert minicollab.parse_args(["--plot", str(tmp_path / "P.PNG")]).plot == str(tmp_path / "P.PNG")


def test_a_flag_that_takes_a_column_known_by_name_for_another_role_is_refused(tmp_path, capsys):
    ratings = write(tmp_path / "r.csv", "userId,movieId,rating\n1,10,4\n2,10,3\n2,11,5\n")
    code, out, err = run_main(["--ratings", str(ratings), "--user-col", "rating"], capsys)
    assert "column 'rating' is the rating by its name, and --user-col takes it for the user; name the rating " \
           "with --rating-col" in error_line(code, err) and "train_loss" not in out
    code, out, err = run_main(["--ratings", str(ratings), "--user-col", "rating", "--rating-col", "userId"], capsys)
    assert code == 0 and "3 ratings, 3 users, 2 items" in out and err == ""  # both named: the caller's choice
    two = write(tmp_path / "s.csv", "customer,userId,movieId,rating\n1,7,10,4\n2,8,10,3\n2,9,11,5\n")
    code, out, err = run_main(["--ratings", str(two)], capsys)
    assert code == 0 and "s.csv: userId left unused, though named like a user, item or rating column" in err
    code, out, err = run_main(["--ratings", str(two), "--user-col", "userId"], capsys)
    assert code == 0 and err == ""  # the caller chose one of the two: nothing to warn about
    stamps = write(tmp_path / "t.csv", "userId,movieId,rating,timestamp\n1,10,4,7\n2,10,3,8\n2,11,5,9\n")
    code, out, err = run_main(["--ratings", str(stamps), "--rating-col", "timestamp"], capsys)
    assert code == 0 and "t.csv: rating left unused" in err  # a slip of the flag, most likely: say so


def test_a_ratings_file_of_one_rating_is_refused_naming_the_file(tmp_path, capsys):
    one = write(tmp_path / "one.csv", "user,item,rating\n1,1,4\n")
    code, _, err = run_main(["--ratings", str(one)], capsys)
    assert f"{one} holds 1 rating; training and validating need at least two" in error_line(code, err)


def test_column_flags_without_a_ratings_file_are_refused(capsys):
    code, _, err = run_main(["--user-col", "userId"], capsys)
    assert "--user-col and the like pick columns of --ratings FILE" in error_line(code, err)


def test_command_line_bad_files_are_one_line_errors(tmp_path, capsys):
    code, _, err = run_main(["--ratings", str(tmp_path / "missing.csv"), "--device", "cpu"], capsys)
    assert f"no ratings file at {tmp_path / 'missing.csv'}" in error_line(code, err)
    words = write(tmp_path / "words.csv", "user,item,rating\n1,1,4\n2,1,four\n")
    code, _, err = run_main(["--ratings", str(words), "--device", "cpu"], capsys)
    assert "line 3: rating 'four' is not a number" in error_line(code, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here")
def test_command_line_cuda_without_a_gpu_is_a_one_line_error(tiny_csv, capsys):
    code, out, err = run_main(["--ratings", str(tiny_csv), "--device", "cuda"], capsys)
    assert "--device cuda: not usable here" in error_line(code, err) and "train_loss" not in out


def test_recommendations_leave_out_every_rating_the_user_gave_train_and_valid(tmp_path, capsys):
    # 50 users x 40 items, each user rated 30 of them; 20% of those ratings land in the validation split
    rng = np.random.default_rng(0)
    rated = {u: set(rng.choice(40, 30, replace=False).tolist()) for u in range(1, 51)}
    rows = "".join(f"{u},{i},{1 + (u + i) % 5}\n" for u in rated for i in sorted(rated[u]))
    ratings = write(tmp_path / "r.csv", "user,item,rating\n" + rows)
    code, out, _ = run_main(["--ratings", str(ratings), "--recommend", "7", "--top", "40", "--save",
                             str(tmp_path / "m.pt")], capsys)
    top = [line.split()[1] for line in out.split("top 10 for user 7:\n")[1].splitlines()]  # 10 unrated
    assert code == 0 and sorted(map(int, top)) == sorted(set(range(40)) - rated[7])  # all 10 others, no more
    c = Collab.load(tmp_path / "m.pt")  # the saved file carries them: no data needed
    for user in (1, 7, 50):
        assert {int(t) for t, _ in c.recommend(user, 40)} == set(range(40)) - rated[user]
    code, out, _ = run_main(["--load", str(tmp_path / "m.pt"), "--recommend", "7", "--top", "40"], capsys)
    assert code == 0 and sorted(int(line.split()[1]) for line in out.splitlines()[1:]) == sorted(map(int, top))


def test_load_with_training_flags_is_refused(tmp_path, capsys):
    tiny_collab().save(tmp_path / "m.pt")
    code, _, err = run_main(["--load", str(tmp_path / "m.pt"), "--epochs", "3", "--lr", "0.1"], capsys)
    assert "--load uses a saved model as it is: drop --epochs, --lr" in error_line(code, err)


def test_loading_onto_a_device_that_cannot_be_used_blames_the_device_not_the_file(tmp_path, capsys):
    tiny_collab().save(tmp_path / "m.pt")
    code, _, err = run_main(["--load", str(tmp_path / "m.pt"), "--device", "mps"], capsys)
    assert "--device mps: not usable here" in error_line(code, err) and "model" not in err


@pytest.mark.parametrize("shift, scale, y_range", [
    (0, 1, (0.0, 5.5)), (100, 1, (100.0, 105.5)), (0, -1, (-6.0, -0.5)), (0, 100, (0.0, 550.0)), (50, 10, (50, 105))])
def test_y_range_and_wd_take_the_books_shape_on_any_rating_scale(tmp_path, capsys, monkeypatch, shift, scale, y_range):
    seen = []
    monkeypatch.setattr(minicollab, "fit_one_cycle", lambda model, train, valid, *args, **kwargs: seen.append(args))
    rows = "".join(f"{u},{i},{shift + scale * (1 + (u * i) % 5)}\n" for u in range(1, 9) for i in range(1, 7))
    code, _, _ = run_main(["--ratings", str(write(tmp_path / "r.csv", "user,item,rating\n" + rows)), "--save",
                           str(tmp_path / "m.pt")], capsys)
    lo, hi = Collab.load(tmp_path / "m.pt").model.y_range  # 1..5 -> (0, 5.5): a quarter of the spread below,
    assert code == 0 and (lo, hi) == pytest.approx(y_range)  # an eighth above
    assert seen[0][2] == pytest.approx(16 / 38 * scale ** 2)  # wd: the same L2 in the ratings' own units


def test_training_is_the_same_in_any_rating_units(tmp_path, capsys, monkeypatch):
    histories, fit = [], minicollab.fit_one_cycle
    monkeypatch.setattr(minicollab, "fit_one_cycle", lambda *args, **kwargs: histories.append(fit(*args, **kwargs)))
    units = [(0, 1), (10, 0.001), (0, 1000)]  # 1..5; 10.001..10.005; 1000..5000
    for shift, scale in units:
        rows = "".join(f"{u},{i},{shift + scale * (1 + (u * i) % 5):.6g}\n" for u in range(1, 31) for i in range(1, 21))
        run_main(["--ratings", str(write(tmp_path / "r.csv", "user,item,rating\n" + rows))], capsys)
    losses = [h[-1]["valid_loss"] / scale ** 2 for h, (_, scale) in zip(histories, units)]
    assert losses[1] == pytest.approx(losses[0], rel=0.01) and losses[2] == pytest.approx(losses[0], rel=0.01)


def test_similar_on_a_small_data_set_lists_titles(tiny_csv, capsys):
    code, out, err = run_main(["--ratings", str(tiny_csv), "--similar", "3", "--epochs", "1"], capsys)
    lines = out.split("most like 3:\n")[1].splitlines()
    assert code == 0 and len(lines) == 4 and {line.strip() for line in lines} == {"1", "2", "4", "5"}


def test_the_defaults_follow_the_datas_size(tmp_path, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(minicollab, "fit_one_cycle", lambda model, train, valid, *args, **kwargs: seen.append(args))
    rows = "".join(f"{u},{i},{1 + (u + i) % 5}\n" for u in range(80) for i in range(40))  # 3,200 ratings
    ratings = write(tmp_path / "r.csv", "user,item,rating\n" + rows)
    run_main(["--ratings", str(ratings)], capsys)
    doubled = "".join(f"{u},{i},{2 + 2 * ((u + i) % 5)}\n" for u in range(80) for i in range(40))
    run_main(["--ratings", str(write(tmp_path / "d.csv", "user,item,rating\n" + doubled))], capsys)
    monkeypatch.setitem(minicollab.DEFAULTS["dot"], "bs", 1)  # as if the data were big: bs = n_train / 320
    run_main(["--ratings", str(ratings), "--model", "dot"], capsys)
    run_main(["--ratings", str(ratings), "--bs", "64", "--wd", "0.5", "--lr", "0.1", "--epochs", "3"], capsys)
    (epochs, lr, wd, bs, seed), scaled, big, given = seen[0][:5], seen[1], seen[2], seen[3]
    # small data still gets 64 steps an epoch: 2,560 / 64 = 40 a batch, not 1,024
    assert (epochs, lr, bs, seed) == (5, DEFAULTS["dot"]["lr"], 40, 0) and wd == pytest.approx(16 / 2560)
    assert big[3] == 8 and given[:4] == (3, 0.1, 0.5, 64)  # 2,560 / 320 = 8; what is given is used
    # ratings 2..10 span (0, 11), twice 5.5: the same L2, measured in ratings, takes 4 times the wd
    assert scaled[2] == pytest.approx(16 / 2560 * 4) and scaled[3] == 40


def test_repeated_pairs_warn_and_few_items_refuse_a_plot_before_training(tmp_path, capsys):
    twice = write(tmp_path / "r.csv", "user,item,rating\n1,1,4\n1,1,5\n2,1,3\n2,2,1\n2,2,1\n")
    code, out, err = run_main(["--ratings", str(twice), "--epochs", "1"], capsys)
    assert code == 0 and err == "warning: ratings that repeat a (user, item) pair: 2\n" and "fit: 1 epoch in" in out
    assert "user 1 rated every item" not in out and "top 1 for user 1:\n" in out
    code, out, err = run_main(["--ratings", str(twice), "--recommend", "2", "--epochs", "1"], capsys)
    assert code == 0 and out.endswith("user 2 rated every item\n")
    code, out, err = run_main(["--ratings", str(twice), "--plot", str(tmp_path / "p.png")], capsys)
    if minicollab.importlib.util.find_spec("matplotlib"):
        assert "needs 3+ items, not 2" in error_line(code, err) and "train_loss" not in out


def test_progress_shows_on_a_terminal_and_never_in_a_pipe_or_a_log(monkeypatch, capsys):
    for tty in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
        for step in range(1, 101):
            minicollab.show_progress(step, 100, seconds=0.05 * step)  # 5 s for 100 steps
        minicollab.show_progress(1, 100, seconds=0.5)  # the first 2 s of an epoch show nothing
        err = capsys.readouterr().err
        if not tty:
            assert err == ""
        else:
            assert "\r  60/100 steps, 20.0/s, 2 s left" in err and "  40/100" not in err  # after 2 s only
            assert err.endswith("\r" + " " * 60 + "\r")  # the line is cleared when the epoch ends


def test_script_runs_as_a_program(tiny_csv):
    r = subprocess.run([sys.executable, "minicollab.py", "--ratings", str(tiny_csv), "--epochs", "1"], cwd=HERE,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert [row[0] for row in table_rows(r.stdout)] == ["0"]  # one epoch, one row


def test_a_model_saved_by_the_program_loads_in_python_and_back(tiny_csv, tmp_path):
    run = lambda *flags: subprocess.run([sys.executable, "minicollab.py", *flags], cwd=HERE, capture_output=True,
                                        text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert run("--ratings", str(tiny_csv), "--epochs", "1", "--save", str(tmp_path / "m.pt")).returncode == 0
    c = Collab.load(tmp_path / "m.pt")  # pickled as minicollab.Collab, not as the program's __main__.Collab
    assert type(c) is Collab and c.users.ids == [1, 2, 3, 4, 5, 6]
    c.fold_in(7, [1, 2], [5.0, 1.0])
    c.save(tmp_path / "n.pt")
    r = run("--load", str(tmp_path / "n.pt"), "--recommend", "7")
    assert r.returncode == 0 and r.stderr == "" and len(r.stdout.split("top 3 for user 7:\n")[1].splitlines()) == 3


def test_a_closed_stdout_ends_the_program_quietly(tiny_csv):
    r = subprocess.run(f"{sys.executable} minicollab.py --ratings {tiny_csv} --epochs 1 | head -1", shell=True,
                       cwd=HERE, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert r.stdout == "30 ratings, 6 users, 5 items\n" and r.stderr == ""


def test_import_prints_nothing_downloads_nothing_and_leaves_cuda_alone(tmp_path):
    env = dict(os.environ, MINICOLLAB_DATA=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", "import minicollab, torch; print(torch.cuda.is_initialized())"],
                       cwd=HERE, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "False\n", "")
    assert not (tmp_path / "cache").exists()


@pytest.fixture
def saved_model(tmp_path, capsys):
    """Trained 1 epoch on 40 users x 8 titled items (movies.csv beside), saved, the data deleted.

    Every user rated items 1-6; only users 1-5 rated items 7 and 8."""
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
    code, out, err = run_main(["--load", str(saved_model), "--recommend", "40", "--top", "2"], capsys)
    lines = out.splitlines()
    assert (code, err, lines[0], len(lines)) == (0, "", "top 2 for user 40:", 3)
    expected = Collab.load(saved_model).recommend(40, 2)
    assert [line.split(maxsplit=1) for line in lines[1:]] == [[f"{r:.2f}", t] for t, r in expected]
    assert {t for t, _ in expected} == {"Gattaca (1997)", "Heat (1995)"}  # titles, and only the two not rated


def test_command_line_unknown_user_and_bad_model_file_are_one_line_errors(saved_model, tmp_path, capsys):
    code, _, err = run_main(["--load", str(saved_model), "--recommend", "99"], capsys)
    assert error_line(code, err) == "error: unknown user 99\n"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model" * 100)
    code, _, err = run_main(["--load", str(garbage), "--recommend", "3"], capsys)
    assert f"{garbage} is no minicollab model" in error_line(code, err)


def test_command_line_similar_by_title(saved_model, capsys):
    code, out, err = run_main(["--load", str(saved_model), "--similar", "Fargo (1996)"], capsys)
    lines = out.splitlines()
    assert (code, err, lines[0]) == (0, "", "most like Fargo (1996):")
    c = Collab.load(saved_model)
    f = c.model.movie_factors.detach().numpy()
    cos = f @ f[5] / np.linalg.norm(f, axis=1) / np.linalg.norm(f[5])  # Fargo is item 6, index 5
    assert [line.strip() for line in lines[1:]] == [c.title(i) for i in np.argsort(-cos[:5])]  # items 1-5: rated 40x
    code, _, err = run_main(["--load", str(saved_model), "--similar", "Frago (1996)"], capsys)
    assert error_line(code, err).startswith("error: no title 'Frago (1996)'")


def test_command_line_plot_writes_a_png(saved_model, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, out, err = run_main(["--load", str(saved_model), "--plot", str(tmp_path / "pca.png")], capsys)
    assert code == 0 and f"saved the PCA plot to {tmp_path / 'pca.png'}" in out
    assert (tmp_path / "pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_plot_without_matplotlib_says_so_before_training(tiny_csv, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(minicollab.importlib.util, "find_spec", lambda name: None)  # as if not installed
    code, out, err = run_main(["--ratings", str(tiny_csv), "--plot", str(tmp_path / "pca.png")], capsys)
    assert "--plot needs matplotlib: pip install matplotlib" in error_line(code, err) and "train_loss" not in out
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
        assert f"warning: {cached} failed its check (SHA-256 mismatch" in capsys.readouterr().err
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
    with pytest.raises(DataError, match=r"cache directory .*file \(it is a file, not a directory\)"):
        load_movielens(dir=tmp_path / "file", from_file=tiny_zip, quiet=True)


def test_data_fetch_command_line_mistakes_are_one_line_errors(capsys):
    for argv in (["--name", "ml-5m"], ["--name"], ["extra"]):
        with pytest.raises(SystemExit) as e:
            data_fetch.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    with pytest.raises(DataError, match="unknown data set ''"):
        data_fetch.load("")  # not ml-100k by a silent default


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
    for path, why in ((text, "is not a zip file"), (tmp_path / "missing.zip", "does not exist"), (d.parent, "is a dir"),
                      (other, "is not the ml-100k.zip from GroupLens \\(SHA-256 mismatch")):
        with pytest.raises(DataError, match=why):
            load_movielens(dir=d, from_file=path, quiet=True)
    with pytest.raises(DataError, match="is not the ml-latest-small.zip.*not ml-latest-small"):
        load_movielens("ml-latest-small", dir=d, from_file=tiny_zip, quiet=True)
    assert os.listdir(d) == []
    with pytest.raises(DataError, match="unknown data set 'ml-2m'"):
        load_movielens("ml-2m", dir=d)


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


RATINGS_CSV = "userId,movieId,rating,timestamp\n1,10,4.0,100\n2,10,3.5,101\n1,9,5,102\n3,20,1,103\n"
MOVIES_CSV = 'movieId,title,genres\n9,"Heat, The (1995)",Action\n10,Amélie (2001),Comedy\n'


def as_lists(data):
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in data.items()}


def one_line_error(call, *args, **kwargs):
    """The message of the DataError that call raises; asserts it is one line."""
    with pytest.raises(DataError) as e:
        call(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


EXPECTED = {"user": [1, 2, 1, 3], "item": [10, 10, 9, 20], "rating": [4.0, 3.5, 5.0, 1.0],
            "timestamp": [100, 101, 102, 103], "titles": {}}


# ---- data_fetch.py: read_ratings: what it returns, and the fast reader checked against the exact one ---------------------------

def test_reads_a_movielens_csv_with_timestamps_and_the_titles_beside_it(tmp_path):
    write(tmp_path / "movies.csv", MOVIES_CSV)
    data = read_ratings(write(tmp_path / "ratings.csv", RATINGS_CSV))
    assert list(data) == ["user", "item", "rating", "timestamp", "titles"]
    assert data["user"].dtype == data["item"].dtype == data["timestamp"].dtype == np.int64
    assert data["rating"].dtype == np.float32 and data["rating"].sum() == 13.5
    assert as_lists(data) == {**EXPECTED, "titles": {9: "Heat, The (1995)", 10: "Amélie (2001)"}}


def exact_reader_only(monkeypatch):
    monkeypatch.setattr(data_fetch, "_read_fast", lambda opener, layout: None)


def test_the_fast_reader_and_the_exact_reader_agree_on_random_files(tmp_path, monkeypatch):
    g = np.random.default_rng(0)
    n = 3000
    users, items = g.integers(-5, 10**12, n), g.integers(0, 300, n)
    ratings, stamps = g.integers(1, 11, n) / 2, g.integers(0, 2**40, n)
    rows = [f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in zip(users, items, ratings, stamps)]
    path = write(tmp_path / "r.tsv", "user\titem\trating\ttimestamp\n" + "".join(rows))
    monkeypatch.setattr(data_fetch, "CHUNK", 1000)  # dozens of chunks, each cut at a line end
    fast = read_ratings(path)
    exact_reader_only(monkeypatch)
    exact = read_ratings(path)
    for k in ("user", "item", "rating", "timestamp"):
        assert fast[k].dtype == exact[k].dtype and np.array_equal(fast[k], exact[k])
    assert np.array_equal(fast["user"], users) and np.array_equal(fast["rating"], ratings.astype(np.float32))
    assert np.array_equal(fast["timestamp"], stamps)


@pytest.mark.parametrize("text", [
    RATINGS_CSV, "\ufeff" + RATINGS_CSV, RATINGS_CSV.replace("\n", "\r\n"), RATINGS_CSV + "\n\n",
    RATINGS_CSV.replace(",", "::"), RATINGS_CSV.replace(",", "\t").split("\n", 1)[1],  # ml-1m's, u.data's
    "u,i,r,comment\n1,2,3.25,fine\n-4,0,0.125,x\n",
], ids=["csv", "bom", "crlf", "trailing-blank-lines", "dat", "no-header", "text-column"])
def test_common_files_never_need_the_slow_exact_reader(tmp_path, monkeypatch, text):
    monkeypatch.setattr(data_fetch, "_read_exact", lambda *args: pytest.fail("the exact reader ran"))
    data = read_ratings(write(tmp_path / "r.csv", text), quiet=True)
    assert len(data["rating"]) in (2, 4) and data["user"].dtype == np.int64


def test_many_distinct_ratings_and_extra_text_columns_read_as_the_csv_module_reads_them(tmp_path):
    g = np.random.default_rng(1)
    lines = [f"{u},{i},{r:.4f},note {k}\n" for k, (u, i, r) in
             enumerate(zip(g.integers(0, 50, 2000), g.integers(0, 50, 2000), g.uniform(0, 5, 2000)))]
    path = write(tmp_path / "r.csv", "u,i,r,comment\n" + "".join(lines))
    data = read_ratings(path)
    rows = list(csv.reader(io.StringIO("".join(lines))))  # the same numbers, a second way
    assert data["user"].tolist() == [int(r[0]) for r in rows] and data["item"].tolist() == [int(r[1]) for r in rows]
    assert np.array_equal(data["rating"], np.array([float(r[2]) for r in rows], dtype=np.float32))
    assert "timestamp" not in data


# ---- encodings and what a file holds -------------------------------------------------------------------------

@pytest.mark.parametrize("encode", [
    lambda t: codecs.BOM_UTF8 + t.encode(),
    lambda t: t.encode("utf-16"),  # Excel's "Unicode text", BOM first
    lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"),
    lambda t: gzip.compress(t.encode()),
    lambda t: t.replace("\n", "\r\n").encode(),
], ids=["utf-8-bom", "utf-16-le", "utf-16-be", "gzip", "crlf"])
def test_encodings_gzip_and_line_ends_give_the_same_data(tmp_path, encode):
    assert as_lists(read_ratings(write(tmp_path / "r.csv", encode(RATINGS_CSV)))) == EXPECTED


def test_a_file_that_is_not_utf8_is_read_as_windows_1252_and_says_so(tmp_path, capsys):
    text = "Benutzer;Film;Bewertung\nJosé;Café crème;4\nZoë;Café crème;5\n"
    data = read_ratings(write(tmp_path / "r.csv", text, encoding="cp1252"))
    assert data["user"].tolist() == ["José", "Zoë"] and data["item"].tolist() == ["Café crème"] * 2
    assert f"warning: {tmp_path / 'r.csv'} is not UTF-8; reading it as cp1252" in capsys.readouterr().err
    read_ratings(tmp_path / "r.csv", quiet=True)
    assert capsys.readouterr().err == ""


def test_a_latin1_movies_csv_beside_a_good_ratings_csv_gives_its_titles(tmp_path):
    write(tmp_path / "movies.csv", "movieId,title\n9,Misérables (1995)\n10,Café (2001)\n", encoding="latin-1")
    data = read_ratings(write(tmp_path / "ratings.csv", RATINGS_CSV), quiet=True)
    assert data["titles"] == {9: "Misérables (1995)", 10: "Café (2001)"}


def test_titles_keys_follow_the_item_ids_type(tmp_path):
    write(tmp_path / "movies.csv", "movieId,title\n007,Bond\n7,Seven\nx,Ex\n")
    ints = read_ratings(write(tmp_path / "ratings.csv", "u,movieId,r\n1,7,4\n2,8,3\n"))
    assert ints["item"].dtype == np.int64 and ints["titles"] == {"007": "Bond", 7: "Seven", "x": "Ex"}
    texts = read_ratings(write(tmp_path / "ratings.csv", "u,movieId,r\n1,7,4\n2,x,3\n"))
    assert texts["item"].tolist() == ["7", "x"] and texts["titles"] == {"007": "Bond", "7": "Seven", "x": "Ex"}


@pytest.mark.parametrize("content, message", [
    (None, "no ratings file at {path} (no such file)"),
    (b"", "{path} is empty"),
    ("\n  \n# just a comment\n\n", "{path} holds only blank lines and comments"),
    ("user,item,rating\n\n\n", "{path} has a header (user, item, rating) but no data rows"),
    (b"\x00\x01binary\x00", "{path} is not a text file (it holds NUL bytes)"),
    (gzip.compress(b"user,item,rating\n1,2,3\n")[:20], "{path}: cannot read it (Compressed file ended"),
])
def test_what_is_not_a_ratings_file_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "r.csv"
    if content is not None:
        write(path, content)
    assert message.format(path=path) in one_line_error(read_ratings, path)


def test_a_zip_says_unzip_it_or_use_from_file(tmp_path):
    with zipfile.ZipFile(tmp_path / "ml.zip", "w") as z:
        z.writestr("ratings.csv", RATINGS_CSV)
    msg = one_line_error(read_ratings, tmp_path / "ml.zip")
    assert "is a zip archive; unzip it and pass the ratings file inside" in msg
    assert "python data_fetch.py --name NAME --from-file ZIP" in msg


# ---- delimiters, blank lines, comments, headers --------------------------------------------------------------

@pytest.mark.parametrize("delimiter", [",", "\t", ";", "|", "::"])
def test_each_delimiter_is_sniffed(tmp_path, delimiter):
    text = RATINGS_CSV.replace(",", delimiter)
    assert as_lists(read_ratings(write(tmp_path / "r.txt", text))) == EXPECTED


def test_blank_lines_anywhere_and_comment_lines_are_skipped(tmp_path):
    text = "\n# exported 2024-01-01\n\n" + RATINGS_CSV.replace("\n2,", "\n\n# a note\n  \n2,") + "\n\n\n"
    assert as_lists(read_ratings(write(tmp_path / "r.csv", text))) == EXPECTED
    crlf = text.replace("\n", "\r\n")
    assert as_lists(read_ratings(write(tmp_path / "r.csv", crlf))) == EXPECTED


def test_header_names_are_stripped_and_shown_quoted_where_spaces_would_hide(tmp_path):
    data = read_ratings(write(tmp_path / "r.csv", " user , item,rating \n1,2,3\n"), user_col=" user")
    assert as_lists(data) == {"user": [1], "item": [2], "rating": [3.0], "titles": {}}
    msg = one_line_error(read_ratings, write(tmp_path / "s.csv", "user id,item,rating\n1,2,3\n"), user_col="user")
    assert "no column 'user'; columns found: 'user id', item, rating (pick " in msg


def test_columns_by_name_in_any_order_and_common_spellings(tmp_path):
    text = "Stars,Movie_ID,time,User ID\n4.5,10,99,1\n2,11,98,2\n"
    data = read_ratings(write(tmp_path / "r.csv", text))
    assert as_lists(data) == {"user": [1, 2], "item": [10, 11], "rating": [4.5, 2.0], "titles": {}}


def test_named_columns_win_and_the_rest_take_the_first_columns_left(tmp_path):
    path = write(tmp_path / "r.tsv", "who\twhen\tscore\tmovie\nalice\t5\t4.5\tAlien\nbob\t6\t2\tHeat\n")
    data = read_ratings(path, user_col="who", item_col="movie")  # 'score' is a rating by name
    assert data["user"].tolist() == ["alice", "bob"] and data["item"].tolist() == ["Alien", "Heat"]
    assert data["rating"].tolist() == [4.5, 2.0]
    data = read_ratings(path, item_col="MOVIE", rating_col="when")  # case aside; user takes the first left
    assert data["user"].tolist() == ["alice", "bob"] and data["rating"].tolist() == [5.0, 6.0]


@pytest.mark.parametrize("text, cols, message", [
    (RATINGS_CSV, dict(rating_col="stars"),
     "no column 'stars'; columns found: userId, movieId, rating, timestamp (pick user, item and rating with "
     "--user-col, --item-col, --rating-col)"),
    (RATINGS_CSV, dict(user_col="movieId", item_col="movieId"),
     "column 'movieId' is named for both the user and the item; each needs its own column"),
    ("user,user,rating\n1,2,3\n", {}, "2 columns are named 'user'; rename them"),
    ("user,item\n1,2\n", {}, "has 2 columns (user, item); a ratings file needs user, item and rating columns"),
    ("user\titem\n1\t2\n", {}, "has 2 columns (user, item)"),
    ("user item rating\n1 2 3\n", {}, "has 1 column ('user item rating')"),
    ("userId,movieId,timestamp\n1,2,3\n", {}, "no column is left for the rating (columns found: userId, movieId, "
     "timestamp); pick it with --rating-col"),
])
def test_column_errors_name_the_columns_found(tmp_path, text, cols, message):
    assert message in one_line_error(read_ratings, write(tmp_path / "r.csv", text), **cols)


def test_a_file_without_header_is_all_data_with_a_warning_and_numbered_columns(tmp_path, capsys):
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3.5\t891717742\n")
    data = read_ratings(path)
    assert as_lists(data) == {"user": [196, 186], "item": [242, 302], "rating": [3.0, 3.5], "titles": {}}
    err = capsys.readouterr().err
    assert err == (f"warning: {path} has no header (its first line is numbers): all lines are data, "
                   "columns 1 as user, 2 as item, 3 as rating\n")
    data = read_ratings(path, user_col="2", item_col="1", rating_col="3")
    assert data["user"].tolist() == [242, 302] and capsys.readouterr().err == ""
    assert "columns found: 1, 2, 3, 4 (the file has no header: name columns by number, 1 to 4)" in \
        one_line_error(read_ratings, path, user_col="userId")


# ---- ids: int64 only when every one is written as str(int(s)) writes it --------------------------------------

@pytest.mark.parametrize("odd, plain", [("007", "7"), ("+3", "3"), ("1_1", "11"), ("٣", "3"), ("7 7", "77"),
                                        ("-0", "0"), ("7.0", "7"), ("9223372036854775808", "1")])
def test_ids_that_are_not_plain_ints_keep_the_column_as_text_so_nothing_merges(tmp_path, capsys, odd, plain):
    data = read_ratings(write(tmp_path / "r.csv", f"u,i,r\n1,{odd},3\n2,{plain},4\n"))
    assert data["item"].tolist() == [odd, plain] and data["item"].dtype.kind == "U"
    assert data["user"].dtype == np.int64 and len(np.unique(data["item"])) == 2
    assert "item ids are kept as text" in capsys.readouterr().err


def test_the_ends_of_int64_stay_ints(tmp_path):
    data = read_ratings(write(tmp_path / "r.csv", "u,i,r\n-9223372036854775808,0,3\n9223372036854775807,-5,4\n"))
    assert data["user"].tolist() == [-2**63, 2**63 - 1] and data["item"].tolist() == [0, -5]
    assert data["user"].dtype == data["item"].dtype == np.int64


def test_quoted_fields_are_read_by_csv_rules(tmp_path):
    data = read_ratings(write(tmp_path / "r.csv", 'u,i,r\n"1","Heat, The",4\n2,Alien,"3.5"\n'))
    assert as_lists(data) == {"user": [1, 2], "item": ["Heat, The", "Alien"], "rating": [4.0, 3.5], "titles": {}}


# ---- bad rows: the real line, counting the header, blank and comment lines -----------------------------------

@pytest.mark.parametrize("bad, message", [
    ("2,10,five,101", "line 6: rating 'five' is not a number; fix or remove that line"),
    ("2,10,nan,101", "line 6: rating is nan; remove or fill that row"),
    ("2,10,-inf,101", "line 6: rating is -inf"),
    ("2,10,1e39,101", "line 6: rating 1e39 is beyond ±1,000,000; rescale the ratings"),  # inf as float32
    ("2,10,-3e30,101", "line 6: rating -3e30 is beyond ±1,000,000"),  # float32, but its square is not
    ("2,10,,101", "line 6: rating '' is not a number"),
    ("2,10", "line 6: too few fields (2, and userId, movieId, rating, timestamp need 4)"),
])
def test_a_bad_row_names_its_real_line_number(tmp_path, bad, message):
    text = "# header next\nuserId,movieId,rating,timestamp\n1,10,4.0,100\n\n# a comment\n" + bad + "\n3,20,1,103\n"
    assert f"{tmp_path / 'r.csv'}, {message}" in one_line_error(read_ratings, write(tmp_path / "r.csv", text))


def test_a_decimal_comma_gets_a_hint(tmp_path):
    assert "line 2: rating '4,5' is not a number (write decimals with a dot)" in \
        one_line_error(read_ratings, write(tmp_path / "r.csv", "user;item;rating\n1;2;4,5\n"))


def test_timestamps_that_are_not_whole_numbers_are_left_out_with_a_warning(tmp_path, capsys):
    data = read_ratings(write(tmp_path / "r.csv", "user,item,rating,timestamp\n1,2,3,2024-01-01\n"))
    assert list(data) == ["user", "item", "rating", "titles"]
    assert "the timestamps are not all whole numbers, so they are left out" in capsys.readouterr().err


# ---- MovieLens: every name, from tiny zips of the real layouts served from 127.0.0.1 -------------------------

ML_RATINGS = [(1, 1, 4.0, 964982703), (1, 3, 4.5, 964981247), (2, 3, 0.5, 1445714835), (3, 2, 5.0, 1445714836)]
ML_TITLES = {1: "Toy Story (1995)", 2: "Misérables, Les (1995)", 3: "American President, The (1995)"}


def movielens_zip(name, path, folder=None, ratings_text=None):
    """A zip laid out as GroupLens's `name`, holding ML_RATINGS and ML_TITLES (latin-1 where GroupLens's is)."""
    default_folder, ratings, movies, encoding = data_fetch.MOVIELENS[name]
    folder = folder or default_folder
    whole = name in ("ml-100k", "ml-1m")  # their ratings are whole stars
    rows = [(u, i, math.ceil(r) if whole else r, t) for u, i, r, t in ML_RATINGS]
    if ratings == "u.data":
        text = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
        titles = "".join(f"{i}|{title}|01-Jan-1995||http://x|0|1\n" for i, title in ML_TITLES.items())
    elif ratings == "ratings.dat":
        text = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows)
        titles = "".join(f"{i}::{title}::Comedy|Drama\n" for i, title in ML_TITLES.items())
    else:
        text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
        titles = "movieId,title,genres\n" + "".join(
            f'{i},"{title}",Comedy\n' if "," in title else f"{i},{title},Comedy\n" for i, title in ML_TITLES.items())
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{folder}/{ratings}", text if ratings_text is None else ratings_text)
        z.writestr(f"{folder}/{movies}", titles.encode(encoding or "utf-8"))
        z.writestr(f"{folder}/README.txt", "a stand-in for the GroupLens zip")
    return path


def check_movielens(data, name):
    whole = name in ("ml-100k", "ml-1m")
    assert data["user"].tolist() == [1, 1, 2, 3] and data["item"].tolist() == [1, 3, 3, 2]
    assert data["rating"].tolist() == ([4, 5, 1, 5] if whole else [4.0, 4.5, 0.5, 5.0])
    assert data["timestamp"].tolist() == [t for *_, t in ML_RATINGS]
    assert data["user"].dtype == data["item"].dtype == data["timestamp"].dtype == np.int64
    assert data["rating"].dtype == np.float32 and data["titles"] == ML_TITLES


def trust(monkeypatch, name, path):
    """Patch the pinned SHA-256 of name (if it has one) to that of path."""
    if name == "ml-100k":
        monkeypatch.setattr(data_fetch, "ML100K_SHA256", sha256_of(path))
    elif name in data_fetch.SHA256:
        monkeypatch.setitem(data_fetch.SHA256, name, sha256_of(path))


NAMES = list(data_fetch.URLS)


def test_every_name_has_its_grouplens_url_and_pins_what_does_not_change():
    assert NAMES == ["ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small", "ml-latest"]
    assert all(url == f"https://files.grouplens.org/datasets/movielens/{n}.zip" for n, url in data_fetch.URLS.items())
    assert sorted(data_fetch.SHA256) == ["ml-1m", "ml-20m", "ml-25m"]


@pytest.mark.parametrize("name", NAMES)
def test_each_movielens_name_downloads_verifies_and_reads(name, tmp_path, monkeypatch, http_server):
    src = movielens_zip(name, tmp_path / "src.zip")
    trust(monkeypatch, name, src)
    http_server.files[f"/{name}.zip"] = src.read_bytes()
    monkeypatch.setitem(data_fetch.URLS, name, f"{http_server.url}/{name}.zip")
    data = load_movielens(name, dir=tmp_path / "c", quiet=True)
    check_movielens(data, name)
    assert data["source"] == f"{http_server.url}/{name}.zip" and data["path"] == tmp_path / "c" / f"{name}.zip"
    assert [p.name for p in (tmp_path / "c").iterdir()] == [f"{name}.zip"]  # the ratings were never unzipped
    again = load_movielens(name, dir=tmp_path / "c", quiet=True)
    assert again["source"] == "cache" and len(http_server.hits) == 1
    check_movielens(again, name)


def test_a_zip_without_a_pinned_hash_is_read_once_per_load(tmp_path, monkeypatch):
    reads = []
    real = data_fetch.read_movielens_zip
    monkeypatch.setattr(data_fetch, "read_movielens_zip", lambda *a: reads.append(a) or real(*a))
    src = movielens_zip("ml-32m", tmp_path / "ml-32m.zip")
    check_movielens(load_movielens("ml-32m", dir=tmp_path / "c", from_file=src, quiet=True), "ml-32m")
    check_movielens(load_movielens("ml-32m", dir=tmp_path / "c", quiet=True), "ml-32m")
    assert len(reads) == 2  # once to check it, and that same read is what comes back


@pytest.mark.parametrize("name", ["ml-1m", "ml-25m", "ml-latest"])
def test_from_file_and_the_command_line(name, tmp_path, monkeypatch, capsys):
    src = movielens_zip(name, tmp_path / f"my-{name}.zip")
    trust(monkeypatch, name, src)
    assert data_fetch.main(["--name", name, "--dir", str(tmp_path / "c"), "--from-file", str(src)]) == 0
    out = capsys.readouterr().out
    assert f"{name}: 4 ratings, 3 users, 3 items, mean rating" in out and "item 1 is 'Toy Story (1995)'" in out
    assert f"source: file {src}" in out


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_ratings_file_from_file_is_a_one_line_error_for_every_name(name, tmp_path, capsys):
    src = movielens_zip(name, tmp_path / f"{name}.zip", ratings_text="")
    assert data_fetch.main(["--name", name, "--dir", str(tmp_path / "c"), "--from-file", str(src)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src} is not the {name}.zip from GroupLens (") and err.count("\n") == 1
    if name not in data_fetch.SHA256 and name != "ml-100k":  # checked by structure, not by hash
        folder, ratings, *_ = data_fetch.MOVIELENS[name]
        assert f"not {name}: {folder}/{ratings} is empty" in err


def test_the_command_line_program_never_shows_a_traceback(tmp_path):
    src = movielens_zip("ml-latest-small", tmp_path / "ml-latest-small.zip", ratings_text="")
    r = subprocess.run([sys.executable, "data_fetch.py", "--name", "ml-latest-small", "--dir", str(tmp_path / "c"),
                        "--from-file", str(src)], cwd=HERE, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=60)
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "ml-latest-small/ratings.csv is empty" in r.stderr


@pytest.mark.parametrize("name, wrong, why", [
    ("ml-10m", dict(folder="ml-10m"), "not ml-10m: no ml-10M100K/ratings.dat in the zip"),
    ("ml-latest", dict(ratings_text="user,item,rating\n1,2,3\n"), "has columns user, item, rating, not userId"),
    ("ml-32m", dict(ratings_text="userId,movieId,rating,timestamp\n1,2,7,3\n"), "ratings outside 0.5..5"),
    ("ml-latest-small", dict(ratings_text="userId,movieId,rating,timestamp\nu1,2,3,4\n"),
     "ids or timestamps that are not integers"),
    ("ml-1m", {}, "SHA-256 mismatch"),  # pinned: refused by its hash, whatever it holds
])
def test_a_zip_of_the_wrong_structure_is_refused_in_one_line(name, wrong, why, tmp_path):
    src = movielens_zip(name, tmp_path / "x.zip", **wrong)
    msg = one_line_error(load_movielens, name, dir=tmp_path / "c", from_file=src, quiet=True)
    assert msg.startswith(f"{src} is not the {name}.zip from GroupLens (") and why in msg
    assert not any((tmp_path / "c").iterdir())


@pytest.mark.parametrize("name", ["ml-1m", "ml-10m", "ml-25m", "ml-latest"])
def test_a_failed_download_says_to_fetch_the_zip_by_hand(name, tmp_path, monkeypatch, closed_url):
    monkeypatch.setitem(data_fetch.URLS, name, closed_url)
    monkeypatch.setattr(data_fetch, "BACKOFF", 0)
    monkeypatch.setattr(data_fetch, "fetch_wheel", lambda d: pytest.fail("only ml-100k falls back to PyPI"))
    msg = one_line_error(load_movielens, name, dir=tmp_path, quiet=True)
    assert msg.startswith(f"could not fetch {name} (tried {closed_url}: ") and "Connection refused" in msg
    assert f"download {closed_url} by hand to {tmp_path / (name + '.zip')}, or run `python data_fetch.py " \
           f"--name {name} --from-file PATH`" in msg


def test_unknown_name_lists_every_name(tmp_path):
    assert f"choose one of {', '.join(NAMES)}" in one_line_error(load_movielens, "ml-2m", dir=tmp_path)


CHOOSE = "if that is wrong, choose with --user-col, --item-col, --rating-col"


def fast_reader_only(monkeypatch):
    monkeypatch.setattr(data_fetch, "_read_exact", lambda *args: pytest.fail("the exact reader ran"))


# ---- data_fetch.py: columns taken by position under a header are said aloud, once ------------------------------------------

def test_a_header_of_unknown_names_takes_columns_by_position_and_says_which(tmp_path, capsys):
    path = write(tmp_path / "r.csv", "film,viewer,score\nHeat,ann,5\nAlien,bob,4\n")
    data = read_ratings(path)  # 'score' is a rating by name; film and viewer are taken as they come
    assert data["user"].tolist() == ["Heat", "Alien"] and data["item"].tolist() == ["ann", "bob"]
    assert capsys.readouterr().err == (f"warning: {path}: the header names no user or item column we know, so "
                                       f"columns were taken by position: film as user, viewer as item; {CHOOSE}\n")
    data = read_ratings(path, user_col="viewer", item_col="film")  # named: nothing to say
    assert data["user"].tolist() == ["ann", "bob"] and capsys.readouterr().err == ""
    read_ratings(path, quiet=True)
    assert capsys.readouterr().err == ""
    read_ratings(write(tmp_path / "t.csv", "a,b,c\n1,2,3\n"))
    assert capsys.readouterr().err == (f"warning: {tmp_path / 't.csv'}: the header names no user, item or rating "
                                       f"column we know, so columns were taken by position: a as user, b as item, "
                                       f"c as rating; {CHOOSE}\n")
    read_ratings(write(tmp_path / "s.csv", "who,what,how\nann,Heat,5\n"), item_col="what")
    assert capsys.readouterr().err == (f"warning: {tmp_path / 's.csv'}: the header names no user or rating column "
                                       f"we know, so columns were taken by position: who as user, how as rating; "
                                       f"{CHOOSE}\n")


@pytest.mark.parametrize("text, user, item", [
    ("userId,movieId,rating,timestamp\n7,10,4,99\n", [7], [10]),
    ("user,item,rating\n7,10,4\n", [7], [10]),
    ("movie_title,user_name,rating\nHeat,ann,4\n", ["ann"], ["Heat"]),  # recognised, so the film is the item
    ("movie_title,movieId,userId,rating\nHeat,10,7,4\n", [7], [10]),  # an id column wins over a title
])
def test_columns_named_or_known_by_name_take_no_warning(tmp_path, capsys, text, user, item):
    data = read_ratings(write(tmp_path / "r.csv", text))
    assert (data["user"].tolist(), data["item"].tolist(), data["rating"].tolist()) == (user, item, [4.0])
    assert capsys.readouterr().err == ""


def test_every_column_named_by_the_caller_takes_no_warning(tmp_path, capsys):
    data = read_ratings(write(tmp_path / "r.csv", "a,b,c\n7,10,4\n"), user_col="b", item_col="a", rating_col="c")
    assert (data["user"].tolist(), data["item"].tolist()) == ([10], [7]) and capsys.readouterr().err == ""


# ---- B. CR line ends read; whatever the csv module cannot read is a one-line error naming the line --------------

@pytest.mark.parametrize("text, expected", [
    ('user,item,rating\n1,"A, The",5\n2,b,4\n', {"user": [1, 2], "item": ["A, The", "b"], "rating": [5.0, 4.0]}),
    ("user,item,rating\n1,a,5\n2,b,4\n", {"user": [1, 2], "item": ["a", "b"], "rating": [5.0, 4.0]}),
    ("userId,movieId,rating\n1,10,5\n\n2,9,4.5\n", {"user": [1, 2], "item": [10, 9], "rating": [5.0, 4.5]}),
], ids=["quoted", "words", "numbers"])
def test_old_mac_cr_line_ends_read_as_line_ends(tmp_path, monkeypatch, text, expected):
    write(tmp_path / "movies.csv", 'movieId,title\r9,"Heat, The (1995)"\r10,Alien (1979)\r')
    key = int if expected["item"][0] == 10 else str  # titles are keyed as the items are
    titles = {key(9): "Heat, The (1995)", key(10): "Alien (1979)"}
    cr = write(tmp_path / "ratings.csv", text.replace("\n", "\r"))
    assert as_lists(read_ratings(cr)) == {**expected, "titles": titles}
    exact_reader_only(monkeypatch)
    assert as_lists(read_ratings(cr)) == {**expected, "titles": titles}


@pytest.mark.parametrize("content, message", [
    (b'\x80"\rA,B,C\n1,2,3\n', "line 1: not readable as CSV (new-line character seen in unquoted field); check "
                               "that it is a text file of ratings, and fix or remove that line"),
    ('u,i,r\n1,2,3\n1,"' + "x" * 200_000 + '",3\n', "line 3: not readable as CSV (field larger than field limit "
                                                     "(131072))"),
], ids=["binary-without-nul", "huge-field"])
def test_a_line_the_csv_module_cannot_read_is_a_one_line_error_naming_it(tmp_path, content, message):
    path = write(tmp_path / "r.csv", content)
    assert f"{path}, {message}" in one_line_error(read_ratings, path)


def test_a_movies_csv_the_csv_module_cannot_read_costs_only_the_titles(tmp_path, capsys):
    movies = write(tmp_path / "movies.csv", 'movieId,title\n10,"' + "x" * 200_000 + '"\n')
    data = read_ratings(write(tmp_path / "ratings.csv", "userId,movieId,rating\n1,10,5\n"))
    assert as_lists(data) == {"user": [1], "item": [10], "rating": [5.0], "titles": {}}
    assert capsys.readouterr().err == (f"warning: {movies}, line 2: not readable as CSV (field larger than field "
                                       "limit (131072)); check that it is a text file of ratings, and fix or "
                                       "remove that line; going on without titles\n")


# ---- C. spaces around fields are stripped, by the fast reader and the exact one alike --------------------------

@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|", "::"])
@pytest.mark.parametrize("reader", [fast_reader_only, exact_reader_only])
def test_spaces_typed_around_fields_are_stripped_so_ids_stay_ints_and_match_movies_csv(tmp_path, monkeypatch,
                                                                                       reader, delimiter):
    write(tmp_path / "movies.csv", "movieId,title\n10,Heat (1995)\n")
    lines = ["userId, movieId , rating", "1, 10, 5", "2,10 ,4", " 3 ,  10\t,\t3.5 ", "", "   "]
    text = "\n".join(lines) + "\n"
    text = (text.replace("\t", " ") if delimiter == "\t" else text).replace(",", delimiter)  # tabs split fields
    reader(monkeypatch)
    data = read_ratings(write(tmp_path / "ratings.csv", text))
    assert data["user"].dtype == data["item"].dtype == np.int64
    assert as_lists(data) == {"user": [1, 2, 3], "item": [10, 10, 10], "rating": [5.0, 4.0, 3.5],
                              "titles": {10: "Heat (1995)"}}


def test_stripped_ids_keep_the_plain_int_rule_and_their_inner_spaces(tmp_path, monkeypatch, capsys):
    text = 'u,i,r\n1, 007 ,3\n2, 7,4\n3,"7 7" ,2\n4, "Heat, The" , 1 \n'
    data = read_ratings(write(tmp_path / "r.csv", text))
    assert data["item"].tolist() == ["007", "7", "7 7", "Heat, The"] and data["user"].dtype == np.int64
    assert data["rating"].tolist() == [3.0, 4.0, 2.0, 1.0] and "item ids are kept as text" in capsys.readouterr().err


def test_fast_and_exact_readers_agree_on_randomly_padded_files(tmp_path, monkeypatch):
    g = np.random.default_rng(2)
    n = 2000
    users, items, ratings = g.integers(-5, 10**9, n), g.integers(0, 300, n), g.integers(1, 11, n) / 2
    pads = ["", "", " ", "  ", "\t"]  # a plain file, mostly, as by hand
    pad = lambda: pads[g.integers(len(pads))]
    rows = [f"{pad()}{u}{pad()},{pad()}{i}{pad()},{pad()}{r}{pad()}\n" for u, i, r in zip(users, items, ratings)]
    path = write(tmp_path / "r.csv", "user,item,rating\n" + "".join(rows))
    monkeypatch.setattr(data_fetch, "CHUNK", 1000)  # dozens of chunks, each cut at a line end
    with monkeypatch.context() as m:
        fast_reader_only(m)
        fast = read_ratings(path)
    exact_reader_only(monkeypatch)
    exact = read_ratings(path)
    for data in (fast, exact):
        assert data["user"].dtype == data["item"].dtype == np.int64
        assert np.array_equal(data["user"], users) and np.array_equal(data["item"], items)
        assert np.array_equal(data["rating"], ratings.astype(np.float32))


# ---- D. a closed stdout ends the program quietly ---------------------------------------------------------------

def test_a_closed_stdout_ends_data_fetch_quietly(tmp_path):
    src = tmp_path / "latest.zip"
    with zipfile.ZipFile(src, "w") as z:  # ml-latest-small has no pinned hash: it is checked by reading it
        z.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,9\n2,1,3.5,9\n")
        z.writestr("ml-latest-small/movies.csv", "movieId,title,genres\n1,Toy Story (1995),Animation\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head -0` leaves it: the first write fails with EPIPE
    try:
        r = subprocess.run([sys.executable, "data_fetch.py", "--name", "ml-latest-small", "--dir", str(tmp_path / "c"),
                            "--from-file", str(src)], cwd=HERE, stdout=write_end, stderr=subprocess.PIPE, text=True,
                           stdin=subprocess.DEVNULL, timeout=120)
    finally:
        os.close(write_end)
    cached = tmp_path / "c" / "ml-latest-small.zip"
    assert (r.returncode, r.stderr) == (0, f"ml-latest-small: 2 ratings from file {src} (cached at {cached})\n")


# ---- end to end: the real MovieLens-100k (data_fetch.py, then minicollab's defaults) ----------------------------
# About 1 s of training on a CPU and ~5 s of folding in 94 users, plus a ~1 s wheel fetch on an empty cache.

def test_end_to_end_ml100k_default_run_and_its_recommendations(capsys):
    code, out, err = run_main(["--device", "cpu"], capsys)  # the README's command: DotProductBias, seed 0
    rows = table_rows(out)
    assert code == 0 and len(rows) == 5 and float(rows[-1][2]) <= 0.83
    d = load_movielens(quiet=True)
    rated = d["item"][d["user"] == 1]  # train and valid alike
    top = [line.split(maxsplit=1)[1] for line in out.split("top 5 for user 1:\n")[1].splitlines()]
    assert len(top) == 5 and not {d["titles"][i] for i in rated} & set(top) and len(set(rated)) == 272
    assert err == "" and out.startswith("ml-100k: 100,000 ratings from ")  # where it came from: output
    code, out, err = run_main(["--recommend", "99999"], capsys)  # refused once the data is known
    assert error_line(code, err) == "error: unknown user 99999\n" and "train_loss" not in out


def test_end_to_end_ml100k_fold_in_beats_the_items_biases_alone():
    d = load_movielens(quiet=True)
    users, items, ratings = d["user"], d["item"], d["rating"]
    rng = np.random.default_rng(0)
    held_out = rng.choice(np.unique(users), 94, replace=False)  # 10% of the 943 users, never seen in training
    seen = ~np.isin(users, held_out)
    (user_ids, u), (item_ids, i) = (np.unique(a, return_inverse=True) for a in (users[seen], items))
    x, y = torch.as_tensor(np.stack([u, i[seen]], 1)), torch.as_tensor(ratings[seen])
    train, valid = split_data((x, y), 0)
    torch.manual_seed(0)
    model = DotProductBias(len(user_ids), len(item_ids), 50, (0, 5.5))
    n_train = len(train[1])
    fit_one_cycle(model, train, valid, 5, DEFAULTS["dot"]["lr"], DEFAULTS["dot"]["lam"] / n_train, 2048, 0,
                  log=lambda s: None)
    trained = Collab(model, IdMap(user_ids.tolist(), "user"), IdMap(item_ids.tolist(), "item"), d["titles"],
                     torch.as_tensor(np.sort(u * len(item_ids) + i[seen])))
    with torch.no_grad():
        average_user = model.user_factors.mean(0), model.user_bias.mean()  # (n_factors,), ()
    se, n = dict(fold_in=0.0, biases=0.0, average=0.0), 0
    for user in held_out:
        rows = rng.permutation(np.flatnonzero(users == user))
        given, rest = rows[:10], rows[10:]  # fold in from 10 ratings, score on the others (ML-100k: >= 20 each)
        c = copy.deepcopy(trained)
        c.fold_in(int(user), items[given], ratings[given])
        j = torch.as_tensor(trained.items.encode(items[rest]))
        with torch.no_grad():
            preds = dict(fold_in=c.predict(np.full(len(rest), user), items[rest]),
                         biases=sigmoid_range(model.movie_bias[j], 0, 5.5).numpy(),  # zero factors and zero bias
                         average=sigmoid_range(model.movie_factors[j] @ average_user[0] + average_user[1]
                                               + model.movie_bias[j], 0, 5.5).numpy())
        for k, p in preds.items():
            se[k] += float(((p - ratings[rest]) ** 2).sum())
        n += len(rest)
    mse = {k: v / n for k, v in se.items()}
    print(f"\nfold-in MSE {mse['fold_in']:.3f} | items' biases alone {mse['biases']:.3f} | "
          f"average user {mse['average']:.3f} | {len(held_out)} users, {n:,} ratings")
    assert len(c.users.ids) == len(user_ids) + 1 == 943 - 94 + 1  # each fold-in went to its own copy
    assert mse["fold_in"] < mse["biases"]


# ---- benchmark, on demand only: an ML-25M-shaped file, read, trained and measured ---------------------------------
# MINICOLLAB_BENCH=1 python -m pytest -s -k benchmark test_minicollab.py    (MINICOLLAB_BENCH=2.5: 2.5M ratings)

BENCH = os.environ.get("MINICOLLAB_BENCH")


def ml25m_shaped(path, n_ratings=25_000_000, n_users=162_541, n_items=59_047, rank=8, noise=0.75, seed=0):
    """Write ratings.csv like ML-25M's from a known model; returns the true scores s (rating = s + noise, rounded
    to half stars, clipped to 0.5..5), from which the best possible MSE follows."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0, 1.0, n_users)  # a few users rate a lot; popularity follows Zipf
    popularity = 1 / rng.permutation(np.arange(1, n_items + 1))
    users = np.concatenate([np.arange(n_users), rng.choice(n_users, n_ratings - n_users, p=activity / activity.sum())])
    items = rng.choice(n_items, n_ratings, p=popularity / popularity.sum())
    movie_ids = np.sort(rng.choice(np.arange(1, 209_172), n_items, replace=False))  # ML-25M's ids run to 209,171
    scale = (0.5 / rank) ** 0.25  # the dot product's variance is 0.5
    p, q = rng.normal(0, scale, (n_users, rank)), rng.normal(0, scale, (n_items, rank))
    s = 3.53 + rng.normal(0, 0.45, n_users)[users] + rng.normal(0, 0.5, n_items)[items]
    for k in range(rank):
        s += p[users, k] * q[items, k]
    stars = np.clip(np.round(2 * (s + rng.normal(0, noise, n_ratings))), 1, 10).astype(np.int64)
    with open(path, "w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for a in range(0, n_ratings, 1_000_000):
            b = slice(a, a + 1_000_000)
            f.write("".join(f"{u},{i},{r / 2},{t}\n" for u, i, r, t in zip(
                (users[b] + 1).tolist(), movie_ids[items[b]].tolist(), stars[b].tolist(),
                rng.integers(789_652_009, 1_574_327_703, len(stars[b])).tolist())))
    return s


def noise_floor(s, noise=0.75):
    """The MSE of the best possible predictor E[rating | s]: the noise, half-star rounding and clipping included."""
    s = torch.as_tensor(s, dtype=torch.float64)[:, None]
    levels = torch.arange(1, 11, dtype=torch.float64) / 2  # 0.5 .. 5
    cdf = lambda x: 0.5 * (1 + torch.erf((x - s) / (noise * math.sqrt(2))))
    p = cdf(torch.cat([levels[:-1] + 0.25, torch.tensor([math.inf])])) - \
        cdf(torch.cat([torch.tensor([-math.inf]), levels[1:] - 0.25]))  # (n, 10): P(rating = level)
    return float(((p * levels ** 2).sum(1) - (p * levels).sum(1) ** 2).mean())


@pytest.mark.skipif(not BENCH, reason="a benchmark: MINICOLLAB_BENCH=1 runs it (several minutes)")
def test_benchmark_ml25m_shaped_file(tmp_path):
    n = 25_000_000 if BENCH == "1" else int(float(BENCH) * 1e6)
    shape = dict(n_ratings=n, n_users=round(162_541 * n / 25e6), n_items=round(59_047 * n / 25e6))
    start = time.perf_counter()
    s = ml25m_shaped(tmp_path / "ratings.csv", **shape)
    made = time.perf_counter() - start
    _, valid = split(n, 0.2, 0)  # the command line's split, seed 0: the same rows of the same file
    floor = noise_floor(s[valid.numpy()][:2_000_000])
    del s, valid
    code = ("import time, data_fetch; t = time.perf_counter(); d = data_fetch.read_ratings('ratings.csv'); "
            "print(f'read {len(d[\"rating\"]):,} ratings in {time.perf_counter() - t:.1f} s')")
    read = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(HERE)))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    r = subprocess.run([sys.executable, str(HERE / "minicollab.py"), "--ratings", "ratings.csv"], cwd=tmp_path,
                       capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child so far
    rows = table_rows(r.stdout)
    print(f"\n{n:,} ratings ({shape['n_users']:,} users, {shape['n_items']:,} items), file made in {made:.0f} s"
          f"\n{read.stdout.strip()}\n{r.stdout.split('top 5')[0].strip()}"
          f"\nwall {wall:.0f} s, peak RSS {peak / 2 ** 20:.2f} GiB{' (an earlier child)' if peak == before else ''}"
          f"\nvalid MSE {float(rows[-1][2]):.4f}; the noise floor (best possible) {floor:.4f}")
    assert r.returncode == 0 and len(rows) == 5 and floor < float(rows[-1][2]) < 1.0
