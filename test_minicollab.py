"""minicollab's tests: the chapter's claims, each two ways or against numbers worked out by hand;
using a Collab; the command line; reading files; fetching MovieLens; end to end on MovieLens-100k.
MINICOLLAB_BENCH=1 also runs the benchmark on an ML-25M-shaped file (README.md)."""
import copy
import gzip
import hashlib
import http.server
import importlib.util
import inspect
import io
import math
import os
import pathlib
import re
import shlex
import shutil
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
from minicollab import (Adam, Collab, CollabNN, DotProductBias, IdMap, add_weight_decay,
                        create_params, evaluate, fit_one_cycle, get_emb_sz, implicit, lr_find,
                        one_cycle, recall_ndcg, sample_negatives, score_all, sigmoid_range, split,
                        top_k, top_n, train, train_step)

HERE = pathlib.Path(__file__).resolve().parent

def write(path, text, encoding="utf-8"):
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path

torch.set_num_threads(1)  # tiny tensors; and two busy cores make torch's threads wait on each other

def synthetic(n_users=30, n_items=40, rank=2, seed=0):
    """Every user rates every item: 3 + 0.7 * a rank-2 dot product, clipped to 0.5..5.5."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cartesian_prod(torch.arange(n_users), torch.arange(n_items))  # (1200, 2)
    u, v = torch.randn(n_users, rank, generator=g), torch.randn(n_items, rank, generator=g)
    return x, (3 + 0.7 * (u[x[:, 0]] * v[x[:, 1]]).sum(1)).clamp(0.5, 5.5)

def fit_synthetic(seed=0, epochs=10, lr_max=3e-2, log=None, bs=64, **kwargs):
    """A seeded DotProductBias (5 factors) fit to synthetic(): (model, history, valid)."""
    (x, y), (t, v) = synthetic(), split(1200, 0.2, seed)
    torch.manual_seed(seed)
    model = DotProductBias(30, 40, n_factors=5, y_range=(0, 6))
    history = fit_one_cycle(model, (x[t], y[t]), (x[v], y[v]), epochs, lr_max, bs=bs, seed=seed,
                            log=log or (lambda s: None), **kwargs)
    return model, history, (x[v], y[v])


# ---- the chapter's claims, each two ways: test_<piece>_equals_<reference> ----------------------

def test_id_map_equals_position_in_its_ids():
    users = IdMap(np.array(["alice", "bob", "carol"]), "user")
    assert users.encode(["carol", "alice"]).tolist() == [2, 0] and users.ids[1] == "bob"
    items = IdMap(np.unique([100, 9, 10]), "item")  # numpy's ints become Python's
    assert items.encode(np.array([[100], [9]])).tolist() == [[2], [0]] and type(items.ids[0]) is int
    for ids, bad, message in [([9, 10], 11, "unknown item 11"), ([9], "9", "unknown item '9'"),
                              ([9], np.int64(11), "unknown item 11")]:
        with pytest.raises(KeyError) as e:
            IdMap(ids, "item").encode([bad])
        assert e.value.args[0] == message

def test_split_equals_fastais_random_splitter():
    t, v = split(1000, 0.2, seed=0)
    assert (len(t), len(v)) == (800, 200)
    assert torch.equal(torch.cat([t, v]).sort().values, torch.arange(1000))  # disjoint, covering
    assert torch.equal(split(1000, 0.2, 0)[1], v) and not torch.equal(split(1000, 0.2, 1)[1], v)
    assert [len(s) for s in split(2, 0.2)] == [1, 1]
    for n, pct in [(1, 0.2), (10, 0.0), (10, 1.5), (10, math.nan)]:
        with pytest.raises(ValueError, match="need two ratings or more and 0 < valid_pct < 1"):
            split(n, pct)

def test_embedding_lookup_equals_one_hot_matrix_product():
    torch.manual_seed(0)
    weights, idx = create_params([5, 3]), torch.tensor([3, 0, 3, 1])
    one_hot = F.one_hot(idx, 5).float()  # (4, 5)
    assert torch.equal(weights.index_select(0, idx), one_hot @ weights)
    g = torch.randn(4, 3)
    (by_index,) = torch.autograd.grad((weights.index_select(0, idx) * g).sum(), weights)
    (by_matmul,) = torch.autograd.grad(((one_hot @ weights) * g).sum(), weights)
    assert torch.allclose(by_index, by_matmul) and torch.equal(by_index[3], g[0] + g[2])
    assert not by_index[2].any() and not by_index[4].any()  # rows never looked up get no gradient

def test_create_params_equals_a_draw_from_n_0_001():
    torch.manual_seed(0)
    p = create_params([1000, 50])
    assert isinstance(p, nn.Parameter) and p.shape == (1000, 50) and p.dtype == torch.float32
    assert abs(p.std().item() - 0.01) < 0.0005 and abs(p.mean().item()) < 0.0003
    torch.manual_seed(0)
    assert torch.equal(create_params([1000, 50]), p)  # from torch's seeded generator

def test_sigmoid_range_equals_its_formula():
    x = torch.tensor([-1e4, -5.0, 0.0, math.log(3), 5.0, 1e4])
    y = sigmoid_range(x, 0, 5.5)
    assert y[2].item() == 2.75 and y[3].item() == pytest.approx(4.125)  # sigmoid(ln 3) = 3/4
    assert y[0].item() == 0.0 and y[-1].item() == 5.5 and (y.diff() > 0).all()
    assert torch.allclose(sigmoid_range(x, 1, 5), 1 + 4 / (1 + torch.exp(-x)))
    assert torch.equal(sigmoid_range(x, 0, 1), torch.sigmoid(x))  # section 7's y_range

def test_dot_product_bias_equals_the_books_formula_with_one_hot_matrices():
    torch.manual_seed(0)
    model = DotProductBias(4, 3, 2, y_range=(0, 5.5))
    x = torch.tensor([[0, 2], [3, 2], [3, 0], [1, 1]])  # (bs, 2), as fastai's Learner passes it
    ou, oi = F.one_hot(x[:, 0], 4).float(), F.one_hot(x[:, 1], 3).float()
    dot = ((ou @ model.user_factors) * (oi @ model.movie_factors)).sum(1)
    by_hand = torch.sigmoid(dot + ou @ model.user_bias + oi @ model.movie_bias) * 5.5
    assert model(x).shape == (4,) and torch.allclose(model(x), by_hand)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(model(x).sum(), params),
                    torch.autograd.grad(by_hand.sum(), params)):
        assert torch.allclose(a, b)
    with torch.no_grad():  # (1, 2) . (0.5, -0.25) = 0; biases ln 3 and 0: sigmoid(ln 3) * 5.5
        model.user_factors[0] = torch.tensor([1.0, 2.0])
        model.movie_factors[2] = torch.tensor([0.5, -0.25])
        model.user_bias[0], model.movie_bias[2] = math.log(3), 0.0
    assert model(torch.tensor([[0, 2]])).item() == pytest.approx(4.125, abs=1e-6)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["user_factors", "user_bias", "movie_factors", "movie_bias"]
    assert list(inspect.signature(DotProductBias).parameters) == ["n_users", "n_movies",
                                                                  "n_factors", "y_range"]

def test_get_emb_sz_equals_fastais_rule_of_thumb():
    assert get_emb_sz(943, 1682) == [(943, 74), (1682, 102)]  # round(1.6 * n ** 0.56)
    assert get_emb_sz(10 ** 7, 5)[0] == (10 ** 7, 600)  # capped at 600
    sizes = [(m.in_features, m.out_features) for m in CollabNN(*get_emb_sz(943, 1682)).layers
             if isinstance(m, nn.Linear)]
    assert sizes == [(176, 100), (100, 50), (50, 1)]  # fastai's layers=[100, 50]

def test_collab_nn_equals_the_concatenation_through_the_layers_by_hand():
    torch.manual_seed(0)
    model, x = CollabNN((4, 3), (5, 2), layers=[6]), torch.tensor([[0, 4], [3, 1], [3, 3]])
    first, last = (m for m in model.layers if isinstance(m, nn.Linear))
    h = torch.cat([model.user_factors[x[:, 0]], model.movie_factors[x[:, 1]]], 1)  # (3, 5)
    assert torch.allclose(model.eval()(x), sigmoid_range(last(torch.relu(first(h)))[:, 0], 0, 5.5))

@pytest.mark.parametrize("make", [lambda: DotProductBias(6, 5, 3, y_range=(1, 5)),
                                  lambda: CollabNN((6, 4), (5, 3), (8, 4), y_range=(1, 5))])
@pytest.mark.parametrize("bs", [7, 1])
def test_model_output_shape_equals_bs_inside_y_range(make, bs):
    torch.manual_seed(0)
    model, x = make(), torch.stack([torch.randint(6, (bs,)), torch.randint(5, (bs,))], 1)
    assert model(x).shape == (bs,)  # not (bs, 1): minus (bs,) that would broadcast to (bs, bs)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e4)  # saturated, and still inside y_range
    assert ((model(x) >= 1) & (model(x) <= 5)).all()

def test_weight_decay_by_hand_equals_autograd_of_the_l2_penalty():
    torch.manual_seed(0)
    (x, y), model, wd = synthetic(), DotProductBias(31, 40, n_factors=5), 0.1  # user 30: no data
    params = list(model.parameters())
    F.mse_loss(model(x), y).backward()
    add_weight_decay(params, wd)
    by_hand = [p.grad.clone() for p in params]
    model.zero_grad()
    (F.mse_loss(model(x), y) + wd / 2 * sum((p ** 2).sum() for p in params)).backward()
    assert all(torch.allclose(a, p.grad, rtol=1e-5, atol=1e-8) for a, p in zip(by_hand, params))
    assert torch.equal(by_hand[0][30], wd * model.user_factors[30].detach())  # wd * p alone

def test_adam_equals_torch_adam_step_for_step():
    p = nn.Parameter(torch.tensor([1.0]))  # by hand: loss p^2, gradient 2, debiased means 2 and 4
    opt = Adam([p])
    (p ** 2).sum().backward()
    opt.step(lr=0.1, mom=0.9)
    assert p.item() == pytest.approx(1 - 0.1 * 2 / (2 + 1e-5), abs=1e-7) and p.grad is None
    torch.manual_seed(0)
    (x, y), ours = synthetic(), DotProductBias(30, 40, n_factors=5)
    theirs, start = copy.deepcopy(ours), copy.deepcopy(ours)
    opt = Adam(ours.parameters())
    torch_opt = torch.optim.Adam(theirs.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-5)
    for step in range(8):
        for model in (ours, theirs):
            b = slice(100 * step, 100 * step + 100)
            F.mse_loss(model(x[b]), y[b]).backward()
        opt.step(1e-2, 0.9)
        torch_opt.step()
        torch_opt.zero_grad()
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7)
                   for a, b in zip(ours.parameters(), theirs.parameters()))
    assert min((a - b).abs().max() for a, b in zip(ours.parameters(), start.parameters())) > 1e-3

def test_train_step_equals_torch_adam_with_l2_weight_decay():
    torch.manual_seed(0)
    (x, y), ours = synthetic(), DotProductBias(30, 40, n_factors=5)
    theirs = copy.deepcopy(ours)
    opt = Adam(ours.parameters())
    torch_opt = torch.optim.Adam(theirs.parameters(), 1e-2, (0.9, 0.99), 1e-5, weight_decay=0.1)
    for _ in range(3):  # torch's weight_decay is L2 added to the gradient, as ours
        loss = train_step(ours, opt, x[:100], y[:100], 1e-2, 0.9, 0.1)
        F.mse_loss(theirs(x[:100]), y[:100]).backward()
        torch_opt.step()
        torch_opt.zero_grad()
        assert loss.shape == () and not loss.requires_grad
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7)
               for a, b in zip(ours.parameters(), theirs.parameters()))

def fastai_combined_cos(pct, start, middle, end, pct_start=0.25):
    """fastai's combined_cos at pct: two SchedCos phases, as fastai writes them."""
    def sched_cos(start, end, pos):
        return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2
    if pct < pct_start:
        return sched_cos(start, middle, pct / pct_start)
    return sched_cos(middle, end, (pct - pct_start) / (1 - pct_start))

