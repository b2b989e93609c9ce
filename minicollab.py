"""minicollab: fastbook chapter 8, collaborative filtering from scratch, in one readable file.

Read it top to bottom: the data and its ids, tensors and batches, the models, weight decay,
the one-cycle loop, using what was learned, then the command line. Only numpy and torch.
"""
import argparse
import csv
import difflib
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class CollabError(Exception):
    """A problem with the user's input or settings; its message says what to do."""


# -----------------------------------------------------------------------------
# 1. The data: raw ids (ints, strings, titles) to contiguous indices and back

class IdMap:
    """Raw ids <-> indices 0..n-1, vectorised. Unlike fastai, no '#na#' slot at index 0."""

    def __init__(self, raw, unique=False):
        self.ids = np.asarray(raw) if unique else np.unique(np.asarray(raw))  # index -> raw id
        self.order = np.argsort(self.ids, kind="stable")  # sorts self.ids, for the binary search

    def __len__(self):
        return len(self.ids)

    def encode(self, raw):
        """Raw ids -> indices; an unknown id raises KeyError naming it (never a silent default)."""
        raw = np.asarray(raw)
        if raw.size and (raw.dtype.kind in "UO") != (self.ids.dtype.kind in "UO"):
            kind = "strings" if self.ids.dtype.kind in "UO" else "numbers"
            raise KeyError(f"id {raw.flat[0].item()!r} is a {type(raw.flat[0].item()).__name__}, but these ids are {kind}")
        pos = np.searchsorted(self.ids, raw, sorter=self.order).clip(0, len(self.ids) - 1)
        idx = self.order[pos]
        bad = self.ids[idx] != raw
        if np.any(bad):
            raise KeyError(f"unknown id {raw[bad].flat[0].item()!r}")
        return idx

    def decode(self, idx):
        """Indices -> raw ids."""
        return self.ids[np.asarray(idx)]

    def add(self, raw):
        """Give a new raw id the next index."""
        self.ids = np.append(self.ids, raw)
        self.order = np.argsort(self.ids, kind="stable")


def read_ratings(path, user_col=None, item_col=None, rating_col=None):
    """A CSV or TSV file with a header -> (users, items, ratings) numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise CollabError(f"no ratings file at {path}; give the path of a CSV/TSV file with a header")
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = f.readline()
        delim = "\t" if "\t" in header else ","
        header = next(csv.reader([header], delimiter=delim))
        rows = list(csv.reader(f, delimiter=delim))
    names = [c or h for c, h in zip((user_col, item_col, rating_col), header + ["", "", ""])]
    missing = [c for c in names if c not in header]
    if missing:
        raise CollabError(f"{path}: no column {missing[0]!r}; columns found: {', '.join(header)}"
                          " (pick user, item and rating with --user-col, --item-col, --rating-col)")
    cols = [header.index(c) for c in names]
    if any(len(r) <= max(cols) for r in rows):
        line = next(n for n, r in enumerate(rows, 2) if len(r) <= max(cols))
        raise CollabError(f"{path}, line {line}: too few fields; every row needs {', '.join(names)}")
    users, items, ratings = (np.array([r[c] for r in rows]) for c in cols)
    try:
        ratings = ratings.astype(np.float32)
    except ValueError:
        line = next(n for n, v in enumerate(rows, 2) if not _is_number(v[cols[2]]))
        raise CollabError(f"{path}, line {line}: rating {rows[line - 2][cols[2]]!r} is not a number") from None
    if np.isnan(ratings).any() or np.isinf(ratings).any():
        line = int(np.flatnonzero(~np.isfinite(ratings))[0]) + 2
        raise CollabError(f"{path}, line {line}: rating is {rows[line - 2][cols[2]]}; remove or fill that row")
    return _as_numbers(users), _as_numbers(items), ratings


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def _as_numbers(a):
    """Ids that are all integers become int64, so 10 sorts after 9; others stay strings."""
    try:
        return a.astype(np.int64)
    except ValueError:
        return a


# -----------------------------------------------------------------------------
# 2. Tensors on the device, a random split, and batches

def get_device(name="auto"):
    """'auto' is CUDA when there is a GPU, else CPU; asking for CUDA where there is none is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CollabError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CollabError(f"--device {name!r} is not a device; use auto, cpu or cuda") from None


