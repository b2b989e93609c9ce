"""minicollab: fastbook chapter 8, collaborative filtering from scratch, in one file."""
# Read it top to bottom: the chapter's story in its order, then using the trained model, then the
# command line. Reading rating files and fetching MovieLens are data_fetch.py's work.
import argparse
import importlib.util
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- 1. The data and its ids -----------------------------------------------------------------

class IdMap:
    """Raw ids (ints or strings) <-> indices 0..n-1. Unlike fastai's, an unknown id is an error."""

    def __init__(self, ids, what):
        self.ids, self.what = list(ids), what
        self.o2i = {o: i for i, o in enumerate(self.ids)}  # fastai's name

    def encode(self, raw):
        """Raw ids -> indices; an unknown id raises KeyError naming it."""
        raw = np.atleast_1d(raw).tolist()
        if unknown := [o for o in raw if o not in self.o2i]:
            raise KeyError(f"unknown {self.what} {unknown[0]!r}")
        return np.array([self.o2i[o] for o in raw], dtype=np.int64)

def split(n, valid_pct=0.2, seed=0):
    """A random (train, valid) split of n row indices, like fastai's RandomSplitter."""
    if n < 2:
        raise ValueError(f"need at least two ratings to train and validate, got {n}")
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

def train_step(model, opt, x, y, lr, mom, wd):
    """One step on a batch: MSE loss, its gradients plus weight decay, Adam; returns the loss."""
    loss = F.mse_loss(model(x), y)
    loss.backward()
    add_weight_decay(opt.params, wd)
    opt.step(lr, mom)
    return loss.detach()

def evaluate(model, x, y, bs=65536):
    """Mean squared error of the model on (n, 2) indices x and (n,) ratings y, bs rows at a time."""
    with torch.no_grad():
        se = [((model.eval()(x[i:i + bs]) - y[i:i + bs]) ** 2).sum() for i in range(0, len(y), bs)]
    return float(sum(se)) / len(y)

def fit_one_cycle(model, train, valid, epochs=5, lr_max=1.5e-2, wd=1.5e-4, bs=2048, seed=0,
                  log=print, progress=None, eps=1e-5):
    """Train with Adam on the one-cycle schedule, printing fastai's epoch table; returns history."""
    if not (epochs >= 1 and bs >= 1 and 0 < lr_max < math.inf and 0 <= wd < math.inf):
        raise ValueError(f"need epochs, bs, lr_max > 0, wd >= 0: {epochs}, {bs}, {lr_max}, {wd}")
    (x, y), opt, gen = train, Adam(model.parameters(), eps=eps), torch.Generator().manual_seed(seed)
    steps, history = math.ceil(len(y) / bs), []
    log(f"{'epoch':<6} {'train_loss':<11} {'valid_loss':<11} time")
    for epoch in range(epochs):
        start, total, perm = time.perf_counter(), 0, torch.randperm(len(y), generator=gen)
        xs, ys = x[perm.to(y.device)], y[perm.to(y.device)]  # shuffled once: a batch is a slice
        for step in range(steps):
            lr, mom = one_cycle((epoch * steps + step) / (epochs * steps), lr_max)
            b = slice(step * bs, (step + 1) * bs)
            loss = train_step(model.train(), opt, xs[b], ys[b], lr, mom, wd)
            total += loss * len(ys[b])  # on the device: no sync per step
            if progress:
                progress(step + 1, steps, time.perf_counter() - start)
        train_loss, valid_loss = float(total) / len(y), evaluate(model, *valid)
        if not math.isfinite(train_loss + valid_loss):
            raise ValueError(f"the loss became NaN in epoch {epoch}: try a lower learning rate")
        history.append(dict(train_loss=train_loss, valid_loss=valid_loss))
        history[-1]["time"] = time.perf_counter() - start
        log(f"{epoch:<6} {train_loss:<11.6f} {valid_loss:<11.6f} {history[-1]['time']:.2f}")
    return history