def test_one_cycle_equals_fastais_combined_cos():
    assert one_cycle(0.0, 1e-2) == pytest.approx((1e-2 / 25, 0.95))  # by hand: start, peak, end
    assert one_cycle(0.25, 1e-2) == pytest.approx((1e-2, 0.85))
    assert one_cycle(0.125, 1e-2) == pytest.approx(((1e-2 / 25 + 1e-2) / 2, 0.90))  # cos(pi/2)
    assert one_cycle(1.0, 1e-2) == pytest.approx((1e-2 / 1e5, 0.95))
    for pct in np.linspace(0, 1, 41):
        lr, mom = one_cycle(pct, 3e-3)
        assert lr == pytest.approx(fastai_combined_cos(pct, 3e-3 / 25, 3e-3, 3e-3 / 1e5), rel=1e-9)
        assert mom == pytest.approx(fastai_combined_cos(pct, 0.95, 0.85, 0.95), abs=1e-12)

def test_fit_one_cycle_table_equals_its_history_and_valid_loss_equals_the_mse(capsys):
    model, history, valid = fit_synthetic(epochs=3, log=print)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "time"] and len(lines) == 4
    for epoch, (h, line) in enumerate(zip(history, lines[1:])):
        fields = line.split()
        assert int(fields[0]) == epoch
        assert float(fields[2]) == pytest.approx(h["valid_loss"], abs=1e-6)
        assert float(fields[1]) == pytest.approx(h["train_loss"], abs=1e-6)
    with torch.no_grad():
        mse = F.mse_loss(model(valid[0]), valid[1]).item()
    assert history[-1]["valid_loss"] == pytest.approx(mse, rel=1e-5)
    assert evaluate(model, *valid, bs=7) == pytest.approx(mse, rel=1e-5)  # in chunks, the same

def test_fit_one_cycle_on_low_rank_data_ends_far_below_the_variance_and_repeats_with_its_seed():
    _, history, valid = fit_synthetic(epochs=10)
    assert history[-1]["valid_loss"] < 0.05 * valid[1].var(unbiased=False).item()
    again = [h["valid_loss"] for h in fit_synthetic(epochs=10)[1]]
    assert again == [h["valid_loss"] for h in history] != [h["valid_loss"] for h in
                                                           fit_synthetic(seed=1, epochs=10)[1]]
    with pytest.raises(ValueError, match="NaN.*lower learning rate"):
        fit_synthetic(epochs=2, lr_max=1e30)
    for bad in [dict(epochs=0), dict(lr_max=-1e-3), dict(lr_max=math.nan), dict(bs=0), dict(wd=-1)]:
        with pytest.raises(ValueError, match="need epochs, bs, lr_max > 0 and wd >= 0"):
            fit_synthetic(**dict(dict(epochs=1), **bad))

