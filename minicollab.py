"""minicollab: fastbook chapter 8, collaborative filtering from scratch, in one file."""
# The chapter in its order, its exercise in cross-entropy, using the model, the command line.
import argparse
import difflib
import importlib.util
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- 1. The data and its ids -----------------------------------------------------------------

class IdMap:
    """Raw ids (ints or strings) <-> indices 0..n-1. Unlike fastai's, an unknown id is an error."""

    def __init__(self, ids, what):
        self.ids, self.what = np.asarray(ids).tolist(), what  # numpy's ints and strs as Python's
        self.o2i = {o: i for i, o in enumerate(self.ids)}  # fastai's name

    def encode(self, raw):
        """Raw ids, any shape -> indices; an unknown id is a KeyError naming it."""
        raw = np.asarray(raw)
        if unknown := [o for o in raw.ravel().tolist() if o not in self.o2i]:
            raise KeyError(f"unknown {self.what} {unknown[0]!r}")
        return np.array([self.o2i[o] for o in raw.ravel().tolist()], np.int64).reshape(raw.shape)

def split(n, valid_pct=0.2, seed=0):
    """A random (train, valid) split of n row indices, as fastai's RandomSplitter."""
    if n < 2 or not 0 < valid_pct < 1:
        raise ValueError(f"need two ratings or more and 0 < valid_pct < 1, not {n}, {valid_pct}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_valid = min(max(1, round(n * valid_pct)), n - 1)
    return perm[n_valid:], perm[:n_valid]

# --- 2. Embeddings and create_params; sigmoid_range and DotProductBias -----------------------

def create_params(size):
    """Parameters drawn from N(0, 0.01): the book's replacement for nn.Embedding."""
    return nn.Parameter(torch.zeros(*size).normal_(0, 0.01))

def sigmoid_range(x, lo, hi):
    """Squash x into (lo, hi)."""
    return torch.sigmoid(x) * (hi - lo) + lo

class DotProductBias(nn.Module):
    """The book's model: sigmoid_range(user . movie + user bias + movie bias)."""

    def __init__(self, n_users, n_movies, n_factors=50, y_range=(0, 5.5)):
        super().__init__()
        self.user_factors = create_params([n_users, n_factors])
        self.user_bias = create_params([n_users])
        self.movie_factors = create_params([n_movies, n_factors])
        self.movie_bias = create_params([n_movies])
        self.y_range = y_range

    def forward(self, x):  # x: (bs, 2) indices of (user, movie) -> (bs,)
        users, movies = x[:, 0], x[:, 1]
        # index_select(0, users) is the book's user_factors[users], whose gradient is slower on CPUs
        res = self.user_factors.index_select(0, users) * self.movie_factors.index_select(0, movies)
        res = res.sum(1) + self.user_bias.index_select(0, users)
        res = res + self.movie_bias.index_select(0, movies)
        return sigmoid_range(res, *self.y_range)

# --- 3. Weight decay, added to the gradients by hand -----------------------------------------

def add_weight_decay(params, wd):
    """Add wd * p to each gradient: the gradient of the L2 penalty wd/2 * sum(p**2)."""
    # fastai's wd is decoupled (AdamW); added to the gradient, it is divided by Adam's sqrt(v) too
    with torch.no_grad():
        for p in params:
            p.grad.add_(p, alpha=wd)

# --- 4. The training loop: Adam, fastai's one-cycle schedule, and lr_find --------------------

class Adam:
    """Adam written out, with fastai's defaults; beta1 is the momentum that one-cycle schedules."""

    def __init__(self, params, sqr_mom=0.99, eps=1e-5):
        self.params, self.sqr_mom, self.eps, self.t = list(params), sqr_mom, eps, 0
        self.avg = [torch.zeros_like(p) for p in self.params]  # running mean of the gradients
        self.sqr = [torch.zeros_like(p) for p in self.params]  # and of their squares

    def step(self, lr, mom):
        self.t += 1
        with torch.no_grad():
            for p, avg, sqr in zip(self.params, self.avg, self.sqr):
                avg.lerp_(p.grad, 1 - mom)
                sqr.mul_(self.sqr_mom).addcmul_(p.grad, p.grad, value=1 - self.sqr_mom)
                denom = (sqr / (1 - self.sqr_mom ** self.t)).sqrt_().add_(self.eps)
                p.addcdiv_(avg, denom, value=-lr / (1 - mom ** self.t))  # both means debiased
                p.grad = None

def one_cycle(pct, lr_max, div=25.0, div_final=1e5, pct_start=0.25, moms=(0.95, 0.85, 0.95)):
    """fastai's one-cycle (lr, momentum) at fraction pct of training: two cosine phases."""
    def cos(start, end, p):
        return end + (start - end) / 2 * (1 + math.cos(math.pi * p))
    if pct < pct_start:  # warm up from lr_max/25 while momentum falls
        return cos(lr_max / div, lr_max, pct / pct_start), cos(*moms[:2], pct / pct_start)
    p = (pct - pct_start) / (1 - pct_start)  # anneal to lr_max/1e5 while momentum climbs back
    return cos(lr_max, lr_max / div_final, p), cos(*moms[1:], p)

def train_step(model, opt, x, y, lr, mom, wd, loss_func=F.mse_loss):
    """One step on a batch: the loss, its gradients plus weight decay, Adam; returns the loss."""
    loss = loss_func(model(x), y)
    loss.backward()
    add_weight_decay(opt.params, wd)
    opt.step(lr, mom)
    return loss.detach()

def evaluate(model, x, y, loss_func=F.mse_loss, bs=65536):
    """The mean loss on (n, 2) indices x and (n,) targets y, bs rows at a time."""
    with torch.no_grad():
        losses = [loss_func(model.eval()(x[i:i + bs]), y[i:i + bs], reduction="sum")
                  for i in range(0, len(y), bs)]
    return float(sum(losses)) / len(y)

def fit_one_cycle(model, train, valid, epochs=5, lr_max=1.5e-2, wd=1.5e-4, bs=2048, seed=0,
                  log=print, progress=None, eps=1e-5, loss_func=F.mse_loss, sample=None):
    """Train with Adam on the one-cycle schedule, printing fastai's epoch table; returns history."""
    if not (epochs >= 1 and bs >= 1 and 0 < lr_max < math.inf and 0 <= wd < math.inf):
        raise ValueError(f"need epochs, bs, lr_max > 0 and wd >= 0, not {epochs, bs, lr_max, wd}")
    (x, y), opt, gen = train, Adam(model.parameters(), eps=eps), torch.Generator().manual_seed(seed)
    steps, history = math.ceil(len(y) / bs), []
    log(f"{'epoch':<6} {'train_loss':<11} {'valid_loss':<11} time")
    for epoch in range(epochs):
        start, total, rows = time.perf_counter(), 0, 0
        perm = torch.randperm(len(y), generator=gen).to(y.device)
        xs, ys = x[perm], y[perm]  # shuffled once: a batch is a slice
        for step in range(steps):
            lr, mom = one_cycle((epoch * steps + step) / (epochs * steps), lr_max)
            xb, yb = xs[step * bs:(step + 1) * bs], ys[step * bs:(step + 1) * bs]
            xb, yb = sample(xb, yb) if sample else (xb, yb)  # section 7: unrated items as 0s
            total += train_step(model.train(), opt, xb, yb, lr, mom, wd, loss_func) * len(yb)
            rows += len(yb)  # the loss stays on the device: no sync a step
            if progress:
                progress(step + 1, steps, time.perf_counter() - start)
        train_loss, valid_loss = float(total) / rows, evaluate(model, *valid, loss_func)
        if not math.isfinite(train_loss + valid_loss):
            raise ValueError(f"the loss became NaN in epoch {epoch}: try a lower learning rate")
        history.append(dict(train_loss=train_loss, valid_loss=valid_loss))
        history[-1]["time"] = time.perf_counter() - start
        log(f"{epoch:<6} {train_loss:<11.6f} {valid_loss:<11.6f} {history[-1]['time']:.2f}")
    return history

def lr_find(model, train, start_lr=1e-7, end_lr=10, num_it=100, bs=2048, wd=0.0, seed=0, eps=1e-5,
            loss_func=F.mse_loss, sample=None):
    """fastai's lr finder: grow the lr till the loss explodes; returns (suggestion, lrs, losses)."""
    (x, y), opt, gen = train, Adam(model.parameters(), eps=eps), torch.Generator().manual_seed(seed)
    saved, lrs, losses, avg = {k: v.clone() for k, v in model.state_dict().items()}, [], [], 0.0
    bs = min(len(y), max(bs, 1024))  # in small batches the minimum is found by chance
    for i in range(num_it):
        lrs.append(start_lr * (end_lr / start_lr) ** (i / (num_it - 1)))
        idx = torch.randint(len(y), (bs,), generator=gen).to(y.device)
        xb, yb = sample(x[idx], y[idx]) if sample else (x[idx], y[idx])
        loss = train_step(model.train(), opt, xb, yb, lrs[-1], 0.9, wd, loss_func)
        avg = 0.98 * avg + 0.02 * float(loss)
        losses.append(avg / (1 - 0.98 ** (i + 1)))  # fastai's smoothed, debiased loss
        if not math.isfinite(losses[-1]) or losses[-1] > 4 * min(losses):
            break
    model.load_state_dict(saved)  # as it was before the sweep
    return lrs[int(np.argmin(losses))] / 10, lrs, losses  # fastai's 'lr_min': a tenth of the best

# --- 5. Interpreting what was learned (c: a trained Collab, section 8, whose methods these are)

def biases(c, n=5):
    """The (id, title)s of lowest and of highest movie bias, one per film."""
    order = c.model.movie_bias.detach().cpu().argsort()
    return c.films(order)[:n], c.films(order.flip(0))[:n]

def similar(c, item, n=5, min_ratings=20):
    """The n (id, title)s whose factors point the way this id's or title's do, if rated enough."""
    i, factors = find_item(c.items.ids, c.titles, item), c.model.movie_factors.detach().cpu()
    sims = F.cosine_similarity(factors, factors[i][None], dim=1)  # (n_movies,)
    counts = torch.bincount(c.rated % len(sims), minlength=len(sims))
    counts[c.film == c.film[i]] = -1  # never itself, under any of its ids
    enough = min(min_ratings, counts.sort().values[-min(n, len(sims))])  # small data: n most rated
    sims[(counts < enough) | (counts < 0)] = -math.inf  # rarely rated: noise
    return c.films(sims.argsort(descending=True, stable=True)[:int(sims.isfinite().sum())])[:n]

def pca(c, k=3, n_top=1000):
    """The factors of the n_top most-rated movies on k principal components, and those movies."""
    counts = torch.bincount(c.rated % len(c.items.ids), minlength=len(c.items.ids))
    top = counts.argsort(descending=True)[:n_top]
    factors = c.model.movie_factors.detach().cpu()[top]
    factors = factors - factors.mean(0)
    return factors @ torch.linalg.svd(factors, full_matrices=False)[2][:k].T, top.tolist()

def plot_pca(c, path, n=50):
    """The book's scatter of the n most-rated titles on principal components 0 and 2."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    comps, items = c.pca(3)
    if comps.shape[1] < 3:
        raise ValueError("the plot shows principal components 0 and 2: needs 3+ factors and items")
    fig, ax = plt.subplots(figsize=(12, 12))
    ax.scatter(comps[:n, 0], comps[:n, 2])
    for (x, _, y), i in zip(comps[:n].tolist(), items[:n]):
        ax.text(x, y, c.title(i), fontsize=9)
    ax.set(xlabel="principal component 0", ylabel="principal component 2")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)

# --- 6. Deep learning for collaborative filtering --------------------------------------------

def get_emb_sz(n_users, n_movies):
    """fastai's rule of thumb for embedding widths: [(n_users, width), (n_movies, width)]."""
    return [(n, min(600, round(1.6 * n ** 0.56))) for n in (n_users, n_movies)]

class CollabNN(nn.Module):
    """The book's CollabNN: embeddings concatenated, through fastai's configurable ReLU layers."""

    def __init__(self, user_sz, item_sz, layers=(100, 50), p=0.0, y_range=(0, 5.5)):
        super().__init__()
        self.user_factors = create_params(user_sz)
        self.movie_factors = create_params(item_sz)
        sizes, mods = [user_sz[1] + item_sz[1], *layers], []
        for a, b in zip(sizes, sizes[1:]):
            mods += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(p)]
        self.layers = nn.Sequential(*mods, nn.Linear(sizes[-1], 1))
        self.y_range = y_range

    def forward(self, x):  # x: (bs, 2) indices of (user, movie) -> (bs,)
        users, movies = x[:, 0], x[:, 1]
        embs = self.user_factors.index_select(0, users), self.movie_factors.index_select(0, movies)
        x = self.layers(torch.cat(embs, dim=1))  # (bs, 1)
        return sigmoid_range(x[:, 0], *self.y_range)  # (bs,): a (bs, 1) would broadcast against y