def lr_find(model, train, start_lr=1e-7, end_lr=10, num_it=100, bs=2048, wd=0.0, seed=0, eps=1e-5):
    """fastai's lr finder: grow the lr till the loss explodes; returns (suggestion, lrs, losses)."""
    (x, y), opt, gen = train, Adam(model.parameters(), eps=eps), torch.Generator().manual_seed(seed)
    saved, lrs, losses, avg = {k: v.clone() for k, v in model.state_dict().items()}, [], [], 0.0
    for i in range(num_it):
        lrs.append(start_lr * (end_lr / start_lr) ** (i / (num_it - 1)))
        idx = torch.randint(len(y), (bs,), generator=gen).to(y.device)
        loss = train_step(model.train(), opt, x[idx], y[idx], lrs[-1], 0.9, wd)
        avg = 0.98 * avg + 0.02 * float(loss)
        losses.append(avg / (1 - 0.98 ** (i + 1)))  # fastai's smoothed, debiased loss
        if not math.isfinite(losses[-1]) or losses[-1] > 4 * min(losses):
            break
    model.load_state_dict(saved)  # as it was before the sweep
    return lrs[int(np.argmin(losses))] / 10, lrs, losses  # fastai's 'lr_min': a tenth of the best

# --- 5. Interpreting what was learned (c: a trained Collab, section 7, whose methods these are)

def biases(c, n=5):
    """The titles of lowest and of highest movie bias: disliked, or liked, whatever one's taste."""
    order = [c.title(i) for i in c.model.movie_bias.detach().cpu().argsort().tolist()]
    return order[:n], order[::-1][:n]

def similar(c, title, n=5, min_ratings=20):
    """The n titles whose factors point the same way as this one's, of those rated often enough."""
    names = [c.title(i) for i in range(len(c.items.ids))]
    if title not in names:
        raise ValueError(f"no title {title!r}; titles look like {names[0]!r}")
    factors, i = c.model.movie_factors.detach().cpu(), names.index(title)
    sims = F.cosine_similarity(factors, factors[i][None], dim=1)  # (n_movies,)
    counts = torch.bincount(c.rated % len(names), minlength=len(names))
    counts[i] = -1  # never itself
    enough = min(min_ratings, counts.sort().values[-min(n, len(names))])  # small data: n most rated
    sims[(counts < enough) | (counts < 0)] = -math.inf  # rarely rated: noise
    return [names[j] for j in sims.topk(min(n, int(sims.isfinite().sum()))).indices]

def pca(c, k=3, n_top=1000):
    """The factors of the n_top most-rated movies on k principal components, and those movies."""
    counts = torch.bincount(c.rated % len(c.items.ids), minlength=len(c.items.ids))
    top = counts.argsort(descending=True)[:n_top]
    factors = c.model.movie_factors.detach().cpu()[top]
    factors = factors - factors.mean(0)
    return factors @ torch.linalg.svd(factors, full_matrices=False)[2][:k].T, top.tolist()

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

# --- 7. Using the trained model: predict, recommend, fold in a new user, save and load -------