def test_lr_find_suggestion_equals_a_tenth_of_the_best_and_the_weights_are_restored():
    (x, y), (t, _) = synthetic(), split(1200, 0.2, 0)
    torch.manual_seed(0)
    model = DotProductBias(30, 40, n_factors=5)
    before = copy.deepcopy(model.state_dict())
    suggestion, lrs, losses = lr_find(model, (x[t], y[t]), bs=64)
    assert suggestion == pytest.approx(lrs[int(np.argmin(losses))] / 10) and 1e-4 < suggestion < 1
    assert np.allclose(np.diff(np.log(lrs)), math.log(1e8) / 99) and min(losses) < 0.9 * losses[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

@pytest.mark.parametrize("make", [lambda: DotProductBias(30, 40, 5),
                                  lambda: CollabNN(*get_emb_sz(30, 40))])
def test_a_model_trains_in_a_loop_like_fastais_learner(make):
    # fastai's Learner: model(xb) on a (bs, 2) long tensor, MSELossFlat, AdamW, zero_grad; no
    # minicollab code but the model
    torch.manual_seed(0)
    (x, y), (t, v) = synthetic(), split(1200, 0.2, 0)
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    before = F.mse_loss(model(x[v]), y[v]).item()
    for _ in range(15):
        for xb, yb in zip(x[t].split(64), y[t].split(64)):
            F.mse_loss(model(xb).view(-1), yb).backward()
            opt.step()
            opt.zero_grad()
    with torch.no_grad():
        after = F.mse_loss(model(x[v]), y[v]).item()
    assert after < 0.5 * before and after < y[v].var().item()

COPYABLE = ["sigmoid_range", "create_params", "DotProductBias", "get_emb_sz", "CollabNN",
            "add_weight_decay", "Adam", "one_cycle", "train_step", "evaluate", "fit_one_cycle",
            "lr_find", "split", "sample_negatives", "implicit"]

def test_the_chapters_pieces_run_pasted_into_a_file_that_imports_only_torch_and_numpy(tmp_path):
    source = "\n\n".join(inspect.getsource(getattr(minicollab, name)) for name in COPYABLE)
    (tmp_path / "assignment.py").write_text(
        "import math\nimport time\n\nimport numpy as np\nimport torch\nimport torch.nn.functional "
        "as F\nfrom torch import nn\n\n" + source + """

torch.manual_seed(0)
x = torch.stack([torch.arange(200) % 10, torch.arange(200) % 7], 1)
y = 1 + (x[:, 0] * x[:, 1] % 5).float()
t, v = split(200, 0.2, 0)
for model in (DotProductBias(10, 7, 4), CollabNN(*get_emb_sz(10, 7))):
    history = fit_one_cycle(model, (x[t], y[t]), (x[v], y[v]), 3, 1e-2, 1e-4, 16)
    assert len(history) == 3 and history[-1]["valid_loss"] < history[0]["valid_loss"]
    assert 0 < lr_find(model, (x[t], y[t]), bs=16)[0] < 10
seen = torch.sort(x[:, 0] * 7 + x[:, 1]).values
fit_one_cycle(DotProductBias(10, 7, 4, (0, 1)), (x[t], y[t] * 0 + 1), implicit(seen, 7)(x[v], y[v]),
              2, 1e-2, 1e-4, 16, loss_func=F.binary_cross_entropy, sample=implicit(seen, 7))
print("ok")
""")
    r = subprocess.run([sys.executable, "assignment.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHONPATH=""))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "ok" and r.stdout.count("epoch  train_loss") == 3

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_table_equals_the_cpu_table():
    (x, y), (t, v) = synthetic(), split(1200, 0.2, 0)
    histories = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = DotProductBias(30, 40, n_factors=5, y_range=(0, 6)).to(device)
        train, valid = (x[t].to(device), y[t].to(device)), (x[v].to(device), y[v].to(device))
        histories.append(fit_one_cycle(model, train, valid, 3, 3e-2, bs=64, log=lambda s: None))
    for cpu, cuda in zip(*histories):
        assert cuda["valid_loss"] == pytest.approx(cpu["valid_loss"], rel=1e-3)


# ---- section 7, cross-entropy; and the top-N metrics -----------------------------------------

def test_sample_negatives_equals_a_uniform_draw_of_the_unrated_items():
    seen = torch.tensor(sorted(u * 10 + i for u in range(3) for i in range(10) if (u + i) % 3))
    users = torch.tensor([0, 1, 2]).repeat(3000)
    items = sample_negatives(users, seen, 10, torch.Generator().manual_seed(0))
    assert not torch.isin(users * 10 + items, seen).any()  # never an item the user rated
    for u in range(3):  # user u rated the items with (u + i) % 3 != 0: the others, evenly
        counts = torch.bincount(items[users == u], minlength=10)
        unrated = [i for i in range(10) if (u + i) % 3 == 0]
        assert (counts.nonzero().view(-1).tolist() == unrated)
        assert (counts[unrated] - 3000 / len(unrated)).abs().max() < 120
    everything = torch.arange(10)  # a user who rated every item keeps a rated one: no endless loop
    assert len(sample_negatives(torch.zeros(5, dtype=torch.long), everything, 10,
                                torch.Generator().manual_seed(0))) == 5

def test_implicit_batch_equals_its_pairs_as_ones_then_four_unrated_zeros_each():
    seen = torch.tensor([0 * 5 + 1, 0 * 5 + 3, 1 * 5 + 0])
    x = torch.tensor([[0, 1], [0, 3], [1, 0]])
    xb, yb = implicit(seen, 5, negatives=4, seed=0)(x, torch.tensor([4.0, 5.0, 2.0]))
    assert xb.shape == (15, 2) and torch.equal(xb[:3], x)
    assert torch.equal(xb[3:, 0], x[:, 0].repeat(4)) and yb.tolist() == [1.0] * 3 + [0.0] * 12
    assert not torch.isin(xb[3:, 0] * 5 + xb[3:, 1], seen).any()
    again = implicit(seen, 5, negatives=4, seed=0)(x, torch.ones(3))[0]
    assert torch.equal(again, xb)  # seeded

def test_binary_cross_entropy_of_the_books_model_equals_the_log_loss_by_hand():
    torch.manual_seed(0)
    model, x = DotProductBias(3, 4, 2, y_range=(0, 1)), torch.tensor([[0, 1], [2, 3], [1, 0]])
    with torch.no_grad():
        model.user_bias[:] = torch.tensor([2.0, -1.0, 0.5])
    p, y = model(x), torch.tensor([1.0, 0.0, 1.0])
    by_hand = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert torch.allclose(F.binary_cross_entropy(p, y), by_hand)
    assert evaluate(model, x, y, F.binary_cross_entropy) == pytest.approx(by_hand.item(), rel=1e-6)

# hand-computed: discounts 1, 1/log2(3) = 0.6309, 1/2 for ranks 1, 2, 3
D2, D3 = 1 / math.log2(3), 0.5

@pytest.mark.parametrize("top, relevant, recall, ndcg", [
    ([0, 1, 2], [0], 1.0, 1.0),  # one relevant item, ranked first
    ([1, 0, 2], [0], 1.0, D2),  # second: DCG 1/log2(3) over an ideal of 1
    ([3, 4, 5], [0, 1], 0.0, 0.0),
    ([0, 3, 1], [0, 1], 1.0, (1 + D3) / (1 + D2)),  # both found, at ranks 1 and 3
    ([0, 1, 2], [0, 1, 2, 3, 4], 1.0, 1.0),  # more relevant than k: recall over min(k, relevant)
    ([5, 0, 6], [0, 1, 2, 3, 4], 1 / 3, D2 / (1 + D2 + D3)),
])
def test_recall_and_ndcg_at_k_equal_their_values_by_hand(top, relevant, recall, ndcg):
    rel = torch.zeros(1, 8, dtype=torch.bool)
    rel[0, relevant] = True
    r, n = recall_ndcg(torch.tensor([top]), rel)
    assert r.item() == pytest.approx(recall) and n.item() == pytest.approx(ndcg, rel=1e-6)

def test_top_k_equals_a_stable_sort_with_ties_to_the_lower_index():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, -math.inf], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert top_k(scores, 3).tolist() == [[1, 0, 2], [0, 1, 2]]  # by hand
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 30), generator=g).float()  # many ties
    stable = scores.sort(dim=1, descending=True, stable=True).indices
    for k in (1, 5, 30):
        assert torch.equal(top_k(scores, k), stable[:, :k])

def test_score_all_equals_the_models_forward_on_every_pair():
    torch.manual_seed(0)
    for model in (DotProductBias(5, 7, 3), CollabNN((5, 3), (7, 2), [4])):
        users = torch.tensor([4, 0, 2])
        x = torch.cartesian_prod(users, torch.arange(7))
        assert torch.allclose(score_all(model, users), model.eval()(x).view(3, 7), atol=1e-6)

def brute_force(scores, train, liked, k=10):
    """Mean recall@k and NDCG@k, a user at a time in plain Python, from the issue's definitions."""
    results = []
    for u in sorted({u for u, _ in liked}):
        rated, good = {i for v, i in train if v == u}, {i for v, i in liked if v == u}
        ranked = sorted((i for i in range(scores.shape[1]) if i not in rated),
                        key=lambda i: (-scores[u, i], i))[:k]
        hits = [i in good for i in ranked]
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(good))))
        results.append((sum(hits) / min(k, len(good)), dcg / ideal))
    return np.mean(results, 0)