def split(n, valid_pct=0.2, seed=0):
    """A random (train_idx, valid_idx) split of n rows, driven by one seed, like fastai's RandomSplitter."""
    if n < 2:
        raise CollabError(f"need at least two ratings to train and validate, got {n}")
    if not 0 < valid_pct < 1:
        raise CollabError(f"--valid-pct must be between 0 and 1, got {valid_pct}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_valid = min(max(1, round(n * valid_pct)), n - 1)
    return perm[n_valid:], perm[:n_valid]


# -----------------------------------------------------------------------------
# 3. The models: sigmoid_range, create_params, DotProductBias, CollabNN

def sigmoid_range(x, lo, hi):
    """Squash x into (lo, hi)."""
    return torch.sigmoid(x) * (hi - lo) + lo


def create_params(size):
    """A tensor of parameters drawn from N(0, 0.01), the book's replacement for nn.Embedding."""
    return nn.Parameter(torch.zeros(*size).normal_(0, 0.01))


class DotProductBias(nn.Module):
    """Rating = sigmoid_range(user . item + user bias + item bias)."""

    def __init__(self, n_users, n_items, n_factors=50, y_range=(0, 5.5)):
        super().__init__()
        self.user_factors = create_params([n_users, n_factors])
        self.user_bias = create_params([n_users])
        self.item_factors = create_params([n_items, n_factors])
        self.item_bias = create_params([n_items])
        self.y_range = y_range

    def forward(self, users, items):  # (bs,), (bs,) -> (bs,)
        # Looking up rows is an embedding: the same as one-hot rows times the matrix. index_select(0, users)
        # is the book's user_factors[users], in the form whose gradient is ~4x cheaper on a CPU.
        uf, itf = self.user_factors.index_select(0, users), self.item_factors.index_select(0, items)  # (bs, n_factors)
        res = (uf * itf).sum(dim=1) + self.user_bias.index_select(0, users) + self.item_bias.index_select(0, items)
        return sigmoid_range(res, *self.y_range)


def emb_sz(n):
    """fastai's rule of thumb for the width of an embedding of n categories."""
    return min(600, round(1.6 * n ** 0.56))


class CollabNN(nn.Module):
    """Concatenated user and item embeddings through a small MLP, like fastai's EmbeddingNet."""

    def __init__(self, n_users, n_items, layers=(100, 50), embed_p=0.0, p=0.0, y_range=(0, 5.5)):
        super().__init__()
        self.user_factors = create_params([n_users, emb_sz(n_users)])
        self.item_factors = create_params([n_items, emb_sz(n_items)])
        sizes = [emb_sz(n_users) + emb_sz(n_items), *layers]
        mods = [nn.Dropout(embed_p)]
        for a, b in zip(sizes[:-1], sizes[1:]):
            mods += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(p)]
        self.layers = nn.Sequential(*mods, nn.Linear(sizes[-1], 1))
        self.y_range = y_range

    def forward(self, users, items):  # (bs,), (bs,) -> (bs,)
        x = torch.cat([self.user_factors[users], self.item_factors[items]], dim=1)  # (bs, n_u + n_i)
        return sigmoid_range(self.layers(x)[:, 0], *self.y_range)  # [:, 0]: (bs, 1) -> (bs,), never broadcast


def make_model(kind, n_users, n_items, n_factors=50, layers=(100, 50), y_range=(0, 5.5)):
    """DotProductBias for 'dot', CollabNN for 'nn'."""
    if kind == "dot":
        return DotProductBias(n_users, n_items, n_factors, y_range)
    return CollabNN(n_users, n_items, layers, y_range=y_range)


# -----------------------------------------------------------------------------
# 4. Weight decay, added to the gradients by hand