class Collab:
    """A trained model with what it takes to use it: the id maps, the titles, and who rated what."""
    biases, similar, pca = biases, similar, pca  # section 5

    def __init__(self, model, users, items, titles, rated):
        self.model, self.users, self.items, self.titles = model, users, items, titles
        self.rated = rated  # sorted tensor of user * n_items + item, for every rating in the data

    def title(self, i):
        """The title of item index i, or its raw id where there is none."""
        return self.titles.get(self.items.ids[i], str(self.items.ids[i]))

    def predict(self, users, items):
        """Predicted ratings of raw user and item ids (broadcast); an unknown id is a KeyError."""
        x = np.stack(np.broadcast_arrays(self.users.encode(users), self.items.encode(items)), 1)
        with torch.no_grad():  # x: (n, 2)
            x = torch.as_tensor(x).to(self.model.user_factors.device)
            return self.model.eval()(x).cpu().numpy()

    def recommend(self, user, n=5):
        """The n items this user has not rated, best predicted first: [(title, rating)]."""
        scores = torch.as_tensor(self.predict(user, self.items.ids))  # (n_items,)
        u = self.users.encode(user)[0]
        lo, hi = torch.searchsorted(self.rated, torch.tensor([u, u + 1]) * len(scores))
        scores[self.rated[lo:hi] % len(scores)] = -math.inf  # never what they rated, train or valid
        top = scores.topk(min(max(n, 0), int(scores.isfinite().sum())))
        return [(self.title(i), float(r)) for r, i in zip(top.values, top.indices.tolist())]

    def fold_in(self, user, items, ratings, steps=100, lr=0.05, wd=1.0):
        """Add a user unseen in training from a few (item, rating) pairs, fitting only their row."""
        user, like = np.asarray(user).item(), self.users.ids[0]  # numpy's and torch's as Python's
        if isinstance(like, int) and isinstance(user, float) and user.is_integer():
            user = int(user)  # pandas hands over 3000.0 for user 3000
        if user in self.users.o2i:
            raise ValueError(f"user {user!r} is in the model already")
        if type(user) is not type(like):
            raise ValueError(f"user {user!r} is not an id like the model's, such as {like!r}")
        y = torch.as_tensor(np.atleast_1d(np.asarray(ratings, dtype=np.float32)))
        i = torch.as_tensor(self.items.encode(items))
        if len(i) != len(y) or not len(y) or not y.isfinite().all():
            raise ValueError(f"fold_in needs one finite rating per item; got {items} and {ratings}")
        m, params = self.model.eval(), {k: p.detach() for k, p in self.model.named_parameters()}
        rows = {k: nn.Parameter(torch.zeros_like(params[k][:1])) for k in params if "user" in k}
        scale = ((m.y_range[1] - m.y_range[0]) / 5.5) ** 2 or 1.0  # the ratings' units, as in train
        opt = Adam(rows.values(), eps=1e-5 * scale)
        x = torch.stack([0 * i, i], 1).to(rows["user_factors"].device)

        def one_user(x):  # the model with the new user as its only user, all else as trained
            return torch.func.functional_call(m, params | rows, x)
        for _ in range(steps):
            train_step(one_user, opt, x, y.to(x.device), lr, 0.9, wd * scale)
        for k, row in rows.items():
            setattr(m, k, nn.Parameter(torch.cat([params[k], row.detach()])))
        self.rated = torch.cat([self.rated, len(self.users.ids) * len(self.items.ids) + i.unique()])
        self.users = IdMap(self.users.ids + [user], "user")

    def save(self, path):
        """This Collab, model and all, in one file: written whole or not at all."""
        try:
            torch.save(self, f"{path}.partial")
            os.replace(f"{path}.partial", path)
        finally:
            if os.path.exists(f"{path}.partial"):
                os.remove(f"{path}.partial")

    @staticmethod
    def load(path, device="cpu"):
        """Read a file written by save(); weights_only lets out only our classes and tensors."""
        try:
            ours = [Collab, IdMap, DotProductBias, CollabNN, nn.Sequential, nn.Linear, nn.ReLU,
                    nn.Dropout]
            with torch.serialization.safe_globals(ours):
                c = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"no model file at {path}; train one with --save {path}") from None
        except Exception as e:  # truncated, edited, or not ours at all
            c = e
        if type(c) is not Collab or not isinstance(c.model, (DotProductBias, CollabNN)):
            raise ValueError(f"{path} is no minicollab model ({type(c).__name__}); save one again")
        c.model.to(device)
        return c

