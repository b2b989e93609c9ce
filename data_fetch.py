"""Make MovieLens available for minicollab: a verified cache, the GroupLens zip, or the recbole wheel on PyPI."""

import argparse
import contextlib
import csv
import hashlib
import io
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

import numpy as np

URLS = {"ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "ml-latest-small": "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"}
ML100K_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
# recbole ships ml-100k as two tab-separated files: the same ratings, in u.data's order, and the titles
WHEEL = "recbole==1.2.1"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
WHEEL_DIR = "recbole/dataset_example/ml-100k/"
WHEEL_FILES = {"ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
               "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"}
TIMEOUT, RETRIES, BACKOFF = 30, 3, 1.0  # seconds per connect or read; tries per download; first pause
STALE = 3600  # seconds after which a temp file is taken to be left over from a killed run


class DataError(Exception):
    """A problem the user can fix; the message is one line that says how."""


def cache_dir(path=None):
    """Where data is cached: path, else $MINICOLLAB_DATA, else $XDG_CACHE_HOME/minicollab, else ~/.cache/minicollab."""
    path = path or os.environ.get("MINICOLLAB_DATA")
    if not path:
        path = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "minicollab"
    return pathlib.Path(path).expanduser()


# -----------------------------------------------------------------------------
# verified, atomic writes and downloads


def check_sha256(expected):
    """A verify function: raises ValueError unless the file's SHA-256 is `expected`."""
    def verify(path):
        with open(path, "rb") as f:
            got = hashlib.file_digest(f, "sha256").hexdigest()
        if got != expected:
            raise ValueError(f"SHA-256 mismatch: got {got[:16]}..., expected {expected[:16]}..., file discarded")
    return verify


def install(dest, write, verify):
    """Write dest through a unique temp file beside it, renamed into place only after verify(temp) passes."""
    # unique names keep concurrent runs apart, and os.replace is atomic: dest is only ever absent or whole
    fd, tmp = tempfile.mkstemp(prefix=f".partial-{dest.name}-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        verify(pathlib.Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes files private; this is public data, and the cache may be shared
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def download(url, f, quiet=False):
    """Stream url into the open binary file f: time-outs, retries with back-off, progress on a terminal."""
    show = not quiet and sys.stderr.isatty()
    for attempt in range(RETRIES):
        done = 0
        try:
            f.seek(0)
            f.truncate()
            with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
                total = int(r.headers.get("Content-Length") or 0)
                while chunk := r.read(1 << 16):
                    f.write(chunk)
                    done += len(chunk)
                    if show:
                        pct = f" / {total:,} bytes ({100 * done // total}%)" if total else " bytes"
                        print(f"\r  {url.rsplit('/', 1)[-1]}: {done:,}{pct}", end="", file=sys.stderr)
            if total and done != total:
                raise OSError(f"connection closed after {done:,} of {total:,} bytes")
            return
        except OSError as e:  # URLError, HTTPError, time-outs, resets are all OSErrors
            if isinstance(e, urllib.error.HTTPError):
                e.close()  # an HTTP error still holds its connection open
            # a 404, or a host name that does not resolve (no network at all), will not mend by waiting
            hopeless = isinstance(e, urllib.error.HTTPError) and e.code < 500
            hopeless |= isinstance(getattr(e, "reason", None), socket.gaierror)
            if hopeless or attempt + 1 == RETRIES:
                raise
            time.sleep(BACKOFF * 2 ** attempt)
        finally:
            if show and done:
                print(file=sys.stderr)  # end the progress line, whatever happened


def fetch_wheel(d):
    """pip-download the recbole wheel, check it, and cache its two ml-100k files, each checked too."""
    with tempfile.TemporaryDirectory(prefix=".partial-wheel-", dir=d) as tmp:  # a killed run's is cleaned later
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--quiet", "--timeout", str(TIMEOUT), "--retries", str(RETRIES),
               "--dest", tmp, WHEEL]
        r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=10 * TIMEOUT)
        if r.returncode:
            raise OSError((r.stderr.strip().splitlines() or [f"pip exited with {r.returncode}"])[-1])
        (wheel,) = pathlib.Path(tmp).glob("*.whl")
        check_sha256(WHEEL_SHA256)(wheel)
        with zipfile.ZipFile(wheel) as z:
            for name, sha in WHEEL_FILES.items():
                install(d / name, lambda f: f.write(z.read(WHEEL_DIR + name)), check_sha256(sha))