def add_weight_decay(params, wd):
    """Add wd * p to each gradient: the gradient of the L2 penalty wd/2 * sum(p**2)."""
    # fastai's wd=0.1 is *decoupled* (AdamW shrinks p by lr*wd after the step). Added to the gradient
    # instead, the decay is divided by Adam's sqrt(v) like the rest, so a far smaller wd does the same job.
    with torch.no_grad():
        for p in params:
            p.grad.add_(p, alpha=wd)


# -----------------------------------------------------------------------------
# 5. The one-cycle training loop, written out

class Adam:
    """Adam written out, with fastai's defaults; its beta1 is the momentum that one-cycle schedules."""

    def __init__(self, params, sqr_mom=0.99, eps=1e-5):
        self.params, self.sqr_mom, self.eps, self.t = list(params), sqr_mom, eps, 0
        self.avg = [torch.zeros_like(p) for p in self.params]  # running mean of gradients
        self.sqr = [torch.zeros_like(p) for p in self.params]  # running mean of squared gradients

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
        p = pct / pct_start
        return cos(lr_max / div, lr_max, p), cos(moms[0], moms[1], p)
    p = (pct - pct_start) / (1 - pct_start)  # anneal to lr_max/1e5 while momentum climbs back
    return cos(lr_max, lr_max / div_final, p), cos(moms[1], moms[2], p)


def evaluate(model, data, bs=65536):
    """Mean squared error of the model on (users, items, ratings) tensors."""
    model.eval()
    users, items, ratings = data
    with torch.no_grad():
        se = sum(((model(users[i:i + bs], items[i:i + bs]) - ratings[i:i + bs]) ** 2).sum()
                 for i in range(0, len(ratings), bs))
    return float(se) / len(ratings)


def fit_one_cycle(model, train, valid, epochs=5, lr_max=1e-2, wd=1e-4, bs=2048, seed=0, log=print):
    """Train with Adam on fastai's one-cycle schedule; print fastai's epoch table; return the history."""
    if epochs < 1 or bs < 1 or not lr_max > 0 or not wd >= 0:
        raise CollabError(f"epochs, bs and lr must be positive and wd not negative "
                          f"(got epochs={epochs}, bs={bs}, lr={lr_max}, wd={wd})")
    users, items, ratings = train
    params = list(model.parameters())
    opt = Adam(params)
    gen = torch.Generator().manual_seed(seed)
    n, steps = len(ratings), math.ceil(len(ratings) / bs)
    history = []
    log(f"{'epoch':<7}{'train_loss':<12}{'valid_loss':<12}time")
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen).to(ratings.device)
        # The data already sits on the device: shuffle it once, then a batch is a slice, a view (no DataLoader).
        u, i, r = users[perm], items[perm], ratings[perm]
        total = torch.zeros((), device=ratings.device)
        for step in range(steps):
            lr, mom = one_cycle((epoch * steps + step) / (epochs * steps), lr_max)
            batch = slice(step * bs, (step + 1) * bs)
            loss = F.mse_loss(model(u[batch], i[batch]), r[batch])
            loss.backward()
            add_weight_decay(params, wd)
            opt.step(lr, mom)
            total += loss.detach() * len(r[batch])  # stays on the device: one sync per epoch, not per step
        train_loss, valid_loss = total.item() / n, evaluate(model, valid)
        if not (math.isfinite(train_loss) and math.isfinite(valid_loss)):
            raise CollabError(f"the loss became NaN in epoch {epoch}; try a lower learning rate than --lr {lr_max:g}"
                              " (--lr-find suggests one)")
        history.append(dict(epoch=epoch, train_loss=train_loss, valid_loss=valid_loss,
                            time=time.perf_counter() - start))
        log(f"{epoch:<7}{train_loss:<12.6f}{valid_loss:<12.6f}{history[-1]['time']:.2f}")
    return history