def test_top_n_equals_a_brute_force_count_for_the_model_and_the_most_popular_list():
    torch.manual_seed(0)
    pairs = torch.unique(torch.randint(0, 40, (600, 2)), dim=0)  # (user, item), no repeats
    pairs = pairs[torch.randperm(len(pairs))]
    train, liked = pairs[:450].tolist(), pairs[450:].tolist()
    seen, good = [(p[:, 0] * 40 + p[:, 1]).sort().values for p in (pairs[:450], pairs[450:])]
    model = DotProductBias(40, 40, 3)
    got = top_n(model, seen, good, 40, log=lambda s: None)
    expected = brute_force(score_all(model, torch.arange(40)), train, liked)
    assert [got["recall"], got["ndcg"]] == pytest.approx(expected, rel=1e-5)
    counts = torch.bincount(pairs[:450, 1], minlength=40).float().expand(40, -1)  # many ties
    assert [got["popular_recall"], got["popular_ndcg"]] == pytest.approx(
        brute_force(counts, train, liked), rel=1e-5)
    lines = []
    sampled = top_n(model, seen, good, 40, max_users=5, seed=3, log=lines.append)
    assert "a seeded 5 of" in lines[0] and sampled != got
    assert sampled == top_n(model, seen, good, 40, max_users=5, seed=3, log=lambda s: None)


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
    ("--model nn --layers 8,,4", "argument --layers: invalid int value: '8,,4'"),
    ("--layers 16", "--layers are CollabNN's hidden layers: add --model nn"),
    ("--model cnn", "argument --model: invalid choice: 'cnn'"), ("--bogus", "unrecognized arg"),
    ("--loss mae", "argument --loss: invalid choice: 'mae'"), ("--load m --wd 2", "ignores --wd"),
    ("--load m.pt --ratings r.csv --user-col user", "--load ignores --ratings, --user-col"),
    ("--lr-find --epochs 3", "--lr-find ignores --epochs"), ("--save sub", "cannot write sub"),
    ("--lr-find --save m.pt --top 3", "--lr-find ignores --save, --top"),
    ("--save nodir/m.pt", "cannot write nodir/m.pt: name a file in a folder that exists"),
    ("--save ''", "cannot write : name a file"),
    pytest.param("--plot nodir/p.png", "cannot write nodir/p.png", marks=NO_PLOT),
    pytest.param("--plot sub", "cannot write sub", marks=NO_PLOT),
    ("--save r.csv", "r.csv is this run's data: save to another file"),
    ("--save ./r.csv", "./r.csv is this run's data"),
    pytest.param("--plot link.csv", "link.csv is this run's", marks=NO_PLOT),
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
    assert ("(chance they like it)" in lines[head]) == (loss == "bce")

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
def write_zip(path, files):
    """A zip of {name: text or bytes}; path may be a file path or a BytesIO."""
    with zipfile.ZipFile(path, "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
    return path

def one_line_error(call, *args, **kwargs):
    """The message of the DataError that call raises; asserts it is one line."""
    with pytest.raises(DataError) as e:
        call(*args, **kwargs)
    assert str(e.value) and "\n" not in str(e.value)
    return str(e.value)


# ---- reading files ----

CSV = "userId,movieId,rating,timestamp\n1,10,4.0,100\n2,10,3.5,101\n1,9,5,102\n"
ROWS = dict(user=[1, 2, 1], item=[10, 10, 9], rating=[4.0, 3.5, 5.0], timestamp=[100, 101, 102])
NO_TIMES = {k: ROWS[k] for k in ("user", "item", "rating")}  # as the exact reader reads: no times
U_DATA = "196\t242\t3\t881250949\n186\t302\t3.5\t891717742\n"  # no header, as ML-100k's u.data
BY_POSITION = "columns taken by position, as it has no header: 1 as user, 2 as item, 3 as rating"
AS_TEXT = "item ids are kept as text, as not all are plain 64-bit integers"

@pytest.mark.parametrize("content, cols, expected, warning", [
    (CSV, {}, ROWS, ""),
    (CSV.replace(",", "\t"), {}, ROWS, ""),
    (CSV.replace(",", ";"), {}, ROWS, ""),
    (CSV.replace(",", "|"), {}, ROWS, ""),
    (CSV.replace(",", "::"), {}, ROWS, ""),  # ML-1M's ratings.dat, with a header
    ("\ufeff" + CSV, {}, ROWS, ""),
    (CSV.replace("\n", "\r\n"), {}, ROWS, ""),
    (gzip.compress(CSV.encode()), {}, ROWS, ""),
    ("\n# exported\n\n" + CSV.replace("\n2,", "\n\n# a note\n  \n2,") + "\n\n", {}, NO_TIMES, ""),
    ("user, item , rating\n1, 10, 5\n 2 ,10\t,\t3.5 \n", {},  # spaces typed around fields
     dict(user=[1, 2], item=[10, 10], rating=[5.0, 3.5]), ""),
    ('user,item,rating\n"1","Heat, The",4\n2,Alien,"3.5"\n', {},
     dict(user=[1, 2], item=["Heat, The", "Alien"], rating=[4.0, 3.5]), ""),
    ('user,item,rating,review\n1,10,4,"great\n2,20,5,fun"\n3,30,2,"""ok"""\n', {},  # a line break
     dict(user=[1, 3], item=[10, 30], rating=[4.0, 2.0]), ""),  # in a quoted field: one row
    ("Stars,Movie_ID,time,User ID\n4.5,10,99,1\n2,11,98,2\n", {},  # names we know, any order
     dict(user=[1, 2], item=[10, 11], rating=[4.5, 2.0]), ""),
    ("who\twhen\tscore\tmovie\nann\t5\t4.5\tAlien\n", dict(user_col="who", item_col="MOVIE"),
     dict(user=["ann"], item=["Alien"], rating=[4.5]), ""),
    ("film,viewer,score\nHeat,ann,5\nAlien,bob,4\n", {}, dict(user=["Heat", "Alien"]),
     "columns taken by position, as its header names none we know: film as user, viewer as item;"
     " if that is wrong, choose with --user-col, --item-col, --rating-col"),
    ("userId,movieId,timestamp\n1,2,3\n", {}, dict(user=[1], item=[2], rating=[3.0]),
     "as its header names none we know: timestamp as rating"),
    (U_DATA, {}, dict(user=[196, 186], item=[242, 302], rating=[3.0, 3.5]), BY_POSITION),
    (U_DATA, dict(user_col="2", item_col="1", rating_col="3"), dict(user=[242, 302]), ""),
    ("u1,m34,3\nu2,m34,4\n", {},  # text ids, no header: the first line is a rating too
     dict(user=["u1", "u2"], item=["m34", "m34"], rating=[3.0, 4.0]), BY_POSITION),
    ("userId,movieId,rating\n1.0,1.0,4.0\n2.0,16.0,3.5\n", {},  # as pandas writes float ids
     dict(user=[1, 2], item=[1, 16], rating=[4.0, 3.5]),
     "the item ids are written as decimals ('1.0', ...), so they are read as whole numbers"),
    ("user,item,rating\n1,1.5,4\n2,2.0,3\n", {}, dict(user=[1, 2], item=["1.5", "2.0"]), AS_TEXT),
    ("user,item,rating\n1,007,3\n2,7,4\n3,+7,2\n", {}, dict(item=["007", "7", "+7"]), AS_TEXT),
    ("user,item,rating\n-9223372036854775808,0,3\n9223372036854775807,-5,4\n", {},
     dict(user=[-2**63, 2**63 - 1], item=[0, -5]), ""),
    ("user,item,rating\n1,9223372036854775808,3\n", {}, dict(item=["9223372036854775808"]),
     AS_TEXT),
    ("user,item,rating,timestamp\n1,2,3,2024-01-01\n", {}, dict(user=[1], rating=[3.0]), ""),
    ("Benutzer;Film;Bewertung\nJosé;Café;4\nZoë;Café;5\n".encode("latin-1"), {},
     dict(user=["José", "Zoë"], item=["Café", "Café"]), "is not UTF-8; reading it as latin-1"),
])
def test_files_of_every_shape_read_as_expected(tmp_path, capsys, content, cols, expected, warning):
    data = read_ratings(write(tmp_path / "r.txt", content), **cols)
    for role, values in expected.items():
        kind = "i" if all(isinstance(v, int) for v in values) else "f" if role == "rating" else "U"
        assert data[role].tolist() == values and data[role].dtype.kind == kind, role
    assert data["rating"].dtype == np.float32 and ("timestamp" in data) == ("timestamp" in expected)
    assert len({len(data[k]) for k in data if k != "titles"}) == 1 and data["titles"] == {}
    err = capsys.readouterr().err
    assert warning in err and bool(err) == bool(warning), err
    read_ratings(tmp_path / "r.txt", quiet=True, **cols)
    assert capsys.readouterr().err == ""

LINES_1_TO_5 = "# header next\nuserId,movieId,rating,timestamp\n1,10,4.0,100\n\n# a comment\n"
NUL_BYTES = "{path} holds NUL bytes, as UTF-16 text does; save it as UTF-8"
WORKBOOK = "{path} is a spreadsheet workbook; save it as CSV (File > Save As) and pass that file"

@pytest.mark.parametrize("content, cols, message", [
    (None, {}, "no ratings file at {path}; give the path of a CSV file of ratings"),
    (b"", {}, "{path} holds no ratings; it needs a line per rating: user, item, rating"),
    ("\n  \n# only a comment\n\n", {}, "{path} holds no ratings; it needs a line per rating"),
    ("user,item,rating\n\n\n", {}, "{path} has a header (user, item, rating) but no data rows"),
    (b"\x00\x01binary\x00", {}, NUL_BYTES),
    (CSV.encode("utf-16"), {}, NUL_BYTES),
    (CSV.replace("\n", "\r"), {}, "{path} ends its lines with CR alone; save it with Unix or"),
    (gzip.compress(CSV.encode())[:20], {}, "{path}: cannot read it (Compressed file ended"),
    (write_zip(io.BytesIO(), {"ratings.csv": CSV}).getvalue(), {}, "{path} is a zip archive; unzip"
     " it and pass the ratings file inside (a MovieLens zip: `python data_fetch.py --name NAME"),
    (write_zip(io.BytesIO(), {"[Content_Types].xml": "<Types/>", "xl/sheet.xml": ""}).getvalue(),
     {}, WORKBOOK),  # .xlsx
    (write_zip(io.BytesIO(), {"mimetype": "application/vnd.oasis.opendocument.spreadsheet"})
     .getvalue(), {}, WORKBOOK),  # .ods
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(200), {}, WORKBOOK),  # .xls
    (LINES_1_TO_5 + "2,10,five,101", {}, "{path}, line 6: rating 'five' is not a number from "
     "-1,000,000 to 1,000,000 (a decimal point, not a comma); fix or remove that line"),
    (LINES_1_TO_5 + "2,10,nan,101", {}, "{path}, line 6: rating 'nan' is not a number"),
    (LINES_1_TO_5 + "2,10,1e39,101", {}, "{path}, line 6: rating '1e39' is not a number"),
    (LINES_1_TO_5 + "2,10,,101", {}, "{path}, line 6: rating '' is not a number"),
    ("user;item;rating\n1;2;4,5\n", {}, "{path}, line 2: rating '4,5' is not a number"),
    (LINES_1_TO_5 + "2,10", {}, "{path}, line 6: 2 fields, too few for column 4 (timestamp)"),
    (LINES_1_TO_5 + ",10,4,101", {}, "{path}, line 6: the user id is empty; fill it in or remove"),
    ("u1,,4\n", {}, "{path}, line 1: the item id is empty"),
    ('user,item,rating,review\n1,10,4,"a\nb"\n2,20,bad,c\n', {}, "{path}, line 4: rating 'bad'"),
    ('u,i,r\n1,2,3\n1,"' + "x" * 200_000 + '",3\n', {},
     "{path}, line 3: not readable as CSV (field larger than field limit (131072))"),
    (CSV, dict(rating_col="stars"), "{path}: no column 'stars'; columns found: userId, movieId, "
                                    "rating, timestamp (pick columns with --user-col, --item-col"),
    (CSV, dict(user_col="movieId", item_col="movieId"),
     "{path}: column 'movieId' is taken for both the user and the item"),
    (CSV, dict(user_col="rating"), "{path}: column 'rating' is taken for both the user and the "
                                   "rating; give each its own, with --rating-col"),
    ("user,item\n1,2\n", {}, "{path} has 2 column(s) (user, item); it needs user, item and rating"),
    ("user item rating\n1 2 3\n", {}, "{path} has 1 column(s) (user item rating)"),
    (U_DATA, dict(user_col="userId"), "no column 'userId'; columns found: 1, 2, 3, 4 (pick"),
])
def test_a_bad_file_is_a_one_line_error_naming_it_and_its_line(tmp_path, content, cols, message):
    path = tmp_path / "r.csv"
    if content is not None:
        write(path, content)
    assert message.format(path=path) in one_line_error(read_ratings, path, **cols)