# --- 8. The command line ---------------------------------------------------------------------
# bs and wd follow the data: an epoch is 64 to ~320 steps (each step's Adam costs every parameter),
# and wd = lam / n_train * (spread / 4)**2 puts the same L2 on a row at any size and rating scale,
# where Adam's eps scales by (spread / 4)**2 too, as the gradients do.
DEFAULTS = dict(dot=dict(epochs=5, lr=0.015, lam=16.0, bs=1024),
                nn=dict(epochs=6, lr=0.04, lam=8.0, bs=1024, layers=(16,)))
RANGES = dict(epochs=(int, 1, 10_000), lr=(float, 1e-9, 10.0), wd=(float, 0.0, 1e12),
              bs=(int, 1, 2 ** 31), factors=(int, 1, 10_000), seed=(int, 0, 2 ** 63 - 1),
              valid_pct=(float, 1e-9, 0.999999999), top=(int, 1, 100_000))
TRAINING = ["model", "layers", "data", "ratings", "user_col", "item_col", "rating_col"]

def fail(message):
    """Refuse bad input with one line, which main prints."""
    raise ValueError(message)

def sizes(s):
    """--layers 100,50 -> (100, 50)."""
    return tuple(int(n) for n in s.split(","))

def parse_args(argv=None):
    """The flags, checked before anything runs (README.md says what each does)."""
    ap = argparse.ArgumentParser(description="fastbook chapter 8 on MovieLens; README.md has more")
    ap.error = fail  # argparse's own complaints end in one line too
    for k, (kind, lo, hi) in RANGES.items():
        ap.add_argument(f"--{k}".replace("_", "-"), type=kind, help=f"{lo} to {hi}")
    ap.add_argument("--model", choices=["dot", "nn"], help="DotProductBias (default) or CollabNN")
    ap.add_argument("--layers", type=sizes, help="CollabNN's hidden sizes, e.g. 100,50")
    ap.add_argument("--device", default="auto", help="auto (CUDA if there is a GPU), cpu or cuda")
    ap.add_argument("--data", help="a MovieLens by name: ml-100k (default), ml-1m, ... ml-32m")
    ap.add_argument("--ratings", metavar="FILE", help="a ratings file of your own (CSV, TSV, ...)")
    for k in ("--user-col", "--item-col", "--rating-col", "--save", "--load", "--recommend"):
        ap.add_argument(k)
    ap.add_argument("--similar", metavar="TITLE")
    ap.add_argument("--plot", metavar="FILE", help="the book's PCA scatter (.png, .pdf or .svg)")
    ap.add_argument("--lr-find", action="store_true", help="suggest a learning rate, then stop")
    a = ap.parse_args(argv)
    for k, (_, lo, hi) in RANGES.items():
        if getattr(a, k) is not None and not lo <= getattr(a, k) <= hi:  # NaN and inf never are
            fail(f"--{k} {getattr(a, k)} is out of range: give {lo} to {hi}".replace("_", "-"))
    trains = [k for k in [*RANGES][:-1] + TRAINING if getattr(a, k) is not None]
    trains = [f"--{k}".replace("_", "-") for k in trains]
    unwritable = [p for p in [a.save, a.plot] if p and not writable(p)]
    asks = a.save or a.load or a.recommend or a.similar or a.plot or a.top or a.epochs or a.lr
    mpl = not a.plot or importlib.util.find_spec("matplotlib")
    empty = [k for k, v in vars(a).items() if isinstance(v, str) and not v.strip()]
    empty = [f"--{k}".replace("_", "-") for k in empty]
    for bad, message in [
        (empty, f"{', '.join(empty)}: give a value, not an empty string"),
        (a.load and trains, f"--load uses a saved model as it is: drop {', '.join(trains)}"),
        (a.layers and a.model != "nn", "--layers are CollabNN's hidden layers: add --model nn"),
        (a.factors and a.model == "nn", "--factors is DotProductBias's: drop it"),
        (a.layers and not all(1 <= n <= 10_000 for n in a.layers), "--layers: sizes 1 to 10000"),
        (a.lr_find and asks, "--lr-find only suggests a learning rate: give it alone"),
        (unwritable, f"cannot write {' or '.join(unwritable)}: name a file you may write"),
        (a.save and a.plot and os.path.realpath(a.save) == os.path.realpath(a.plot),
         f"--save and --plot both name {a.save}: give two files"),
        (a.plot and a.plot[-4:].lower() not in (".png", ".pdf", ".svg"),
         f"--plot {a.plot}: give a file name ending in .png, .pdf or .svg"),
        (a.plot and (a.factors or 3) < 3, "--plot shows components 0 and 2: needs --factors 3+"),
        (not mpl, "--plot needs matplotlib: pip install matplotlib")]:
        if bad:
            fail(message)
    get_device(a.device)  # refused here, before the data is read
    return a