def lr_find(model, train, start_lr=1e-7, end_lr=10, num_it=100, bs=2048, wd=0.0, seed=0):
    """fastai's learning-rate finder: grow the lr exponentially, stop when the loss explodes.

    Returns (suggested lr, lrs, smoothed losses); the model's weights are put back afterwards."""
    users, items, ratings = train
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    opt = Adam(params)
    gen = torch.Generator().manual_seed(seed)
    lrs, losses, avg = [], [], 0.0
    model.train()
    for i in range(num_it):
        lr = start_lr * (end_lr / start_lr) ** (i / (num_it - 1))
        idx = torch.randint(len(ratings), (bs,), generator=gen).to(ratings.device)
        loss = F.mse_loss(model(users[idx], items[idx]), ratings[idx])
        loss.backward()
        add_weight_decay(params, wd)
        opt.step(lr, 0.9)
        avg = 0.98 * avg + 0.02 * loss.item()  # fastai's exponentially smoothed, debiased loss
        lrs.append(lr)
        losses.append(avg / (1 - 0.98 ** (i + 1)))
        if not math.isfinite(losses[-1]) or losses[-1] > 4 * min(losses):
            break
    model.load_state_dict(saved)
    return lrs[int(np.argmin(losses))] / 10, lrs, losses  # fastai's 'lr_min': a tenth of the best


# -----------------------------------------------------------------------------
# 6. Using and interpreting the trained model