@pytest.mark.parametrize("delimiter, header, end", [
    (",", "userId,movieId,rating,timestamp\n", "\n"), ("\t", "", "\n"), ("::", "", "\n"),
    (",", "\ufeffuser,item,rating,timestamp\r\n", "\r\n")])
def test_the_fast_and_the_exact_reader_agree_with_the_numbers_written(tmp_path, monkeypatch,
                                                                      delimiter, header, end):
    g = np.random.default_rng(0)
    n = 3000
    users, items = g.integers(-5, 10**12, n), g.integers(0, 300, n)
    ratings, stamps = g.integers(0, 50_001, n) / 10_000, g.integers(0, 2**40, n)  # 4 decimals
    lines = [delimiter.join(map(str, row)) + end for row in zip(users, items, ratings, stamps)]
    path = write(tmp_path / "r.dat", header + "".join(lines))
    monkeypatch.setattr(data_fetch, "CHUNK", 1000)  # dozens of chunks, each cut at a line end
    with monkeypatch.context() as m:
        m.setattr(data_fetch, "_read_exact", lambda *args: pytest.fail("the exact reader ran"))
        fast = read_ratings(path, quiet=True)
    monkeypatch.setattr(data_fetch, "_read_fast", lambda *args: None)
    exact = read_ratings(path, quiet=True)
    for data in (fast, exact):
        assert data["user"].dtype == data["item"].dtype == np.int64
        assert np.array_equal(data["user"], users) and np.array_equal(data["item"], items)
        assert np.array_equal(data["rating"], ratings.astype(np.float32))
    assert np.array_equal(fast["timestamp"], stamps) if header else "timestamp" not in fast
    assert "timestamp" not in exact

MOVIES_CSV = 'movieId,title,genres\n9,"Heat, The (1995)",Action\n10,Amélie (2001),Comedy\n'
HEAT_TITLES = {9: "Heat, The (1995)", 10: "Amélie (2001)"}
BOND = "movieId,title\n007,Bond\n7,Seven\nx,Ex\n"

@pytest.mark.parametrize("ratings, movies, titles, warning", [
    (CSV, MOVIES_CSV, HEAT_TITLES, ""),
    (CSV, MOVIES_CSV.encode("latin-1"), HEAT_TITLES, ""),
    ("user,movieId,rating\n1,7,4\n", BOND, {"007": "Bond", 7: "Seven", "x": "Ex"}, ""),  # int ids
    ("user,movieId,rating\n1,7,4\n2,x,3\n", BOND, {"007": "Bond", "7": "Seven", "x": "Ex"},
     AS_TEXT),  # keyed as the items are: text here
    ("userId,movieId,rating\n1.0,1.0,4.0\n2.0,16.0,3.5\n", "movieId,title\n1,Toy\n16,Casino\n",
     {1: "Toy", 16: "Casino"}, "written as decimals"),  # pandas' float ids match the titles
    (CSV, "movieId,title\r9,Heat\r", {}, "movies.csv ends its lines with CR alone; save it with "
                                         "Unix or Windows line ends; going on without titles"),
    (CSV, 'movieId,title\n10,"' + "x" * 200_000 + '"\n', {},
     "movies.csv, line 2: not readable as CSV (field larger than field limit (131072))"),
])
def test_titles_come_from_a_movies_csv_beside_the_ratings(tmp_path, capsys, ratings, movies,
                                                          titles, warning):
    write(tmp_path / "movies.csv", movies)
    assert read_ratings(write(tmp_path / "ratings.csv", ratings))["titles"] == titles
    err = capsys.readouterr().err
    assert warning in err and bool(err) == bool(warning), err

@pytest.mark.parametrize("kwargs, message", [
    (dict(ratings=""), "no ratings file at .; give the path"),  # not ML-100k by default
    (dict(name=""), "unknown data set ''; choose one of ml-100k, ml-1m"),
    (dict(name="ml-100k", ratings="r.csv"), "give --data NAME or --ratings FILE, not both"),
    (dict(user_col="userId"), "--user-col and the like pick columns of --ratings FILE"),
    (dict(ratings="one.csv"), "one.csv holds 1 rating; training and validating need at least two"),
])
def test_load_refuses_what_it_cannot_train_on_in_one_line(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "one.csv", "user,item,rating\n1,2,3\n")
    assert message in one_line_error(data_fetch.load, **kwargs)