# -----------------------------------------------------------------------------
# readers: every source ends as the same dict of numpy arrays and titles


def _result(a, titles):
    """The loader's dict from an (n, 4) array of user, item, rating, timestamp."""
    user, item, rating, timestamp = a.T  # each (n,); astype copies them into contiguous arrays
    return {"user": user.astype(np.int64), "item": item.astype(np.int64), "rating": rating.astype(np.float32),
            "timestamp": timestamp.astype(np.int64), "titles": titles}


def read_ml100k_zip(path):
    """Ratings and titles from the GroupLens zip: u.data (tab-separated) and u.item (|-separated, latin-1)."""
    with zipfile.ZipFile(path) as z:
        a = np.array(z.read("ml-100k/u.data").split(), dtype=np.int64).reshape(-1, 4)  # (n, 4)
        rows = [line.split("|") for line in z.read("ml-100k/u.item").decode("latin-1").splitlines() if line]
    return _result(a, {int(row[0]): row[1] for row in rows})


def read_recbole(inter, item):
    """Ratings and titles from recbole's ml-100k.inter and ml-100k.item (tab-separated, a header line each)."""
    a = np.array(inter.read_bytes().split(b"\n", 1)[1].split(), dtype=np.int64).reshape(-1, 4)  # (n, 4)
    titles = {}
    for line in item.read_text(encoding="utf-8").splitlines()[1:]:
        i, title, year = line.split("\t")[:3]
        # recbole split u.item's "Title (year)" in two; glue it back. u.item calls item 267 "unknown"
        titles[int(i)] = "unknown" if title == "unkonwn" else f"{title} ({year})"
    return _result(a, titles)


def read_latest_small(path):
    """Ratings and titles from ml-latest-small's ratings.csv and movies.csv, checking their structure."""
    # GroupLens says this zip changes over time, so no pinned hash: check the header and that fields are numbers
    try:
        with zipfile.ZipFile(path) as z:
            ratings = z.read("ml-latest-small/ratings.csv").decode("utf-8").splitlines()
            movies = list(csv.reader(io.TextIOWrapper(z.open("ml-latest-small/movies.csv"), encoding="utf-8")))
        if ratings[0] != "userId,movieId,rating,timestamp" or movies[0] != ["movieId", "title", "genres"]:
            raise ValueError("unexpected header in ratings.csv or movies.csv")
        a = np.array(",".join(ratings[1:]).split(","), dtype=np.float64).reshape(len(ratings) - 1, 4)  # (n, 4)
        titles = {int(i): title for i, title, _ in movies[1:]}
    except (KeyError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"not ml-latest-small: {e}") from None
    if not ((a[:, 2] >= 0.5) & (a[:, 2] <= 5)).all():
        raise ValueError("not ml-latest-small: ratings outside 0.5..5")
    return _result(a, titles)

# -----------------------------------------------------------------------------
# finding the data: from a file, the cache, GroupLens, PyPI, in that order