# --- 7. Cross-entropy: which films will a user watch? (the book's "Further Research") ---------
# Fit to ratings, a model learns how a user would rate a film *if* they watched it; a top-N list
# must guess *which* films they watch and like. So: liked ratings are 1s, films never rated 0s.

def sample_negatives(users, seen, n_items, gen):
    """For each user index, an item they never rated (seen: sorted user * n_items + item)."""
    items = torch.randint(n_items, users.shape, generator=gen, device=users.device)
    todo = torch.arange(len(users), device=users.device)
    for _ in range(50):  # draw again where the user rated it; one who rated all keeps one
        codes = users[todo] * n_items + items[todo]
        todo = todo[seen[torch.searchsorted(seen, codes).clamp(max=len(seen) - 1)] == codes]
        if not len(todo):
            break
        items[todo] = torch.randint(n_items, todo.shape, generator=gen, device=gen.device)
    return items

def implicit(seen, n_items, negatives=8, seed=0):
    """sample(x, y) for fit_one_cycle: a batch's pairs as 1s, and `negatives` 0s for each."""
    gen = torch.Generator(seen.device).manual_seed(seed)

    def sample(x, y):  # (bs, 2) -> (bs * (1 + negatives), 2)
        users = x[:, 0].repeat(negatives)
        x0 = torch.stack([users, sample_negatives(users, seen, n_items, gen)], 1)
        return torch.cat([x, x0]), torch.cat([torch.ones_like(y), y.new_zeros(len(users))])
    return sample

