"""minicollab's tests: the chapter's claims, each checked two ways or against numbers worked out by
hand; then using a Collab; the command line; reading files; fetching MovieLens. MINICOLLAB_BENCH=1
also runs the benchmark on an ML-25M-shaped file (README.md)."""
import copy
import inspect
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import minicollab
from minicollab import (Adam, CollabNN, DotProductBias, IdMap, add_weight_decay, create_params,
                        evaluate, fit_one_cycle, get_emb_sz, implicit, lr_find, one_cycle,
                        recall_ndcg, sample_negatives, score_all, sigmoid_range, split, top_k,
                        top_n, train_step)

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
    assert users.encode(["carol", "alice"]).tolist() == [2, 0] and users.ids == ["alice", "bob", "carol"]
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
    assert torch.equal(split(1000, 0.2, seed=0)[1], v) and not torch.equal(split(1000, 0.2, 1)[1], v)
    assert [len(s) for s in split(2, 0.2)] == [1, 1]
    with pytest.raises(ValueError, match="at least two ratings"):
        split(1)


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
        model.user_factors[0], model.movie_factors[2] = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -0.25])
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
            F.mse_loss(model(x[100 * step:100 * step + 100]), y[100 * step:100 * step + 100]).backward()
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
        assert int(fields[0]) == epoch and float(fields[2]) == pytest.approx(h["valid_loss"], abs=1e-6)
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


@pytest.mark.parametrize("make", [lambda: DotProductBias(30, 40, 5), lambda: CollabNN(*get_emb_sz(30, 40))])
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


def test_the_chapters_pieces_run_when_pasted_into_a_file_that_imports_only_torch_and_numpy(tmp_path):
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
    assert xb.shape == (15, 2) and torch.equal(xb[:3], x) and torch.equal(xb[3:, 0], x[:, 0].repeat(4))
    assert yb.tolist() == [1.0] * 3 + [0.0] * 12 and not torch.isin(xb[3:, 0] * 5 + xb[3:, 1], seen).any()
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
    train, liked = pairs[:450], pairs[450:]
    model = DotProductBias(40, 40, 3)
    scores = score_all(model, torch.arange(40))
    got = top_n(model, train, liked, 40, log=lambda s: None)
    assert [got["recall"], got["ndcg"]] == pytest.approx(brute_force(scores, train.tolist(),
                                                                     liked.tolist()), rel=1e-5)
    counts = torch.bincount(train[:, 1], minlength=40).float().expand(40, -1)
    assert [got["popular_recall"], got["popular_ndcg"]] == pytest.approx(
        brute_force(counts, train.tolist(), liked.tolist()), rel=1e-5)
    lines = []
    sampled = top_n(model, train, liked, 40, max_users=5, seed=3, log=lines.append)
    assert "a seeded 5 of" in lines[0] and sampled != got
    assert sampled == top_n(model, train, liked, 40, max_users=5, seed=3, log=lambda s: None)


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