def _writable(d):
    """Create the cache directory if needed; fail with a clear message if we cannot write there."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=d).close()
    except OSError as e:
        raise DataError(f"cannot write to cache directory {d} ({e.strerror or e}); "
                        f"choose another with --dir DIR or MINICOLLAB_DATA=DIR") from None


def _cached(path, verify, quiet):
    """True if path exists and passes verify; one that fails (truncated, edited) is removed, to be fetched again."""
    if not path.exists():
        return False
    try:
        verify(path)
        return True
    except ValueError as e:
        if not quiet:
            print(f"{path} failed its check ({e}); fetching it again", file=sys.stderr)
        with contextlib.suppress(OSError):  # gone already; a read-only cache is reported when we come to write
            path.unlink()
        return False


def _find(name, d, from_file, quiet):
    """(path, source) of verified data for name, fetched into the cache directory d if need be."""
    url, zip_path = URLS[name], d / f"{name}.zip"
    verify = check_sha256(ML100K_SHA256) if name == "ml-100k" else read_latest_small
    wheel_files = [d / f for f in WHEEL_FILES] if name == "ml-100k" else []
    if from_file:
        src = pathlib.Path(from_file).expanduser()
        if not zipfile.is_zipfile(src):
            what = "is not a zip file" if src.is_file() else "does not exist"
            raise DataError(f"{src} {what}; pass the path of the {zip_path.name} you downloaded from {url}")
        _writable(d)
        try:
            install(zip_path, lambda f: f.write(src.read_bytes()), verify)
        except ValueError as e:
            raise DataError(f"{src} is not the {zip_path.name} from GroupLens ({e}); download it from {url}") from None
        return zip_path, f"file {src}"
    if _cached(zip_path, verify, quiet):
        return zip_path, "cache"
    if wheel_files and all(_cached(p, check_sha256(WHEEL_FILES[p.name]), quiet) for p in wheel_files):
        return wheel_files[0], "cache"
    _writable(d)
    tried = []
    try:
        install(zip_path, lambda f: download(url, f, quiet), verify)
        return zip_path, url
    except Exception as e:  # whatever went wrong with one source, try the next and report it at the end
        why = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)  # URLError's str is noisy
        tried.append(f"{url}: {why}")
    if wheel_files:
        if not quiet and sys.stderr.isatty():  # logs get the one summary line below
            print(f"{tried[0]}; trying pip download {WHEEL}", file=sys.stderr)
        try:
            fetch_wheel(d)
            return wheel_files[0], f"PyPI wheel {WHEEL}"
        except Exception as e:
            tried.append(f"pip download {WHEEL}: {e}")
    flag = "" if name == "ml-100k" else " --name ml-latest-small"
    raise DataError(f"could not fetch {name} (tried {'; '.join(tried)}); download {url} to {zip_path}, "
                    f"or run `python data_fetch.py{flag} --from-file PATH`")


def _remove_stale(d):
    """Delete temp files left by a killed run; a live download keeps its own fresh, so it is spared."""
    for p in d.glob(".partial-*"):
        with contextlib.suppress(OSError):  # gone already, or a read-only cache: harmless either way
            if time.time() - p.stat().st_mtime > STALE:
                shutil.rmtree(p) if p.is_dir() else p.unlink()


def load_movielens(name="ml-100k", dir=None, from_file=None, quiet=False):
    """MovieLens ratings as numpy arrays plus {item id: title}, fetched and verified first if need be."""
    if name not in URLS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(URLS)}")
    d = cache_dir(dir)
    _remove_stale(d)
    path, source = _find(name, d, from_file, quiet)
    if path.suffix == ".inter":
        data = read_recbole(path, path.with_suffix(".item"))
    else:
        data = read_ml100k_zip(path) if name == "ml-100k" else read_latest_small(path)
    data.update(source=source, path=path)
    if not quiet:
        print(f"{name}: {len(data['rating']):,} ratings from {source} (cached at {path})", file=sys.stderr)
    return data


def main(argv=None):
    """Command line: make the data available, say where it is, where it came from, and what it holds."""
    p = argparse.ArgumentParser(description="Fetch and verify MovieLens for minicollab (never asks questions).")
    p.add_argument("--name", choices=list(URLS), default="ml-100k")
    p.add_argument("--dir", help="cache directory (default: $MINICOLLAB_DATA, else ~/.cache/minicollab)")
    p.add_argument("--from-file", metavar="PATH", help="use a zip you downloaded by hand")
    args = p.parse_args(argv)
    try:
        data = load_movielens(args.name, args.dir, args.from_file)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; run again, a half-done download is discarded", file=sys.stderr)
        return 130
    n_users, n_items = len(np.unique(data["user"])), len(np.unique(data["item"]))
    print(f"{args.name}: {len(data['rating']):,} ratings, {n_users:,} users, {n_items:,} items, "
          f"mean rating {data['rating'].mean():.3f}; item 1 is {data['titles'].get(1)!r}")
    print(f"source: {data['source']}\npath:   {data['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