# --- 8. Using and evaluating the trained model -----------------------------------------------

def find_item(ids, titles, item):
    """The index of an item given by id or by title, in any case; else close titles."""
    names = [str(titles.get(o, o)).lower() for o in ids]
    if item in ids or str(item).lower() in names:  # a title of two ids: the first id
        return ids.index(item) if item in ids else names.index(str(item).lower())
    close = [titles.get(ids[names.index(s)], s) for s in difflib.get_close_matches(
        str(item).lower(), list(dict.fromkeys(names)), 3, 0.5)]  # a film once
    raise ValueError(f"no item {item!r}; " + (f"did you mean {str(close)[1:-1]}?" if close else
                                               f"items look like {titles.get(ids[0], ids[0])!r}"))

class Collab:
    """A trained model and what it takes to use it: ids, titles, and who rated what."""
    biases, similar, pca = biases, similar, pca  # section 5

    def __init__(self, model, users, items, titles=None, rated=(), loss="mse"):
        self.model, self.users, self.items = model, IdMap(users, "user"), IdMap(items, "item")
        self.titles = {np.asarray(k).item(): str(t) for k, t in (titles or {}).items()}
        self.rated = torch.unique(torch.as_tensor(np.asarray(rated, np.int64)))  # sorted codes
        names = [self.title(i) for i in range(len(self.items.ids))]
        self.film = torch.as_tensor(np.unique(names, return_inverse=True)[1])  # one per title
        self.loss, self.history, self.top_n = loss, [], {}

    def title(self, i):
        """The title of item index i, or its raw id where there is none."""
        return self.titles.get(self.items.ids[i], str(self.items.ids[i]))

    def films(self, order):
        """[(id, title)] of item indices in order, each film once (a title may have two ids)."""
        first = np.sort(np.unique(self.film[order].numpy(), return_index=True)[1])
        return [(self.items.ids[i], self.title(i)) for i in order[first].tolist()]

    def predict(self, users, items):
        """Predicted ratings (bce: the chance they like it) of raw ids, broadcast as numpy does."""
        u, i = np.broadcast_arrays(self.users.encode(users), self.items.encode(items))
        x = torch.as_tensor(np.stack([u.ravel(), i.ravel()], 1))
        with torch.no_grad():
            out = self.model.eval()(x.to(self.model.movie_factors.device))
        return out.cpu().numpy().reshape(np.atleast_1d(u).shape)

    def recommend(self, user, n=5):
        """The n films this user has not rated, best first: [(id, title, prediction)]."""
        u, n_items = int(self.users.encode(user)), len(self.items.ids)
        scores = torch.as_tensor(self.predict(user, self.items.ids))  # (n_items,)
        lo, hi = torch.searchsorted(self.rated, torch.tensor([u, u + 1]) * n_items)
        scores[torch.isin(self.film, self.film[self.rated[lo:hi] % n_items])] = -math.inf
        order = scores.argsort(descending=True, stable=True)[:int(scores.isfinite().sum())]
        return [(o, t, float(scores[self.items.o2i[o]])) for o, t in self.films(order)[:max(n, 0)]]

    def fold_in(self, user, items, ratings, steps=100, lr=0.05, wd=None):
        """Add a user unseen in training from (item, rating) pairs, fitting only their row."""
        user, like = np.asarray(user).item(), self.users.ids[0]  # numpy's, torch's, pandas' 3.0
        user = int(user) if isinstance(user, float) and user.is_integer() else user
        y = torch.as_tensor(np.atleast_1d(np.asarray(ratings, np.float32)))
        i = torch.as_tensor(np.atleast_1d(self.items.encode(items)))
        for bad, why in [(self.loss != "mse", "a cross-entropy model has no ratings to fit"),
                         (user in self.users.o2i, f"user {user!r} is in the model already"),
                         (type(user) is not type(like), f"user {user!r} is no id like {like!r}"),
                         (len(i) != len(y) or not len(y) or not y.isfinite().all(),
                          f"give one finite rating per item, not {items} and {ratings}")]:
            if bad:
                raise ValueError(f"fold_in: {why}")
        m, params = self.model.eval(), {k: p.detach() for k, p in self.model.named_parameters()}
        rows = {k: nn.Parameter(torch.zeros_like(params[k][:1])) for k in params if "user" in k}
        scale = ((m.y_range[1] - m.y_range[0]) / 5.5) ** 2 or 1.0  # the ratings' units, as in train
        wd = 10 / len(y) * scale if wd is None else wd  # train's lam / n; 1 for 10 ratings
        x, y = torch.stack([0 * i, i], 1).to(m.movie_factors.device), y.to(m.movie_factors.device)

        def one_user(x):  # the model with the new user as its only user, all else as trained
            return torch.func.functional_call(m, params | rows, x)
        opt = Adam(rows.values(), eps=1e-5 * scale)
        for _ in range(steps):
            train_step(one_user, opt, x, y, lr, 0.9, wd)
        for k, row in rows.items():
            setattr(m, k, nn.Parameter(torch.cat([params[k], row.detach()])))
        self.rated = torch.cat([self.rated, len(self.users.ids) * len(self.items.ids) + i.unique()])
        self.users = IdMap(self.users.ids + [user], "user")

    def save(self, path):
        """Plain values in one file, written whole or not at all."""
        values = dict(state=self.model.state_dict(), y_range=[float(y) for y in self.model.y_range],
                      users=self.users.ids, items=self.items.ids, titles=self.titles,
                      rated=self.rated, loss=self.loss)
        try:
            torch.save(values, f"{path}.partial")
            os.replace(f"{path}.partial", path)
        finally:
            if os.path.isfile(f"{path}.partial"):
                os.remove(f"{path}.partial")

    @staticmethod
    def load(path, device="cpu"):
        """Read what save() wrote: plain values and tensors (weights_only), nothing that runs."""
        try:
            v = torch.load(path, map_location="cpu", weights_only=True)
            s, y_range = v["state"], v["y_range"]
            (n_users, k), n_movies = s["user_factors"].shape, len(s["movie_factors"])
            hidden = [w.shape[0] for name, w in s.items() if name.endswith(".weight")][:-1]
            model = DotProductBias(n_users, n_movies, k, y_range) if "user_bias" in s else \
                CollabNN(s["user_factors"].shape, s["movie_factors"].shape, hidden, y_range=y_range)
            model.load_state_dict(s)
            c = Collab(model.to(device), v["users"], v["items"], v["titles"], v["rated"], v["loss"])
        except FileNotFoundError:
            raise ValueError(f"no model file at {path}; train one with --save {path}") from None
        except Exception as e:  # truncated, edited, or not ours at all
            raise ValueError(f"{path} is no minicollab model ({type(e).__name__}); save one again")
        return c