class Collab:
    """A trained model with what it takes to use it: the id maps, the titles, and who rated what."""

    def __init__(self, model, config, users, items, titles, rated_users, rated_items):
        self.model, self.config, self.users, self.items, self.titles = model, config, users, items, titles
        order = np.argsort(rated_users, kind="stable")  # CSR: user u rated self.rated[ptr[u]:ptr[u + 1]]
        self.rated = np.asarray(rated_items, dtype=np.int64)[order]
        self.ptr = np.searchsorted(np.asarray(rated_users)[order], np.arange(len(users) + 1))

    def title(self, i):
        """The title of item index i, or its raw id when there are no titles."""
        raw = self.items.decode(i).item()
        return self.titles.get(raw, str(raw))

    def _scores(self, u, i):
        self.model.eval()
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            return self.model(torch.as_tensor(u).to(dev), torch.as_tensor(i).to(dev)).cpu()

    def predict(self, users, items):
        """Predicted ratings for raw user and item ids; an unknown id raises KeyError naming it."""
        return self._scores(self.users.encode(np.atleast_1d(users)), self.items.encode(np.atleast_1d(items))).numpy()

    def recommend(self, user, n=5):
        """The n items a raw user id has not rated with the highest predicted rating: [(title, rating)]."""
        u = int(self.users.encode([user])[0])
        items = np.arange(len(self.items))
        # Every item at once: for DotProductBias this is one product item_factors @ user_factors[u].
        scores = self._scores(np.full_like(items, u), items)  # (n_items,)
        scores[self.rated[self.ptr[u]:self.ptr[u + 1]]] = -math.inf  # not what they already rated
        top = scores.topk(min(n, int(torch.isfinite(scores).sum())))
        return [(self.title(i), float(r)) for r, i in zip(top.values, top.indices)]

    def fold_in(self, user, items, ratings, steps=100, lr=0.05, wd=1.0):
        """Add a user who was not in training from a few (item, rating) pairs: fit only their own parameters."""
        if user in set(self.users.ids.tolist()):
            raise CollabError(f"user {user!r} is already in the model")
        if (np.asarray(user).dtype.kind in "UO") != (self.users.ids.dtype.kind in "UO"):
            raise CollabError(f"user {user!r} is a {type(user).__name__}, unlike the ids in the model")
        if len(items) != len(ratings) or len(items) == 0:
            raise CollabError(f"fold_in needs one rating per item, got {len(items)} items and {len(ratings)} ratings")
        i = torch.as_tensor(self.items.encode(items))
        r = torch.as_tensor(np.asarray(ratings, dtype=np.float32))
        m = self.model.eval()
        params, u = add_user_rows(m, 1), torch.full_like(i, len(self.users))
        frozen = [p for p in m.parameters() if all(p is not q for q in params)]
        for p in frozen:  # the items (and the MLP) stay as trained
            p.requires_grad_(False)
        dev = params[0].device
        i, r, u, opt = i.to(dev), r.to(dev), u.to(dev), Adam(params)
        try:
            for _ in range(steps):
                F.mse_loss(m(u, i), r).backward()
                add_weight_decay(params, wd)
                for p in params:
                    p.grad[:-1] = 0  # only the new row learns; Adam leaves the others exactly as they were
                opt.step(lr, 0.9)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        self.users.add(user)
        self.config["new_users"] = self.config.get("new_users", 0) + 1
        self.rated = np.append(self.rated, i.cpu().numpy())
        self.ptr = np.append(self.ptr, len(self.rated))

    def biases(self, n=5):
        """(lowest, highest) item biases as titles: liked or disliked whatever the user's taste."""
        order = self.model.item_bias.detach().cpu().argsort().numpy()
        return [self.title(i) for i in order[:n]], [self.title(i) for i in order[::-1][:n]]

    def similar(self, title, n=5, min_ratings=0):
        """The n items whose factors point the same way as this title's (cosine similarity)."""
        names = [self.title(i) for i in range(len(self.items))]
        if title not in names:
            close = [t for t in names if t.lower().startswith(title.lower())][:3] or difflib.get_close_matches(title, names, 3)
            raise CollabError(f"no title {title!r}" + (f"; did you mean {' or '.join(map(repr, close))}?" if close else ""))
        factors = self.model.item_factors.detach().cpu()
        idx = names.index(title)
        sims = F.cosine_similarity(factors, factors[idx][None], dim=1)  # (n_items,)
        sims[idx] = -math.inf  # not itself
        sims[np.bincount(self.rated, minlength=len(names)) < min_ratings] = -math.inf  # rarely rated: noise
        return [names[i] for i in sims.topk(min(n, int(torch.isfinite(sims).sum()))).indices]

    def pca(self, n_components=3, n_top=1000):
        """Principal components of the factors of the n_top most-rated items: (components, item indices)."""
        counts = np.bincount(self.rated, minlength=len(self.items))
        top = np.argsort(-counts, kind="stable")[:n_top]
        factors = self.model.item_factors.detach().cpu()[top]
        factors = factors - factors.mean(0)
        _, _, v = torch.linalg.svd(factors, full_matrices=False)
        return factors @ v[:n_components].T, top  # (n_top, n_components)

    def save(self, path):
        """One file: weights, config, id maps, titles and who rated what; written whole or not at all."""
        state = {k: v.cpu() for k, v in self.model.state_dict().items()}
        ckpt = dict(format="minicollab-1", config=self.config, state=state, digest=_digest(state),
                    users=self.users.ids.tolist(), items=self.items.ids.tolist(),
                    titles=[[k, v] for k, v in self.titles.items()],
                    rated=torch.as_tensor(self.rated), ptr=torch.as_tensor(self.ptr))
        tmp = Path(f"{path}.partial")
        try:
            torch.save(ckpt, tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:  # torch reports a missing folder as a RuntimeError
            tmp.unlink(missing_ok=True)
            raise CollabError(f"cannot save the model to {path}: {e}") from None

    @classmethod
    def load(cls, path, device="cpu"):
        """Read a file written by save(); weights_only=True, so no pickled code can run."""
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            if ck["format"] != "minicollab-1" or ck["digest"] != _digest(ck["state"]):
                raise ValueError("not our format, or the weights were edited")
            model = make_model(**ck["config"]["model"])
            add_user_rows(model, ck["config"].get("new_users", 0))
            model.to(device).load_state_dict(ck["state"])
        except FileNotFoundError:
            raise CollabError(f"no model file at {path}; train and save one with --save {path}") from None
        except Exception as e:  # truncated, tampered, or not ours at all
            raise CollabError(f"{path} is not a valid minicollab model file ({type(e).__name__}); save it again") from None
        ptr = ck["ptr"].numpy()
        return cls(model, ck["config"], IdMap(ck["users"], unique=True), IdMap(ck["items"], unique=True),
                   dict(ck["titles"]), np.repeat(np.arange(len(ptr) - 1), np.diff(ptr)), ck["rated"].numpy())


def add_user_rows(model, n):
    """Append n rows of zeros to the user's parameters (a new user is then the items' biases alone)."""
    params = []
    for k in ("user_factors", "user_bias"):
        if hasattr(model, k):
            old = getattr(model, k).detach()
            setattr(model, k, nn.Parameter(torch.cat([old, old.new_zeros(n, *old.shape[1:])])))
            params.append(getattr(model, k))
    return params


def _digest(state):
    """SHA-256 of the weights, so a file edited by hand is caught on load."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# -----------------------------------------------------------------------------
# 7. The command line

DEFAULTS = dict(dot=dict(lr=1.5e-2, wd=1.5e-4, bs=2048, epochs=5), nn=dict(lr=5e-3, wd=1e-4, bs=2048, epochs=5))


def parse_args(argv=None):
    """The command line's flags; per-model defaults fill whatever is not given."""
    ap = argparse.ArgumentParser(description="Collaborative filtering on MovieLens-100k, fastbook chapter 8.")
    ap.add_argument("--model", choices=["dot", "nn"], default="dot", help="DotProductBias or CollabNN")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--lr", type=float, help="the one-cycle's peak learning rate")
    ap.add_argument("--wd", type=float, help="weight decay, added to the gradients")
    ap.add_argument("--bs", type=int, help="batch size")
    ap.add_argument("--factors", type=int, default=50, help="n_factors of DotProductBias")
    ap.add_argument("--layers", default="100,50", help="CollabNN hidden sizes, e.g. 100,50")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--valid-pct", type=float, default=0.2)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--lr-find", action="store_true", help="sweep learning rates, print a suggestion, stop")
    ap.add_argument("--ratings", help="a CSV/TSV with a header instead of MovieLens-100k")
    ap.add_argument("--user-col")
    ap.add_argument("--item-col")
    ap.add_argument("--rating-col")
    ap.add_argument("--save", metavar="FILE", help="save the trained model")
    ap.add_argument("--load", metavar="FILE", help="load a saved model instead of training")
    ap.add_argument("--recommend", metavar="USER", help="the top items this user has not rated")
    ap.add_argument("--top", type=int, default=5, help="how many to recommend")
    ap.add_argument("--similar", metavar="TITLE", help="the titles most like this one")
    ap.add_argument("--plot", metavar="FILE", help="save the book's PCA scatter as PNG (needs matplotlib)")
    args = ap.parse_args(argv)
    for k, v in DEFAULTS[args.model].items():
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    try:
        args.layers = tuple(int(s) for s in args.layers.split(","))
    except ValueError:
        ap.error(f"--layers {args.layers!r}: give sizes separated by commas, e.g. 100,50")
    return args