def writable(path):
    """Whether a file can be written at path: its folder is tried with a temporary file."""
    try:
        tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(path))).close()
    except OSError:
        return False
    exists_ok = not os.path.exists(path) or os.access(path, os.W_OK)  # savefig writes it in place
    return exists_ok and not os.path.isdir(path) and not os.path.isdir(f"{path}.partial")

def get_device(name="auto"):
    """'auto' is CUDA when there is a GPU, else the CPU; a device that cannot be used is refused."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    if name != "cpu" and (name.partition(":")[0] != "cuda" or not torch.cuda.is_available()):
        raise ValueError(f"--device {name}: not usable here; give auto, cpu, or cuda with a GPU")
    return torch.device(name)

def show_progress(step, steps, seconds):
    """Steps, rate and time left of an epoch over 2 s, on a terminal only: never into a log."""
    if seconds > 2 and sys.stderr.isatty() and (step % max(1, steps // 100) == 0 or step == steps):
        left = (steps - step) * seconds / step
        line = f"\r  {step}/{steps} steps, {step / seconds:.1f}/s, {left:.0f} s left"
        line = f"{line:<60}" if step < steps else f"\r{'':<60}\r"  # the last one clears the line
        print(line, end="", file=sys.stderr, flush=True)

def as_id(s, ids):
    """A command-line string as the type of these ids: '42' is user 42 where the ids are ints."""
    digits = s.isascii() and s.removeprefix("-").isdigit()
    return int(s) if digits and isinstance(ids.ids[0], int) else s

def train(a):
    """Read the data, split it, train the model the flags ask for; returns a Collab."""
    import data_fetch
    d = data_fetch.load(a.data, a.ratings, a.user_col, a.item_col, a.rating_col)
    (users, u), (items, i) = [np.unique(d.pop(k), return_inverse=True) for k in ("user", "item")]
    users, items = IdMap(users.tolist(), "user"), IdMap(items.tolist(), "item")
    if a.recommend is not None:  # an unknown user or title: refused before training
        users.encode(as_id(a.recommend, users))
    if a.similar is not None and a.similar not in {d["titles"].get(o, str(o)) for o in items.ids}:
        fail(f"no title {a.similar!r}; titles look like {d['titles'].get(items.ids[0])!r}")
    if a.plot and len(items.ids) < 3:
        fail(f"--plot shows principal components 0 and 2: needs 3+ items, not {len(items.ids)}")
    rated = torch.as_tensor(np.sort(u * len(items.ids) + i))
    if repeats := int((rated[1:] == rated[:-1]).sum()):  # both copies may land in both splits
        print(f"warning: ratings that repeat a (user, item) pair: {repeats:,}", file=sys.stderr)
    x, y = torch.as_tensor(np.stack([u, i], 1)), torch.as_tensor(d.pop("rating"))
    del u, i
    t, v = split(len(y), a.valid_pct or 0.2, a.seed or 0)
    hp, device = DEFAULTS[a.model or "dot"], get_device(a.device)
    bs = a.bs or max(1, round(max(len(t) / 320, min(hp["bs"], len(t) / 64))))
    lo, hi = float(y.min()), float(y.max())
    y_range = (lo - (hi - lo) / 4, hi + (hi - lo) / 8)  # the book's (0, 5.5) for 1..5, on any scale
    scale = ((hi - lo) / 4) ** 2 or 1.0  # gradients grow with it: wd and Adam's eps follow
    wd = hp["lam"] / len(t) * scale if a.wd is None else a.wd
    if lo == hi:
        print(f"warning: every rating is {lo:g}: there is nothing to learn", file=sys.stderr)
    torch.manual_seed(a.seed or 0)
    if a.model == "nn":
        embs = get_emb_sz(len(users.ids), len(items.ids))
        model = CollabNN(*embs, a.layers or hp["layers"], y_range=y_range)
    else:
        model = DotProductBias(len(users.ids), len(items.ids), a.factors or 50, y_range)
    print(f"{len(y):,} ratings, {len(users.ids):,} users, {len(items.ids):,} items")
    train, valid = (x[t].to(device), y[t].to(device)), (x[v].to(device), y[v].to(device))
    model = model.to(device)
    del x, y, t, v
    if a.lr_find:
        suggestion = lr_find(model, train, bs=bs, wd=wd, eps=1e-5 * scale)[0]
        return print(f"suggested learning rate: {suggestion:.1e}")
    start, epochs = time.perf_counter(), a.epochs or hp["epochs"]
    fit_one_cycle(model, train, valid, epochs, a.lr or hp["lr"], wd, bs, a.seed or 0,
                  progress=show_progress, eps=1e-5 * scale)
    seconds = time.perf_counter() - start
    print(f"fit: {epochs} epoch{'s' * (epochs > 1)} in {seconds:.2f} s on {device}")
    return Collab(model, users, items, d["titles"], rated)

def report(c, a, lambs="Silence of the Lambs, The (1991)"):
    """What the model learned, in titles: the chapter's tour, or only what the flags ask for."""
    def show(heading, xs):
        print(heading + "".join(f"\n  {x}" for x in xs))
    tour = a.recommend is None and a.similar is None and not a.plot
    if tour and isinstance(c.model, DotProductBias):
        low, high = c.biases(a.top or 5)
        show("\nlowest movie bias (disliked even by those whose taste they match):", low)
        show("highest movie bias (liked even by those whose taste they don't):", high)
    if a.similar is not None or tour and lambs in c.titles.values():
        show(f"most like {a.similar or lambs}:", c.similar(a.similar or lambs, a.top or 5))
    if a.recommend is not None or tour:
        user = c.users.ids[0] if tour else as_id(a.recommend, c.users)
        top = c.recommend(user, a.top or 5)
        heading = f"top {len(top)} for user {user}:" if top else f"user {user} rated every item"
        show(heading, (f"{r:.2f}  {t}" for t, r in top))
    if a.plot:
        plot_pca(c, a.plot)
        print(f"saved the PCA plot to {a.plot}")

def plot_pca(c, path, n=50):
    """The book's scatter of the n most-rated titles on principal components 0 and 2."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    comps, items = c.pca(3)
    if comps.shape[1] < 3:
        raise ValueError("--plot shows principal components 0 and 2: needs 3+ factors and items")
    fig, ax = plt.subplots(figsize=(12, 12))
    ax.scatter(comps[:n, 0], comps[:n, 2])
    for (x, _, y), i in zip(comps[:n].tolist(), items[:n]):
        ax.text(x, y, c.title(i), fontsize=9)
    ax.set(xlabel="principal component 0", ylabel="principal component 2")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)

def main(argv=None):
    """Run the command line; bad input ends in one line, 'error: ...', and exit status 1."""
    try:
        a = parse_args(argv)
        c = Collab.load(a.load, get_device(a.device)) if a.load else train(a)
        if c is not None and a.save:
            c.save(a.save)
            print(f"saved the model to {a.save}")
        if c is not None:
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

if __name__ == "__main__":  # main as imported: saved files hold minicollab.Collab, not __main__'s
    from minicollab import main
    sys.exit(main())