# ---- fetching MovieLens ----

ML_RATINGS = [(1, 1, 4.0, 964982703), (1, 3, 4.5, 964981247), (2, 3, 0.5, 1445714835),
              (3, 2, 5.0, 1445714836)]
ML_TITLES = {1: "Toy Story (1995)", 2: "Misérables, Les (1995)",
             3: "American President, The (1995)"}
NAMES = list(data_fetch.URLS)

def movielens_zip(name, path, folder=None, ratings_text=None):
    """A zip laid out as GroupLens's `name`, of ML_RATINGS and ML_TITLES, in its encoding."""
    default_folder, ratings, movies, encoding = data_fetch.MOVIELENS[name]
    whole = name in ("ml-100k", "ml-1m")  # their ratings are whole stars
    rows = [(u, i, math.ceil(r) if whole else r, t) for u, i, r, t in ML_RATINGS]
    if ratings == "u.data":
        text = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
        titles = "".join(f"{i}|{t}|01-Jan-1995||http://x|0|1\n" for i, t in ML_TITLES.items())
    elif ratings == "ratings.dat":
        text = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows)
        titles = "".join(f"{i}::{t}::Comedy|Drama\n" for i, t in ML_TITLES.items())
    else:
        text = "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n"
                                                             for u, i, r, t in rows)
        quoted = {i: f'"{t}"' if "," in t else t for i, t in ML_TITLES.items()}
        titles = "movieId,title,genres\n" + "".join(f"{i},{t},Comedy\n" for i, t in quoted.items())
    folder = folder or default_folder
    return write_zip(path, {f"{folder}/{ratings}": text if ratings_text is None else ratings_text,
                            f"{folder}/{movies}": titles.encode(encoding or "utf-8"),
                            f"{folder}/README.txt": "a stand-in for the GroupLens zip"})

def check_movielens(data, name):
    """Asserts data is what movielens_zip(name) holds."""
    whole = name in ("ml-100k", "ml-1m")
    assert data["user"].tolist() == [1, 1, 2, 3] and data["item"].tolist() == [1, 3, 3, 2]
    assert data["rating"].tolist() == ([4, 5, 1, 5] if whole else [4.0, 4.5, 0.5, 5.0])
    assert data["timestamp"].tolist() == [t for *_, t in ML_RATINGS]
    assert data["user"].dtype == data["item"].dtype == data["timestamp"].dtype == np.int64
    assert data["rating"].dtype == np.float32 and data["titles"] == ML_TITLES