# The defaults follow the data, with rows the training rows of an epoch (bce: 1 + negatives for
# each liked rating). bs: 64 to ~320 steps an epoch (an Adam step costs every parameter), and
# fewer epochs where they would pass 1.4e8 rows in all (25M ratings by bce: 1, not 10). wd =
# lam / rows * (spread / 4)**2: the same L2 on a row at any size and rating scale; Adam's eps =
# 1e-5 * (spread / 4)**2, as the gradients scale so. For bce the spread counts as 4.
DEFAULTS = {("dot", "mse"): dict(epochs=5, lr=0.015, lam=16.0, bs=1024),
            ("nn", "mse"): dict(epochs=6, lr=0.04, lam=8.0, bs=1024),
            ("dot", "bce"): dict(epochs=10, lr=0.02, lam=4.0, bs=4096, negatives=8),
            ("nn", "bce"): dict(epochs=10, lr=0.03, lam=1.0, bs=4096, negatives=8)}

def get_device(name="auto"):
    """'auto' is CUDA when there is a GPU, else the CPU; one that cannot be used is refused."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    kind = name.partition(":")[0]
    if not (kind == "cpu" or kind == "cuda" and torch.cuda.is_available()):
        raise ValueError(f"device {name!r} is not usable here: give auto, cpu, or cuda with a GPU")
    return torch.device(name)

def show_progress(step, steps, seconds):
    """An epoch's steps and time left past 2 s, on a terminal only: never into a log."""
    if seconds > 2 and sys.stderr.isatty() and (step % max(1, steps // 100) == 0 or step == steps):
        line = f"{step}/{steps} steps, {(steps / step - 1) * seconds:.0f} s left" * (step < steps)
        print(f"\r  {line:<40}\r", end="", file=sys.stderr)

def unique(a):
    """np.unique(a, return_inverse=True), by torch where the ids are ints: 5 times faster."""
    if a.dtype.kind != "i":
        return np.unique(a, return_inverse=True)
    ids, inverse = torch.unique(torch.from_numpy(np.require(a, requirements="W")),
                                return_inverse=True)
    return ids.numpy(), inverse.numpy()

def train(users, items, ratings, titles=None, model="dot", loss="mse", epochs=None, lr=None,
          wd=None, bs=None, n_factors=50, layers=(16,), valid_pct=0.2, seed=0, device="auto",
          log=print, find_lr=False):
    """Train on raw ids and ratings, with defaults that follow them: a Collab (find_lr: a rate)."""
    (uids, u), (iids, i) = [unique(np.asarray(a)) for a in (users, items)]
    x = torch.as_tensor(np.stack([u, i], 1))  # (n, 2); ratings: writable, as torch asks
    y = torch.as_tensor(np.require(ratings, np.float32, "W"))
    del users, items, u, i  # what the caller passed on is freed: 25M ratings take gigabytes
    if len(x) != len(y) or not y.isfinite().all() or (model, loss) not in DEFAULTS:
        raise ValueError(f"need one finite rating per (user, item), model dot or nn, loss mse or "
                         f"bce: {len(y):,} ratings ({int((~y.isfinite()).sum())} not finite) for "
                         f"{len(x):,} pairs, {model!r}, {loss!r}")
    (t, v), hp, device, n_items = split(len(y), valid_pct, seed), DEFAULTS[model, loss], \
        get_device(device), len(iids)
    codes = x[:, 0] * n_items + x[:, 1]  # (n,): one number per (user, item)
    rated, seen = [torch.as_tensor(np.sort(c.numpy())) for c in (codes, codes[t])]  # all, train
    if repeats := int((rated[1:] == rated[:-1]).sum()):  # both copies may land in both splits
        print(f"warning: ratings that repeat a (user, item) pair: {repeats:,}", file=sys.stderr)
    (lo, hi), bce, neg = y.aminmax(), loss == "bce", hp.get("negatives", 0)
    liked = v[y[v] >= lo + 0.75 * (hi - lo)]  # 4 and 5 of 1..5: what a top-N list should find
    y_range = (0.0, 1.0) if bce else (float(lo - (hi - lo) / 4), float(hi + (hi - lo) / 8))
    scale = 1.0 if bce else float((hi - lo) / 4) ** 2 or 1.0  # the book's (0, 5.5): 1
    pos = t[y[t] >= lo + 0.75 * (hi - lo)] if bce else t  # bce: the liked ratings are its 1s
    if bce and not (len(pos) and len(liked)):
        raise ValueError(f"bce needs ratings of {lo + 0.75 * (hi - lo):g} or more in both splits")
    rows = len(pos) * (1 + neg)
    bs = max(1, round(max(rows / 320, min(hp["bs"], rows / 64)) / (1 + neg))) if bs is None else bs
    torch.manual_seed(seed)
    net = CollabNN(*get_emb_sz(len(uids), n_items), layers, y_range=y_range) if model == "nn" \
        else DotProductBias(len(uids), n_items, n_factors, y_range)
    log(f"{len(y):,} ratings, {len(uids):,} users, {n_items:,} items")
    kw = dict(bs=bs, wd=hp["lam"] / rows * scale if wd is None else wd, eps=1e-5 * scale)
    train_xy, valid_xy, good = (x[pos], y[pos]), (x[v], y[v]), codes[liked].sort().values
    if bce:  # 0s never rated in training; the valid loss on one seeded draw, so epochs compare
        valid_xy = implicit(rated, n_items, neg, seed + 1)(x[liked], y[liked])
        kw.update(loss_func=F.binary_cross_entropy, sample=implicit(seen.to(device), n_items, neg,
                                                                     seed))
    del x, y, codes, t, v, pos  # 25M ratings: the copies above are what training needs
    net, train_xy, valid_xy = net.to(device), [a.to(device) for a in train_xy], [
        a.to(device) for a in valid_xy]
    if find_lr:
        return lr_find(net, train_xy, **kw)[0]
    epochs = max(1, min(hp["epochs"], int(1.4e8 // rows))) if epochs is None else epochs
    start, lr = time.perf_counter(), hp["lr"] if lr is None else lr
    history = fit_one_cycle(net, train_xy, valid_xy, epochs, lr, seed=seed, log=log,
                            progress=show_progress, **kw)
    seconds = time.perf_counter() - start
    log(f"fit: {epochs} epoch{'s' * (epochs > 1)} in {seconds:.2f} s on {device}")
    c = Collab(net, uids, iids, titles, rated.cpu(), loss)
    c.history, c.top_n = history, top_n(net, seen, good, n_items, seed=seed, log=log)
    return c

# recall@k: hits in the top k / min(k, relevant), as LensKit's. NDCG@k: binary gains, 1/log2(rank
# + 1) discounts, over the ideal DCG of min(k, relevant) hits, as RecBole's and sklearn's.

def top_k(scores, k):
    """The indices of each row's k best scores, best first; ties go to the lower index."""
    idx = scores.topk(k, dim=1).indices.sort(dim=1).values  # (n, k), by index
    kth = scores.gather(1, idx).min(1, keepdim=True).values  # (n, 1): each row's k-th best
    for r in ((scores == kth).sum(1) > (scores.gather(1, idx) == kth).sum(1)).nonzero()[:, 0]:
        ahead, tied = (scores[r] > kth[r]).nonzero()[:, 0], (scores[r] == kth[r]).nonzero()[:, 0]
        idx[r] = torch.cat([ahead, tied[:k - len(ahead)]]).sort().values  # a tie at the k-th
    return idx.gather(1, scores.gather(1, idx).sort(dim=1, descending=True, stable=True).indices)

def recall_ndcg(top, relevant):
    """Each row's recall@k and NDCG@k: top (n, k) items best first, relevant (n, n_items) bools."""
    hits, k = relevant.gather(1, top).float(), top.shape[1]  # (n, k)
    n_relevant = relevant.sum(1).clamp(max=k)  # rows with none are the caller's to skip
    discounts = 1 / torch.log2(torch.arange(2, k + 2, dtype=torch.float))  # ranks 1..k
    return hits.sum(1) / n_relevant, (hits * discounts).sum(1) / discounts.cumsum(0)[n_relevant - 1]

def score_all(model, users, bs=65536):
    """(len(users), n_items) predictions of every item: for the dot model, one matrix product."""
    m, users = model.eval(), users.to(model.movie_factors.device)
    with torch.no_grad():
        if isinstance(m, DotProductBias):
            res = m.user_factors[users] @ m.movie_factors.T + m.user_bias[users, None]
            return sigmoid_range(res + m.movie_bias, *m.y_range).cpu()
        x = torch.cartesian_prod(users, torch.arange(len(m.movie_factors), device=users.device))
        return torch.cat([m(x[i:i + bs]) for i in range(0, len(x), bs)]).view(len(users), -1).cpu()

def top_n(model, seen, liked, n_items, k=10, max_users=10_000, seed=0, log=print):
    """Mean recall@k and NDCG@k of the model and of the most popular items; seen and liked: the
    sorted user * n_items + item of the training pairs and of the liked valid ones."""
    users, gen = torch.unique(liked // n_items), torch.Generator().manual_seed(seed)
    sample = users[torch.randperm(len(users), generator=gen)[:max_users]].sort().values

    def rows(codes):  # the sample's codes as its row * n_items + item
        lo, hi = torch.searchsorted(codes, torch.stack([sample, sample + 1]) * n_items)
        row = torch.repeat_interleave(torch.arange(len(sample)), hi - lo)
        at = lo[row] + torch.arange(len(row)) - (torch.cumsum(hi - lo, 0) - (hi - lo))[row]
        return row * n_items + codes[at] % n_items

    def grid(codes, a, b):  # (b - a, n_items) bools: rows a..b's pairs
        g = torch.zeros((b - a) * n_items, dtype=torch.bool)
        g[codes[torch.searchsorted(codes, a * n_items):torch.searchsorted(codes, b * n_items)]
          - a * n_items] = True
        return g.view(b - a, n_items)
    popular = torch.bincount(seen % n_items, minlength=n_items).float()  # (n_items,)
    seen, liked, sums, step = rows(seen), rows(liked), torch.zeros(2, 2), 2 ** 22 // n_items + 1
    for a, b in [(a, min(len(sample), a + step)) for a in range(0, len(sample), step)]:
        mask, relevant = grid(seen, a, b), grid(liked, a, b)
        for j, scores in enumerate([score_all(model, sample[a:b]), popular.repeat(b - a, 1)]):
            top = top_k(scores.masked_fill_(mask, -math.inf), min(k, n_items))
            sums[j] += torch.stack([m.sum() for m in recall_ndcg(top, relevant)])
    (r, nd), (pr, pn) = (sums / max(1, len(sample))).tolist()
    of = f"a seeded {len(sample):,} of" if len(sample) < len(users) else "all"
    log(f"top {k} for {of} {len(users):,} users with a liked valid item: recall@{k} {r:.3f}, "
        f"NDCG@{k} {nd:.3f}; most popular {pr:.3f}, {pn:.3f}")
    return dict(recall=r, ndcg=nd, popular_recall=pr, popular_ndcg=pn)

# --- 9. The command line ---------------------------------------------------------------------
TRAINING = {"model", "loss", "layers", "epochs", "lr", "wd", "bs", "n_factors", "valid_pct", "seed"}
DATA = {"data", "ratings", "user_col", "item_col", "rating_col"}

def fail(message):
    """Refuse bad input with one line, which main prints."""
    raise ValueError(message)

def number(kind, ok, what, many=False):
    """An argparse type: finite numbers of a kind (many: 100,50) that are ok, else 'give what'."""
    def parse(s):
        v = [kind(n) for n in s.split(",")] if many else [kind(s)]  # fails: argparse says so
        if not all(math.isfinite(n) and ok(n) for n in v):
            raise argparse.ArgumentTypeError(f"{s} is out of range: give {what}")
        return tuple(v) if many else v[0]
    parse.__name__ = kind.__name__
    return parse

def parse_args(argv=None):
    """The flags, checked before anything runs (README.md says what each does)."""
    ap = argparse.ArgumentParser(description="fastbook chapter 8 on MovieLens; README.md has more")
    ap.error = fail  # argparse's own complaints end in one line too
    count = number(int, lambda v: v >= 1, "1 or more")
    for k, kind in [("epochs", count), ("bs", count), ("n-factors", count), ("top", count),
                    ("lr", number(float, lambda v: v > 0, "more than 0")),
                    ("wd", number(float, lambda v: v >= 0, "0 or more")),
                    ("seed", number(int, lambda v: v >= 0, "0 or more")),
                    ("valid-pct", number(float, lambda v: 0 < v < 1, "between 0 and 1")),
                    ("layers", number(int, lambda v: v >= 1, "sizes like 100,50", many=True))]:
        ap.add_argument(f"--{k}", type=kind)
    ap.add_argument("--model", choices=["dot", "nn"])
    ap.add_argument("--loss", choices=["mse", "bce"])
    for k in ("device data ratings user-col item-col rating-col save load recommend similar "
              "plot").split():
        ap.add_argument(f"--{k}")
    ap.add_argument("--lr-find", action="store_true", help="suggest a learning rate, then stop")
    a = ap.parse_args(argv)
    given = {k for k, v in vars(a).items() if v not in (None, False)}
    unused = sorted(given & ({"epochs", "lr", "top", "save", "load", "recommend", "similar",
                              "plot"} if a.lr_find else TRAINING | DATA if a.load else set()))
    paths = [p for p in (a.save, a.plot) if p is not None and (
        os.path.isdir(p or ".") or not os.path.isdir(os.path.dirname(p) or "."))]  # "" is "."
    for bad, message in [
            (unused, f"--{'lr-find' if a.lr_find else 'load'} ignores --{', --'.join(unused)}"),
            (a.layers and a.model != "nn", "--layers are CollabNN's hidden layers: add --model nn"),
            (a.plot and not importlib.util.find_spec("matplotlib"), "--plot needs matplotlib"),
            (paths, f"cannot write {' or '.join(paths)}: name a file in a folder that exists")]:
        if bad:
            fail(message.replace("_", "-"))
    get_device(a.device or "auto")  # before the data is read
    return a

def as_id(s, like):
    """A command-line string as an id of like's type: '42' is user 42 where ids are ints."""
    digits = s.isascii() and s.removeprefix("-").isdigit()
    return int(s) if digits and isinstance(like, (int, np.integer)) else s

def run(a):
    """Read the data, refuse what would lose the run, then train: a Collab (None: --lr-find)."""
    data_fetch = importlib.import_module(f"{__package__ or ''}.data_fetch".lstrip("."))
    d = data_fetch.load(a.data, a.ratings, a.user_col, a.item_col, a.rating_col)
    inputs = {os.path.realpath(p) for p in d["files"]}  # the ratings, and the titles beside them
    for p in [p for p in (a.save, a.plot) if p and {os.path.realpath(p + e) for e in ("",
                                                     ".partial")} & inputs]:
        fail(f"{p} is this run's data: save to another file")
    if a.recommend is not None and not (d["user"] == as_id(a.recommend, d["user"][0])).any():
        fail(f"unknown user {a.recommend!r}")
    if a.similar is not None:
        find_item(np.unique(d["item"]).tolist(), d["titles"], as_id(a.similar, d["item"][0]))
    settings = {k: v for k, v in vars(a).items() if k in TRAINING | {"device"} and v is not None}
    c = train(d.pop("user"), d.pop("item"), d.pop("rating"), d["titles"], find_lr=a.lr_find,
              **settings)
    return print(f"suggested learning rate: {c:.1e}") if a.lr_find else c

def report(c, a, lambs="Silence of the Lambs, The (1991)"):
    """Save if asked; then what was learned, in titles: the tour, or what the flags ask for."""
    if a.save:
        c.save(a.save)
        print(f"saved the model to {a.save}")

    def show(heading, xs):
        print(heading + "".join(f"\n  {x}" for x in xs))
    n, tour, (low, high, chance) = a.top or 5, {a.recommend, a.similar, a.plot} == {None}, (
        "liked least often", "liked most often", " (chance they like it)") if c.loss == "bce" else (
        "disliked even by those whose taste they match", "liked even by those whose taste they "
        "don't", "")
    if tour and isinstance(c.model, DotProductBias):
        show(f"\nlowest movie bias ({low}):", [t for _, t in c.biases(n)[0]])
        show(f"highest movie bias ({high}):", [t for _, t in c.biases(n)[1]])
    if a.similar is not None or tour and lambs in map(c.title, range(len(c.items.ids))):
        item = lambs if a.similar is None else as_id(a.similar, c.items.ids[0])
        show(f"most like {c.title(find_item(c.items.ids, c.titles, item))}:",
             [t for _, t in c.similar(item, n)])
    if a.recommend is not None or tour:
        user = c.users.ids[0] if tour else as_id(a.recommend, c.users.ids[0])
        top = c.recommend(user, n)
        show(f"top {len(top)} for user {user}{chance}:" if top else f"user {user} rated every item",
             (f"{r:.2f}  {t}" for _, t, r in top))
    if a.plot:
        plot_pca(c, a.plot)
        print(f"saved the PCA plot to {a.plot}")

def main(argv=None):
    """Run the command line; bad input ends in one line, 'error: ...', and exit status 1."""
    try:
        a = parse_args(argv)
        if c := Collab.load(a.load, get_device(a.device or "auto")) if a.load else run(a):
            report(c, a)
    except BrokenPipeError:  # stdout closed early (| head): stop quietly, the exit's flush too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (ValueError, KeyError, OSError, RuntimeError) as e:  # RuntimeError: torch's own
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0

if __name__ == "__main__":
    sys.exit(main())