def load_data(args):
    """(users, items, ratings, titles) from --ratings or from MovieLens-100k."""
    if args.ratings:
        users, items, ratings = read_ratings(args.ratings, args.user_col, args.item_col, args.rating_col)
        movies = Path(args.ratings).with_name("movies.csv")  # the seeds' ml-latest-small layout
        titles = {}
        if movies.is_file():
            with open(movies, newline="", encoding="utf-8") as f:
                titles = {_as_numbers(np.array(r[0])).item(): r[1] for r in list(csv.reader(f))[1:] if len(r) > 1}
        return users, items, ratings, titles
    from data_fetch import load_movielens
    d = load_movielens("ml-100k")
    return d["user"], d["item"], d["rating"], d["titles"]


def train(args):
    """Load, split and train as the flags say; return the Collab."""
    if args.factors < 1 or min(args.layers) < 1:
        raise CollabError(f"--factors and --layers must be positive (got {args.factors} and {args.layers})")
    users, items, ratings, titles = load_data(args)
    device = get_device(args.device)
    user_map, item_map = IdMap(users), IdMap(items)
    data = [torch.as_tensor(a).to(device) for a in (user_map.encode(users), item_map.encode(items), ratings)]
    train_idx, valid_idx = (i.to(device) for i in split(len(ratings), args.valid_pct, args.seed))
    train, valid = [t[train_idx] for t in data], [t[valid_idx] for t in data]
    y_range = (min(0.0, 1.1 * float(ratings.min())), 1.1 * float(ratings.max()))  # the book's (0, 5.5) for 1..5
    config = dict(model=dict(kind=args.model, n_users=len(user_map), n_items=len(item_map),
                             n_factors=args.factors, layers=args.layers, y_range=y_range))
    torch.manual_seed(args.seed)
    model = make_model(**config["model"]).to(device)
    print(f"{len(ratings):,} ratings, {len(user_map):,} users, {len(item_map):,} items; "
          f"{type(model).__name__} on {device}")
    if args.lr_find:
        print(f"suggested learning rate: {lr_find(model, train, bs=args.bs, wd=args.wd, seed=args.seed)[0]:.1e}")
        return None
    start = time.perf_counter()
    fit_one_cycle(model, train, valid, args.epochs, args.lr, args.wd, args.bs, args.seed)
    print(f"fit: {args.epochs} epochs in {time.perf_counter() - start:.2f} s on {device}")
    return Collab(model, config, user_map, item_map, titles, *(t.cpu().numpy() for t in train[:2]))