def sha256_of(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()

@pytest.fixture
def ml100k(tmp_path_factory, monkeypatch):
    """A tiny ml-100k.zip, trusted by patching its pinned SHA-256; downloads retry at once."""
    path = movielens_zip("ml-100k", tmp_path_factory.mktemp("src") / "tiny.zip")
    monkeypatch.setattr(data_fetch, "ML100K_SHA256", sha256_of(path))
    monkeypatch.setattr(data_fetch, "BACKOFF", 0)
    return path

@pytest.fixture
def http_server(monkeypatch):
    """An HTTP server on 127.0.0.1 serving .files, with faults scripted in .faults; .hits logged."""
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
            try:
                self.wfile.write(body[:len(body) // 2])
                if fault == "truncate":
                    return  # close after half of what Content-Length promised
                if fault in ("slow", "stall"):
                    self.wfile.flush()
                    time.sleep(0.3 if fault == "slow" else 5)
                self.wfile.write(body[len(body) // 2:])
            except OSError:
                pass  # the client went away

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    srv.files, srv.faults, srv.hits = files, faults, hits
    srv.url = f"http://127.0.0.1:{srv.server_port}"
    yield srv
    srv.shutdown()
    srv.server_close()

@pytest.fixture
def closed_url(monkeypatch):
    """A URL on a local port nobody listens on: connection refused, at once."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(data_fetch, "BACKOFF", 0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/ml-100k.zip"

def no_wheel(d):
    raise OSError("no registry in this test")

def test_cache_dir_precedence(tmp_path, monkeypatch):
    for var in ("MINICOLLAB_DATA", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "minicollab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "minicollab"
    monkeypatch.setenv("MINICOLLAB_DATA", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env" and cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert not any(tmp_path.iterdir())  # asking creates nothing

def test_every_name_has_its_grouplens_url_and_pins_what_does_not_change():
    assert NAMES == ["ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small",
                     "ml-latest"]
    assert all(url == f"https://files.grouplens.org/datasets/movielens/{n}.zip"
               for n, url in data_fetch.URLS.items())
    assert sorted(data_fetch.SHA256) == ["ml-1m", "ml-20m", "ml-25m"]

@pytest.mark.parametrize("name", NAMES)
def test_each_movielens_downloads_checks_caches_and_reads(name, tmp_path, monkeypatch, http_server):
    src, c = movielens_zip(name, tmp_path / "src.zip"), tmp_path / "c"
    if name == "ml-100k":  # trust the stand-in's hash where the name has one pinned
        monkeypatch.setattr(data_fetch, "ML100K_SHA256", sha256_of(src))
    elif name in data_fetch.SHA256:
        monkeypatch.setitem(data_fetch.SHA256, name, sha256_of(src))
    http_server.files[f"/{name}.zip"] = src.read_bytes()
    monkeypatch.setitem(data_fetch.URLS, name, f"{http_server.url}/{name}.zip")
    data = load_movielens(name, dir=c, quiet=True)
    check_movielens(data, name)
    assert (data["source"], data["path"]) == (f"{http_server.url}/{name}.zip", c / f"{name}.zip")
    assert os.listdir(c) == [f"{name}.zip"] and sha256_of(c / f"{name}.zip") == sha256_of(src)
    assert (c / f"{name}.zip").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
    again = load_movielens(name, dir=c, quiet=True)
    assert again["source"] == "cache" and len(http_server.hits) == 1
    check_movielens(again, name)

@pytest.mark.parametrize("fault, body, outcome, hits", [
    (None, "zip", "ok", 1),
    ("truncated cache", "zip", "ok", 1),  # a cache that fails its check is fetched again...
    ("edited cache", "zip", "ok", 1),  # ...one byte changed too
    (["timeout", 500, "truncate"], "zip", "ok", 4),  # each retried, with RETRIES = 4
    ([500] * 4, "zip", "HTTP Error 500: Internal Server Error", 4),
    (None, None, "HTTP Error 404: Not Found", 1),  # never retried
    (None, b"PK not really the zip", "SHA-256 mismatch: got ", 1),
    ("no DNS", "zip", "[Errno -2] Name or service not known", 0),  # tried once: no network
])
def test_download_faults(fault, body, outcome, hits, ml100k, tmp_path, monkeypatch, http_server,
                         capsys):
    good, cached, lookups = ml100k.read_bytes(), tmp_path / "ml-100k.zip", []
    if fault in ("truncated cache", "edited cache"):
        cached.write_bytes(good[:100] if fault == "truncated cache" else good[:-1] + b"?")
    if fault == "no DNS":  # no host name resolves, not even 127.0.0.1

        def no_dns(*args, **kwargs):
            lookups.append(args[0])
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    if body:
        http_server.files["/ml-100k.zip"] = good if body == "zip" else body
    http_server.faults += fault if isinstance(fault, list) else []
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", http_server.url + "/ml-100k.zip")
    monkeypatch.setattr(data_fetch, "TIMEOUT", 0.3)
    monkeypatch.setattr(data_fetch, "RETRIES", 4)
    monkeypatch.setattr(data_fetch, "fetch_wheel", no_wheel)
    if outcome == "ok":
        data = load_movielens(dir=tmp_path)
        check_movielens(data, "ml-100k")
        assert data["source"] == http_server.url + "/ml-100k.zip" and cached.read_bytes() == good
        assert os.listdir(tmp_path) == ["ml-100k.zip"]
        assert (f"warning: {cached} failed its check (SHA-256 mismatch"
                in capsys.readouterr().err) == (fault in ("truncated cache", "edited cache"))
    else:
        msg = one_line_error(load_movielens, dir=tmp_path, quiet=True)
        assert f"could not fetch ml-100k (tried {http_server.url}/ml-100k.zip: {outcome}" in msg
        assert "pip download recbole==1.2.1: no registry in this test" in msg
        assert os.listdir(tmp_path) == []  # nothing half-written is left
    assert len(http_server.hits) == hits and len(lookups) == (fault == "no DNS")

def test_a_download_is_announced_on_a_terminal_only(ml100k, tmp_path, monkeypatch, http_server):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    http_server.files["/x.zip"], url = ml100k.read_bytes(), http_server.url + "/x.zip"
    for stream, said in ((Tty(), f"downloading {url} ({ml100k.stat().st_size:,} bytes)\n"),
                         (io.StringIO(), "")):
        monkeypatch.setattr(sys, "stderr", stream)
        data_fetch.install(tmp_path / "x.zip", lambda f: data_fetch.download(url, f),
                           lambda p: None)
        assert stream.getvalue() == said and sha256_of(tmp_path / "x.zip") == sha256_of(ml100k)

def test_two_runs_at_once_both_get_the_data_and_one_whole_file(ml100k, tmp_path, monkeypatch,
                                                               http_server):
    http_server.files["/ml-100k.zip"] = ml100k.read_bytes()
    http_server.faults += ["slow", "slow"]  # both downloads are in flight together
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", http_server.url + "/ml-100k.zip")
    results = []
    runs = [threading.Thread(target=lambda: results.append(load_movielens(dir=tmp_path,
                                                                          quiet=True)))
            for _ in "ab"]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert len(results) == len(http_server.hits) == 2 and os.listdir(tmp_path) == ["ml-100k.zip"]
    for data in results:
        check_movielens(data, "ml-100k")

def test_killed_mid_download_the_next_run_starts_clean(ml100k, tmp_path, monkeypatch, http_server):
    http_server.files["/big.zip"] = ml100k.read_bytes() + bytes(300_000)  # a first chunk lands
    http_server.files["/ml-100k.zip"] = ml100k.read_bytes()
    http_server.faults.append("stall")
    code = (f"import data_fetch as d; d.URLS['ml-100k'] = {http_server.url + '/big.zip'!r}; "
            f"d.load_movielens(dir={str(tmp_path)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=HERE)
    deadline = time.time() + 10
    while not any(p.stat().st_size for p in tmp_path.glob(".partial-*")) and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    partial = [p.name for p in tmp_path.glob(".partial-*")]
    assert len(partial) == 1 and not (tmp_path / "ml-100k.zip").exists()
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", http_server.url + "/ml-100k.zip")
    check_movielens(load_movielens(dir=tmp_path, quiet=True), "ml-100k")  # a fresh one is spared...
    assert sorted(os.listdir(tmp_path)) == sorted(["ml-100k.zip", *partial])
    (tmp_path / ".partial-wheel-x").mkdir()  # as a run killed while pip downloads leaves
    (tmp_path / ".partial-wheel-x" / "recbole-1.2.1-py3-none-any.whl").write_bytes(b"half")
    monkeypatch.setattr(data_fetch, "STALE", 0)
    check_movielens(load_movielens(dir=tmp_path, quiet=True), "ml-100k")  # ...and old ones removed
    assert os.listdir(tmp_path) == ["ml-100k.zip"]

NOT_ML = "needs whole ids and timestamps, ratings from 0.5 to 5, and"

@pytest.mark.parametrize("name, src, message", [
    ("ml-100k", "missing.zip", "missing.zip is not the ml-100k.zip from GroupLens (No such file"),
    ("ml-100k", ".", "is not the ml-100k.zip from GroupLens (Is a directory); download it from "
                     "https://files.grouplens.org/datasets/movielens/ml-100k.zip"),
    ("ml-100k", "other.zip", "other.zip is not the ml-100k.zip from GroupLens (SHA-256 mismatch"),
    ("ml-latest-small", "tiny.zip", "is not the ml-latest-small.zip from GroupLens (not ml-latest-"
                                    "small: \"There is no item named 'ml-latest-small/ratings.csv"),
    ("ml-10m", dict(folder="ml-10m"), "(not ml-10m: \"There is no item named 'ml-10M100K/ratings"),
    ("ml-latest", dict(ratings_text="user,item,rating\n1,2,3\n"),
     f"(not ml-latest: ml-latest/ratings.csv {NOT_ML} ml-latest/movies.csv titles)"),
    ("ml-32m", dict(ratings_text="userId,movieId,rating,timestamp\n1,2,7,3\n"), NOT_ML),
    ("ml-latest-small", dict(ratings_text="userId,movieId,rating,timestamp\nu1,2,3,4\n"), NOT_ML),
    ("ml-latest", dict(ratings_text=""), "(not ml-latest: ml-latest/ratings.csv holds no ratings"),
])
def test_a_zip_that_is_not_the_movielens_named_is_refused_in_one_line(ml100k, tmp_path, name, src,
                                                                      message):
    write_zip(tmp_path / "other.zip", {"a.txt": "hi"})
    (tmp_path / "tiny.zip").write_bytes(ml100k.read_bytes())
    if isinstance(src, dict):
        src = movielens_zip(name, tmp_path / "x.zip", **src)
    msg = one_line_error(load_movielens, name, dir=tmp_path / "c", from_file=tmp_path / src,
                         quiet=True)
    assert message in msg and not any((tmp_path / "c").glob("*"))

def test_a_zip_without_a_pinned_hash_is_read_once_per_load(tmp_path, monkeypatch):
    reads = []
    real = data_fetch.read_movielens_zip
    monkeypatch.setattr(data_fetch, "read_movielens_zip", lambda *a: reads.append(a) or real(*a))
    src = movielens_zip("ml-32m", tmp_path / "ml-32m.zip")
    check_movielens(load_movielens("ml-32m", dir=tmp_path / "c", from_file=src, quiet=True),
                    "ml-32m")
    check_movielens(load_movielens("ml-32m", dir=tmp_path / "c", quiet=True), "ml-32m")
    assert len(reads) == 2  # once to check it, and that same read is what comes back

def test_the_wheel_fallback_gives_the_zips_data(ml100k, tmp_path, monkeypatch, closed_url):
    files = {"ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
             + "".join(f"{u}\t{i}\t{math.ceil(r)}\t{t}\n" for u, i, r, t in ML_RATINGS),
             "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\n"
             + "".join(f"{i}\t{t[:-7]}\t{t[-5:-1]}\n" for i, t in ML_TITLES.items())}  # 'T (year)'
    info = "recbole-1.2.1.dist-info/"
    whl = write_zip(tmp_path / "recbole-1.2.1-py3-none-any.whl", {
        **{data_fetch.WHEEL_DIR + name: text for name, text in files.items()},
        info + "METADATA": "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n",
        info + "WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"})
    monkeypatch.setitem(data_fetch.URLS, "ml-100k", closed_url)  # GroupLens out of reach
    monkeypatch.setattr(data_fetch, "WHEEL", str(whl))  # through the real pip, from a file
    monkeypatch.setattr(data_fetch, "WHEEL_FILES", {n: hashlib.sha256(t.encode()).hexdigest()
                                                    for n, t in files.items()})
    d = tmp_path / "cache"
    msg = one_line_error(load_movielens, dir=d, quiet=True)  # the wheel itself is checked
    assert f"tried {closed_url}: [Errno 111] Connection refused; pip download {whl}: SHA-256 " \
           f"mismatch" in msg and f"download {closed_url} by hand to {d / 'ml-100k.zip'}, or run " \
           f"`python data_fetch.py --from-file PATH`" in msg and os.listdir(d) == []
    monkeypatch.setattr(data_fetch, "WHEEL_SHA256", sha256_of(whl))
    data = load_movielens(dir=d, quiet=True)
    assert (data["source"], data["path"]) == (f"PyPI wheel {whl}", d / "ml-100k.inter")
    zipped = load_movielens(dir=tmp_path / "other", from_file=ml100k, quiet=True)
    for k in ("user", "item", "rating", "timestamp"):  # whichever source, the same
        assert np.array_equal(data[k], zipped[k]) and data[k].dtype == zipped[k].dtype
    assert data["titles"] == zipped["titles"] == ML_TITLES
    assert sorted(os.listdir(d)) == ["ml-100k.inter", "ml-100k.item"]  # the wheel is not kept
    assert load_movielens(dir=d, quiet=True)["source"] == "cache"

def test_an_unwritable_cache_directory_is_a_one_line_error(ml100k, tmp_path, monkeypatch):
    write(tmp_path / "file", "not a directory")  # as root, chmod stops nothing: a file in the way
    d = tmp_path / "file" / "cache"
    msg = one_line_error(load_movielens, dir=d, from_file=ml100k, quiet=True)
    assert f"cannot write to cache directory {d} (Not a directory); choose another with " \
           "MINICOLLAB_DATA=DIR (or data_fetch.py --dir DIR)" in msg
    monkeypatch.setenv("MINICOLLAB_DATA", str(d))  # the same through the environment, fetching
    assert f"cannot write to cache directory {d}" in one_line_error(load_movielens, quiet=True)

def test_the_command_line_says_what_it_fetched_or_why_not_in_one_line(ml100k, tmp_path, capsys):
    d = tmp_path / "missing" / "cache"  # created
    assert data_fetch.main(["--dir", str(d), "--from-file", str(ml100k)]) == 0
    out, err = capsys.readouterr()
    assert out == ("ml-100k: 4 ratings, 3 users, 3 items, mean rating 3.750; item 1 is 'Toy Story "
                   f"(1995)'\nsource: file {ml100k}\npath:   {d / 'ml-100k.zip'}\n")
    assert err == f"ml-100k: 4 ratings from file {ml100k} (cached at {d / 'ml-100k.zip'})\n"
    assert load_movielens(dir=d, quiet=True)["source"] == "cache" and not capsys.readouterr().err
    bad = movielens_zip("ml-latest-small", tmp_path / "bad.zip", ratings_text="")
    argv = ["--name", "ml-latest-small", "--dir", str(d), "--from-file", str(bad)]
    assert data_fetch.main(argv) == 1
    assert capsys.readouterr().err.startswith(f"error: {bad} is not the ml-latest-small.zip from ")
    for argv in (["--name", "ml-5m"], ["--name"], ["extra"]):
        with pytest.raises(SystemExit) as e:
            data_fetch.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1, err

def test_a_closed_stdout_ends_data_fetch_quietly(tmp_path):
    src = movielens_zip("ml-latest-small", tmp_path / "ml.zip")
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head -0` leaves it: the first write fails with EPIPE
    r = subprocess.run([sys.executable, "data_fetch.py", "--name", "ml-latest-small", "--dir",
                        str(tmp_path / "c"), "--from-file", str(src)], cwd=HERE, stdout=write_end,
                       stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, timeout=60)
    os.close(write_end)
    cached = tmp_path / "c" / "ml-latest-small.zip"
    assert (r.returncode, r.stderr) == (0, f"ml-latest-small: 4 ratings from file {src} (cached "
                                           f"at {cached})\n")

def test_real_ml100k_from_the_recbole_wheel(tmp_path, monkeypatch):
    def no_grouplens(url, f, quiet=False):
        raise OSError("skipped, to test the wheel")
    monkeypatch.setattr(data_fetch, "download", no_grouplens)  # even where GroupLens is reachable
    data = load_movielens(dir=tmp_path, quiet=True)
    assert data["source"] == "PyPI wheel recbole==1.2.1"
    assert len(data["rating"]) == 100_000 and len(np.unique(data["user"])) == 943
    assert len(np.unique(data["item"])) == 1682 and len(data["titles"]) == 1682
    assert data["rating"].sum(dtype=np.float64) == 352_986
    assert data["timestamp"].sum() == 88_352_885_148_862
    assert (data["user"][0], data["item"][0], data["rating"][0], data["timestamp"][0]) == \
        (196, 242, 3, 881250949)
    assert data["titles"][1] == "Toy Story (1995)" and data["titles"][267] == "unknown"
    assert data["titles"][1412] == "Land Before Time III: The Time of the Great Giving (1995) (V)"
    t = time.perf_counter()
    assert load_movielens(dir=tmp_path, quiet=True)["source"] == "cache"
    assert time.perf_counter() - t < 0.3  # and a run from the cache is fast


# ---- end to end: the real MovieLens-100k, fetched if need be ----------------------------------

def test_end_to_end_movielens_100k_the_books_loss_and_every_users_list():
    d = load_movielens(quiet=True)
    c = train(d["user"], d["item"], d["rating"], d["titles"], log=lambda s: None)
    assert 0.80 < c.history[-1]["valid_loss"] < 0.83  # the book prints 0.823
    assert c.similar("Star Wars (1977)")[0][1] == "Empire Strikes Back, The (1980)"
    assert c.top_n["popular_recall"] == pytest.approx(0.184, abs=5e-4)  # the figure
    for user in c.users.ids:  # no film the user rated, under any of its ids; no title twice
        titles = [t for _, t, _ in c.recommend(user, 10)]
        rated = {c.title(int(k) % 1682) for k in c.rated[c.rated // 1682 == c.users.o2i[user]]}
        assert len(set(titles)) == 10 and not rated & set(titles)

def test_end_to_end_cross_entropy_nearly_doubles_the_most_popular_lists_recall():
    d = load_movielens(quiet=True)
    c = train(d["user"], d["item"], d["rating"], d["titles"], loss="bce", seed=2, log=print)
    assert c.top_n["recall"] > 0.35 and c.top_n["ndcg"] > 0.34  # most popular: 0.186, 0.178
    assert c.top_n["recall"] > 1.9 * c.top_n["popular_recall"]
    assert c.history[-1]["valid_loss"] < c.history[0]["valid_loss"] and len(c.history) == 10


# ---- benchmark, on demand only: an ML-25M-shaped file, read, trained and measured ------------
# MINICOLLAB_BENCH=1 python -m pytest -q -s -k benchmark test_minicollab.py  (=2.5: 2.5M ratings)

BENCH = os.environ.get("MINICOLLAB_BENCH")

def ml25m_shaped(path, n_ratings=25_000_000, n_users=162_541, n_items=59_047, rank=8, seed=0):
    """Write a ratings.csv like ML-25M's from a known rank-8 model plus noise (sd 0.75)."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0, 1.0, n_users)  # a few users rate a lot; popularity follows Zipf
    popularity = 1 / rng.permutation(np.arange(1, n_items + 1))
    users = np.concatenate([np.arange(n_users), rng.choice(n_users, n_ratings - n_users,
                                                           p=activity / activity.sum())])
    items = rng.choice(n_items, n_ratings, p=popularity / popularity.sum())
    movie_ids = np.sort(rng.choice(np.arange(1, 209_172), n_items, replace=False))
    p, q = (rng.normal(0, (0.5 / rank) ** 0.25, (n, rank)) for n in (n_users, n_items))
    s = 3.53 + rng.normal(0, 0.45, n_users)[users] + rng.normal(0, 0.5, n_items)[items]
    for k in range(rank):
        s += p[users, k] * q[items, k]
    stars = np.clip(np.round(2 * (s + rng.normal(0, 0.75, n_ratings))), 1, 10).astype(np.int64)
    with open(path, "w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for a in range(0, n_ratings, 1_000_000):
            b = slice(a, a + 1_000_000)
            f.write("".join(f"{u},{i},{r / 2},{t}\n" for u, i, r, t in zip(
                (users[b] + 1).tolist(), movie_ids[items[b]].tolist(), stars[b].tolist(),
                rng.integers(789_652_009, 1_574_327_703, len(stars[b])).tolist())))

@pytest.mark.skipif(not BENCH, reason="a benchmark: MINICOLLAB_BENCH=1 runs it (minutes)")
@pytest.mark.parametrize("flags", [[], ["--loss", "bce"]], ids=["mse", "bce"])
def test_benchmark_ml25m_shaped_file(tmp_path_factory, flags):
    n = 25_000_000 if BENCH == "1" else int(float(BENCH) * 1e6)
    path = tmp_path_factory.getbasetemp() / f"ratings-{n}.csv"
    if not path.exists():
        ml25m_shaped(path, n, round(162_541 * n / 25e6), round(59_047 * n / 25e6))
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = ["/usr/bin/time", "-f", "peak %M KiB, wall %e s", sys.executable,
           os.path.join(here, "minicollab.py"), "--ratings", str(path), *flags]
    r = subprocess.run(cmd, capture_output=True, text=True)
    print("\n" + r.stdout.split("\nlowest")[0] + "\n" + r.stderr.strip())
    assert r.returncode == 0 and "recall@10" in r.stdout