def as_id(s, ids):
    """A command-line string as the raw id type of this data set (int or str)."""
    try:
        return int(s) if ids.ids.dtype.kind in "iu" else s
    except ValueError:
        raise CollabError(f"{s!r} is not a user id: the ids here are integers") from None


def report(c, args):
    """What the model learned, in titles; then what was asked for on the command line."""
    lines = lambda xs: "\n".join(f"  {x}" for x in xs)
    if args.recommend is not None:
        user = as_id(args.recommend, c.users)
        print(f"top {args.top} for user {user}:\n" + lines(f"{r:.2f}  {t}" for t, r in c.recommend(user, args.top)))
    if args.similar is not None:
        print(f"most like {args.similar}:\n" + lines(c.similar(args.similar, min_ratings=20)))
    if args.plot:
        plot_pca(c, args.plot)
        print(f"saved the PCA plot to {args.plot}")
    if args.recommend is not None or args.similar is not None or args.plot:
        return
    if hasattr(c.model, "item_bias"):
        low, high = c.biases()
        print(f"\nhighest item bias (liked even by those whose taste they don't match):\n{lines(high)}")
        print(f"lowest item bias (disliked even by those whose taste they match):\n{lines(low)}")
    lambs = "Silence of the Lambs, The (1991)"
    if lambs in c.titles.values():
        print(f"most like {lambs}:\n{lines(c.similar(lambs, min_ratings=20))}")
    comps, top = c.pca(2)
    for k in range(comps.shape[1]):
        order = comps[:, k].argsort().numpy()
        print(f"principal component {k}: {' / '.join(c.title(top[i]) for i in order[:3])}  <->  "
              f"{' / '.join(c.title(top[i]) for i in order[-3:])}")
    user = c.users.ids[0].item()
    print(f"top 5 for user {user}:\n" + lines(f"{r:.2f}  {t}" for t, r in c.recommend(user, 5)))


def plot_pca(c, path, n=50):
    """The book's scatter of the n most-rated titles on principal components 0 and 2."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CollabError("--plot needs matplotlib: pip install matplotlib") from None
    comps, top = c.pca(3)
    if comps.shape[1] < 3:
        raise CollabError("--plot shows principal components 0 and 2: train with --factors 3 or more")
    fig, ax = plt.subplots(figsize=(12, 12))
    ax.scatter(comps[:n, 0], comps[:n, 2])
    for (x, _, y), i in zip(comps[:n].tolist(), top[:n]):
        ax.text(x, y, c.title(i), fontsize=9)
    ax.set(xlabel="principal component 0", ylabel="principal component 2")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    """Run the command line; bad input ends in a one-line 'error: ...' and exit status 1."""
    from data_fetch import DataError
    args = parse_args(argv)
    try:
        c = Collab.load(args.load, get_device(args.device)) if args.load else train(args)
        if c is not None:
            if args.save:
                c.save(args.save)
                print(f"saved the model to {args.save}")
            report(c, args)
    except (CollabError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyError as e:  # an unknown id, named by IdMap.encode
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
