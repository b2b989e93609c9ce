"""Data for minicollab: any ratings file, read fast into numpy; any MovieLens, fetched, checked."""
import argparse
import array
import contextlib
import csv
import functools
import gzip
import hashlib
import io
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib

import numpy as np

# each MovieLens: its zip's folder, ratings and titles files (.csv ones have a header), encoding
MOVIELENS = {"ml-100k": ("ml-100k", "u.data", "u.item", "latin-1"),
             "ml-1m": ("ml-1m", "ratings.dat", "movies.dat", "latin-1"),
             "ml-10m": ("ml-10M100K", "ratings.dat", "movies.dat", None),
             "ml-20m": ("ml-20m", "ratings.csv", "movies.csv", None),
             "ml-25m": ("ml-25m", "ratings.csv", "movies.csv", None),
             "ml-32m": ("ml-32m", "ratings.csv", "movies.csv", None),
             "ml-latest-small": ("ml-latest-small", "ratings.csv", "movies.csv", None),
             "ml-latest": ("ml-latest", "ratings.csv", "movies.csv", None)}
URLS = {name: f"https://files.grouplens.org/datasets/movielens/{name}.zip" for name in MOVIELENS}
ML100K_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
# the zips GroupLens no longer changes; the others are checked by their structure instead
SHA256 = {"ml-1m": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
          "ml-20m": "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
          "ml-25m": "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"}
WHEEL = "recbole==1.2.1"  # ml-100k as two tab-separated files: u.data's ratings, and titles
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
WHEEL_DIR = "recbole/dataset_example/ml-100k/"
WHEEL_FILES = {"ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
               "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"}
TIMEOUT, RETRIES, BACKOFF = 30, 3, 1.0  # seconds per connect or read; tries; the first pause
STALE = 3600  # seconds after which a temp file is taken to be left over from a killed run
CHUNK = 8 << 20  # bytes the fast reader parses at a time, cut at a line end: bounds its memory
ROLES = ("user", "item", "rating")
OUT = (*ROLES, "timestamp")  # the order of the arrays in every result
ROLE_NAMES = {  # header names that give a column its role: lower-cased, no spaces, '_' or '-'
    "user": {"user", "userid", "uid", "username", "customer", "customerid", "reviewerid"},
    "item": {"item", "itemid", "iid", "movie", "movieid", "movietitle", "title", "product"},
    "rating": {"rating", "score", "stars", "rate", "grade"},
    "timestamp": {"timestamp", "ts", "unixtime"}}
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
ID_INT = re.compile(r"(0|-?[1-9][0-9]*)(\.0+)?")  # as str(int) writes it, or pandas a whole float
POW10 = 10 ** np.arange(1, 19, dtype=np.int64)  # 10 .. 1e18, to count an int64's digits
READ_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile)  # a damaged stream

class DataError(ValueError):
    """A problem the user can fix; the message is one line that names the file, says what to do."""

def cache_dir(path=None):
    """The cache: path, else $MINICOLLAB_DATA, else $XDG_CACHE_HOME or ~/.cache, /minicollab."""
    xdg = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
    path = path or os.environ.get("MINICOLLAB_DATA") or xdg / "minicollab"
    return pathlib.Path(path).expanduser()

def _warn(message, quiet):
    """A note that stops nothing, on stderr."""
    if not quiet:
        print(f"warning: {message}", file=sys.stderr)

# ---- reading a ratings file: numpy for plain numeric rows, else the csv module, row by row ----

def read_ratings(path, user_col=None, item_col=None, rating_col=None, quiet=False):
    """A ratings file -> {"user", "item", "rating", "timestamp" (if plain numbers), "titles"}."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():  # a directory, say
        raise DataError(f"no ratings file at {path}; give the path of a CSV file of ratings")
    wanted = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": None}
    data = _read_table(str(path), functools.partial(open, path, "rb"), wanted, quiet)
    movies, data["titles"] = path.with_name("movies.csv"), {}  # as in MovieLens's own zips
    try:
        if movies.is_file():
            data["titles"] = _read_titles(str(movies), functools.partial(open, movies, "rb"),
                                          data["item"].dtype.kind == "i")
    except DataError as e:  # titles only decorate the output: say why they are missing
        _warn(f"{e}; going on without titles", quiet)
    return data

def _read_table(where, opener, wanted, quiet=False, encoding="utf-8-sig"):
    """{role: array} from a stream of ratings; wanted: {role: column name or None}."""
    try:
        opener, delimiter = _unwrap(where, opener)
        first = next(_rows(where, opener, delimiter, encoding), (1, []))  # [] if all are ''
        layout = _layout(where, *first, delimiter, wanted)
        # where the fast reader gives up, the exact one reads the file, naming the line of a bad row
        data = _read_fast(opener, layout) or _read_exact(
            where, _rows(where, opener, delimiter, encoding), layout, quiet)
    except UnicodeDecodeError:  # every byte is a latin-1 character
        _warn(f"{where} is not UTF-8; reading it as latin-1", quiet)
        return _read_table(where, opener, wanted, quiet, "latin-1")
    except READ_ERRORS as e:
        raise DataError(f"{where}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    names, guessed = layout["names"], layout["guessed"]
    if not len(data["rating"]):
        raise DataError(f"{where} has a header ({', '.join(names)}) but no data rows")
    if guessed:  # films taken for users, say, must not pass in silence
        why = "its header names none we know" if layout["header"] else "it has no header"
        _warn(f"{where}: columns taken by position, as {why}: " + ", ".join(
            f"{names[layout['cols'][r]]} as {r}" for r in guessed) + "; if that is wrong, choose "
            "with --user-col, --item-col, --rating-col", quiet)
    return data

def _unwrap(where, opener):
    """(An opener of the stream's bytes, gzip undone; its delimiter); a DataError if no text."""
    with opener() as f:
        head = f.read(1 << 16)
    if head.startswith(b"\x1f\x8b"):  # gzip's magic bytes; where is then a file's path
        opener = functools.partial(gzip.open, where)
        with opener() as f:
            head = f.read(1 << 16)
    zipped = head.startswith(b"PK\x03\x04")  # so are .xlsx and .ods
    lines = head.removeprefix(b"\xef\xbb\xbf").decode("latin-1").split("\n")
    line = next((s for s in lines if s.strip() and s[0] != "#"), "")  # the first row's
    for bad, what in [
            (where.lower().endswith((".xlsx", ".xls", ".ods")) or head.startswith(b"\xd0\xcf\x11")
             or zipped and (b"[Content_Types].xml" in head or b"opendocument" in head),
             "is a spreadsheet workbook; save it as CSV (File > Save As) and pass that file"),
            (zipped, "is a zip archive; unzip it and pass the ratings file inside (a MovieLens zip:"
                     " `python data_fetch.py --name NAME --from-file ZIP`)"),
            (b"\0" in head, "holds NUL bytes, as UTF-16 text does; save it as UTF-8"),
            (b"\r" in head and b"\n" not in head,  # as old Macs wrote them
             "ends its lines with CR alone; save it with Unix or Windows line ends"),
            (not line, "holds no ratings; it needs a line per rating: user, item, rating")]:
        if bad:
            raise DataError(f"{where} {what}")
    # '::' if the first row holds it (MovieLens's .dat files), else the commonest; a tie: the first
    return opener, "::" if "::" in line else max("\t,;|", key=line.count)

def _rows(where, opener, delimiter, encoding):
    """(line number, fields) of each row but blank lines and comments, read by the csv module."""
    with opener() as raw:
        lines = (s if s[:1] != "#" else "\n"  # a comment: a blank line, so that lines keep count
                 for s in io.TextIOWrapper(raw, encoding=encoding, newline=""))
        if delimiter == "::":  # the csv module splits at one character
            lines, delimiter = (s.replace("::", "\x1f") for s in lines), "\x1f"
        quoting = csv.QUOTE_MINIMAL if delimiter in ",;\t" else csv.QUOTE_NONE  # as MovieLens's
        reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, skipinitialspace=True)
        end = 0  # the line the last row ended on: a quoted field may span lines
        try:
            for row in reader:
                start, end = end + 1, reader.line_num
                if len(row) > 1 or row and row[0].strip():
                    yield start, [s.strip() for s in row]  # `1, "Heat, The", 5` as people type
        except csv.Error as e:  # not its advice to open the file in universal-newline mode
            raise DataError(f"{where}, line {end + 1}: not readable as CSV "
                            f"({str(e).split(' - ')[0]}); fix or remove that line") from None

def _layout(where, n, fields, delimiter, wanted):
    """How to read a file whose first row, on line n, is fields: a header, or already a rating."""
    norm = [re.sub(r"[\s_-]", "", s.lower()) for s in fields]  # 'User ID' -> 'userid'
    known = {role: sorted((i for i, s in enumerate(norm) if s in ROLE_NAMES[role]),
                          key=lambda i: norm[i].endswith("title")) for role in OUT}  # ids first
    pos = int(wanted["rating"]) - 1 if str(wanted["rating"]).isdigit() else 2  # if no header
    # a header names its columns; a rating has a number in the rating's place, and no column name
    header = any(known.values()) or not (pos < len(fields) and NUMBER.fullmatch(fields[pos]))
    names = fields if header else [str(i) for i in range(1, len(fields) + 1)]  # --user-col 2
    if len(names) < 3:  # tab, comma, ';', '|' or '::'
        raise DataError(f"{where} has {len(names)} column(s) ({', '.join(names)}); it needs user, "
                        "item and rating, separated by commas or tabs")
    cols = {}  # {role: column}: the caller's names, then names we know, then the first left
    for role, name in ((r, str(s).strip()) for r, s in wanted.items() if s is not None):
        cols[role] = next((i for i, s in enumerate(names) if s.lower() == name.lower()), None)
        if cols[role] is None:  # a file without header has its columns numbered
            raise DataError(f"{where}: no column {name!r}; columns found: {', '.join(names)} "
                            f"(pick columns with --user-col, --item-col, --rating-col)")
    for role in (r for r in ROLES if r not in cols and known[r]):  # even if taken: refused below
        cols[role] = known[role][0]
    guessed = [role for role in ROLES if role not in cols]
    for role in guessed:  # a column is left, as the other two take two at most
        cols[role] = next(i for i in range(len(names)) if i not in cols.values())
    if "timestamp" not in cols and (free := set(known["timestamp"]) - set(cols.values())):
        cols["timestamp"] = min(free)
    if twice := [role for role, i in cols.items() if list(cols.values()).count(i) > 1]:
        raise DataError(f"{where}: column {names[cols[twice[0]]]!r} is taken for both the "
                        f"{twice[0]} and the {twice[1]}; give each its own, with --{twice[1]}-col")
    return dict(skip=n if header else n - 1, delimiter=delimiter, names=names, cols=cols,
                guessed=guessed, header=header)

def _read_fast(opener, layout):
    """Plain numeric rows, a chunk at a time by numpy's C parser; None if some row is not plain."""
    cols, delimiter = layout["cols"], layout["delimiter"].replace("::", ":")  # ':' left: refused
    kinds = ["S24"] * len(layout["names"])  # columns no role uses: text, only to count their bytes
    for role, i in cols.items():
        kinds[i] = "S8" if role == "rating" else "i8"  # ratings as text: each distinct one parsed
    dtype = np.dtype([(f"c{i}", kind) for i, kind in enumerate(kinds)])
    out = {role: np.empty(0, np.float32 if role == "rating" else np.int64) for role in cols}
    n = 0
    with opener() as f:
        for _ in range(layout["skip"]):
            f.readline()
        while chunk := (f.read(CHUNK) + f.readline()).removeprefix(b"\xef\xbb\xbf"):  # whole lines
            if b"\r" in chunk or delimiter == ":":  # numpy would drop a \r; it splits at one ':'
                chunk = chunk.replace(b"\r\n", b"\n").replace(b"::", b":")
            if not chunk.isascii() or b'"' in chunk:  # then the encoding or the quotes matter
                return None
            if not chunk.strip(b"\n"):  # blank lines only, which numpy would warn about
                continue
            try:  # numpy skips blank lines
                rows = np.loadtxt(io.BytesIO(chunk), dtype=dtype, delimiter=delimiter,
                                  comments=None, quotechar=None, encoding="latin-1", ndmin=1)
            except ValueError:  # too few or too many fields, a word or '' where an int goes
                return None
            # numpy also reads '+7', ' 7', '007' and '-0' as ints, and cuts long texts short: all
            # longer than we count for them: the rows add up to the chunk only if all are plain
            n_bytes = (len(dtype.names) - 1) * len(rows) + chunk.count(b"\n")  # delimiters, ends
            for v in (rows[name] for name in dtype.names):
                if v.dtype.kind == "S":
                    n_bytes += np.strings.str_len(v).sum()
                else:  # the digits of each int, and its '-' (-2**63 counts short)
                    a = np.abs(v)
                    n_bytes += len(v) + np.count_nonzero(v < 0) + sum(
                        np.count_nonzero(a >= p) for p in POW10[POW10 <= a.max()])
            keys, inverse = np.unique(rows[f"c{cols['rating']}"].view(np.uint64),
                                      return_inverse=True)  # equal texts, equal keys: few
            texts = [k.tobytes().rstrip(b"\0").decode() for k in keys]
            if n_bytes != len(chunk) or not all(map(NUMBER.fullmatch, texts)) or max(
                    abs(float(t)) for t in texts) > 1e6:  # as the exact reader refuses
                return None
            ratings = np.array(texts, dtype=np.float32)[inverse]
            for role, a in out.items():
                if len(a) < n + len(rows):  # twice as long: pages not yet written cost no memory
                    out[role] = np.empty(max(n + len(rows), 2 * len(a)), a.dtype)
                    out[role][:n] = a[:n]
                out[role][n:n + len(rows)] = ratings if role == "rating" else rows[f"c{cols[role]}"]
            n += len(rows)
    return {role: out[role][:n] for role in OUT if role in out} if n else None

def _read_exact(where, rows, layout, quiet):
    """The rows of _rows -> arrays (no timestamps); ids coded as they come; names a bad row."""
    cols, need = layout["cols"], max(layout["cols"].values()) + 1
    codes = {role: ({}, array.array("q")) for role in ("user", "item")}  # {id: code}, the codes
    ratings = array.array("d")
    for n, row in rows:
        if n <= layout["skip"]:  # the header
            continue
        if len(row) < need:
            raise DataError(f"{where}, line {n}: {len(row)} fields, too few for column {need} "
                            f"({layout['names'][need - 1]}); fix or remove that line")
        for role, (index, out) in codes.items():
            if not row[cols[role]]:
                raise DataError(f"{where}, line {n}: the {role} id is empty; fill it in or "
                                "remove that line")
            out.append(index.setdefault(row[cols[role]], len(index)))
        text = row[cols["rating"]]
        # not NaN, nor so large that a square overflows float32: any scale people rate on
        if not NUMBER.fullmatch(text) or abs(float(text)) > 1e6:
            raise DataError(f"{where}, line {n}: rating {text!r} is not a number from -1,000,000 "
                            "to 1,000,000 (a decimal point, not a comma); fix or remove that line")
        ratings.append(float(text))
    data = {role: _ids(where, role, *codes[role], quiet) for role in codes}
    return {**data, "rating": np.array(ratings, dtype=np.float32)}

def _ids(where, role, index, codes, quiet):
    """Coded ids -> int64 if all are ints (all plain, or all as '7.0'), else text: '07' != '7'."""
    texts = list(index)  # in the order of their codes
    ints = [int(m[1]) if (m := ID_INT.fullmatch(s)) else None for s in texts]
    plain = None not in ints and all(-2**63 <= i < 2**63 for i in ints)
    if plain and len({"." in s for s in texts}) < 2:  # all plain, or all '7.0': not '7' and '7.0'
        if texts and "." in texts[0]:  # a float column of pandas: to match a movies.csv's ids
            _warn(f"{where}: the {role} ids are written as decimals ({texts[0]!r}, ...), so they "
                  f"are read as whole numbers ({ints[0]}, ...)", quiet)
        return np.array(ints, dtype=np.int64)[np.asarray(codes)]
    if any(i is not None for i in ints):  # mostly numbers: say why they stay text
        _warn(f"{where}: {role} ids are kept as text, as not all are plain 64-bit integers: so, "
              f"e.g., '07' and '7' are different {role}s", quiet)
    return np.array(texts)[np.asarray(codes)]

def _read_titles(where, opener, int_ids, encoding="utf-8-sig"):
    """{item id: title} from the first two columns of movies.csv, movies.dat or u.item."""
    titles = {}
    try:
        opener, delimiter = _unwrap(where, opener)
        for k, (_, row) in enumerate(_rows(where, opener, delimiter, encoding)):
            if len(row) > 1 and (k or row[1].lower() != "title"):  # not movies.csv's header
                m = ID_INT.fullmatch(row[0]) if int_ids else None  # keyed as the items are
                titles[int(m[1]) if m else row[0]] = row[1]
    except UnicodeDecodeError:
        return _read_titles(where, opener, int_ids, "latin-1")
    except READ_ERRORS as e:
        raise DataError(f"{where}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    return titles

# ---- fetching MovieLens: checked, cached, written whole or not at all ----

def check_sha256(expected):
    """A verify function: raises ValueError unless the file's SHA-256 is `expected`."""
    def verify(path):
        with open(path, "rb") as f:
            if (got := hashlib.file_digest(f, "sha256").hexdigest()) != expected:
                raise ValueError(f"SHA-256 mismatch: got {got[:16]}..., expected "
                                 f"{expected[:16]}..., file discarded")
    return verify

def install(dest, write, verify):
    """Write dest through a unique temp file beside it, renamed into place once verify passes."""
    # unique names keep concurrent runs apart; os.replace is atomic: dest is absent or whole
    fd, tmp = tempfile.mkstemp(prefix=f".partial-{dest.name}-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        verify(pathlib.Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes files private; this is public data, maybe shared
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

def download(url, f, quiet=False):
    """Stream url into the binary file f, with time-outs, and retries with back-off."""
    for attempt in range(RETRIES):
        try:
            f.seek(0)
            f.truncate()
            with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
                total = int(r.headers.get("Content-Length") or 0)
                if not quiet and sys.stderr.isatty():  # a person waiting, not a log
                    print(f"downloading {url} ({total:,} bytes)", file=sys.stderr)
                shutil.copyfileobj(r, f)
            if total and f.tell() != total:
                raise OSError(f"connection closed after {f.tell():,} of {total:,} bytes")
            return
        except OSError as e:  # URLError, HTTPError, time-outs, resets are all OSErrors
            # a 404, or a host name that does not resolve (no network at all), will not mend
            if (isinstance(e, urllib.error.HTTPError) and e.code < 500 or attempt + 1 == RETRIES
                    or isinstance(getattr(e, "reason", None), socket.gaierror)):
                raise
            time.sleep(BACKOFF * 2 ** attempt)

def fetch_wheel(d):
    """pip-download the recbole wheel, check it, and cache its two ml-100k files, each checked."""
    with tempfile.TemporaryDirectory(prefix=".partial-wheel-", dir=d) as tmp:  # killed: cleaned
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--no-input", "--quiet", "--timeout", str(TIMEOUT), "--dest", tmp, WHEEL]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10 * TIMEOUT)
        if r.returncode:
            raise OSError((r.stderr.strip().splitlines() or [f"pip: exit {r.returncode}"])[-1])
        (wheel,) = pathlib.Path(tmp).glob("*.whl")
        check_sha256(WHEEL_SHA256)(wheel)
        with zipfile.ZipFile(wheel) as z:
            for name, sha in WHEEL_FILES.items():
                install(d / name, lambda f: f.write(z.read(WHEEL_DIR + name)), check_sha256(sha))

def read_movielens_zip(name, path):
    """Ratings, timestamps and titles from GroupLens's zip of `name`; a DataError if it is not."""
    folder, ratings, movies, encoding = MOVIELENS[name]
    ratings, movies = f"{folder}/{ratings}", f"{folder}/{movies}"
    headed = ratings.endswith(".csv")  # u.data and the .dat files have no header
    try:
        with zipfile.ZipFile(path) as z:  # a missing file: KeyError
            data = _read_table(ratings, functools.partial(z.open, ratings),
                               dict(zip(OUT, [None] * 4 if headed else "1234")), True)
            data["titles"] = _read_titles(movies, functools.partial(z.open, movies), True,
                                          encoding or "utf-8-sig")
        r = data["rating"]
        if ("timestamp" not in data or data["user"].dtype.kind != "i" or not data["titles"]
                or data["item"].dtype.kind != "i" or (r < 0.5).any() or (r > 5).any()):
            raise ValueError(f"{ratings} needs whole ids and timestamps, ratings from 0.5 to 5, "
                             f"and {movies} titles")
    except (zipfile.BadZipFile, KeyError, ValueError) as e:  # DataError is a ValueError
        raise DataError(f"not {name}: {e}") from None
    return data

def read_recbole(inter, item):
    """Ratings and titles from recbole's ml-100k.inter and ml-100k.item (tab-separated)."""
    names = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    data = _read_table(str(inter), functools.partial(open, inter, "rb"), dict(zip(OUT, names)))
    rows = [s.split("\t")[:3] for s in item.read_text(encoding="utf-8").splitlines()[1:]]
    # recbole split u.item's "Title (year)" in two; glue it back. u.item calls 267 "unknown"
    return {**data, "titles": {int(i): "unknown" if t == "unkonwn" else f"{t} ({year})"
                               for i, t, year in rows}}

# ---- finding the data: from a file, the cache, GroupLens, PyPI, in that order ----

def load(name=None, ratings=None, user_col=None, item_col=None, rating_col=None):
    """minicollab's data: a ratings file of one's own, else a MovieLens by name (ml-100k)."""
    if name is not None and ratings is not None:
        raise DataError("give --data NAME or --ratings FILE, not both")
    if ratings is None and (user_col or item_col or rating_col):
        raise DataError("--user-col and the like pick columns of --ratings FILE")
    if ratings is None:  # where it came from is part of a run's output: stderr is for trouble
        data = load_movielens("ml-100k" if name is None else name, summary=sys.stdout)
        data["files"] = [data["path"], data["path"].with_suffix(".item")]  # .inter: its titles
        return data
    data = read_ratings(ratings, user_col, item_col, rating_col)
    if len(data["rating"]) < 2:
        raise DataError(f"{ratings} holds 1 rating; training and validating need at least two")
    data["files"] = [ratings, pathlib.Path(ratings).expanduser().with_name("movies.csv")]
    return data

def load_movielens(name="ml-100k", dir=None, from_file=None, quiet=False, summary=None):
    """MovieLens ratings as numpy arrays plus {item id: title}, fetched and checked if need be."""
    if name not in URLS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(URLS)}")
    d, url = cache_dir(dir), URLS[name]
    for p in d.glob(".partial-*"):  # left by a killed run; a live one keeps its own fresh
        with contextlib.suppress(OSError):  # gone already, or a read-only cache: harmless
            if time.time() - p.stat().st_mtime > STALE:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    zip_path, sha = d / f"{name}.zip", ML100K_SHA256 if name == "ml-100k" else SHA256.get(name)
    read = {}  # GroupLens updates the zips we pin no hash for: checked by reading, read once
    verify = check_sha256(sha) if sha else lambda p: read.update(data=read_movielens_zip(name, p))
    if from_file:
        src = pathlib.Path(from_file).expanduser()
        _writable(d)
        try:
            install(zip_path, lambda f: f.write(src.read_bytes()), verify)
        except (OSError, ValueError) as e:  # not there, or not the zip
            why = getattr(e, "strerror", None) or e
            raise DataError(f"{src} is not the {zip_path.name} from GroupLens ({why}); download it "
                            f"from {url}") from None
        path, source = zip_path, f"file {src}"
    elif _cached(zip_path, verify, quiet):
        path, source = zip_path, "cache"
    elif name == "ml-100k" and all(_cached(d / f, check_sha256(h), quiet)
                                   for f, h in WHEEL_FILES.items()):
        path, source = d / "ml-100k.inter", "cache"
    else:
        _writable(d)
        path, source = _fetch(name, url, zip_path, verify, quiet)
    data = read.get("data") or (read_recbole(path, path.with_suffix(".item"))
                                if path.suffix == ".inter" else read_movielens_zip(name, path))
    data.update(source=source, path=path)
    if not quiet:
        print(f"{name}: {len(data['rating']):,} ratings from {source} (cached at {path})",
              file=summary or sys.stderr)
    return data

def _writable(d):
    """Create the cache directory if need be; a DataError if we cannot write there."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=d).close()
    except OSError as e:
        raise DataError(f"cannot write to cache directory {d} ({e.strerror}); choose another with "
                        "MINICOLLAB_DATA=DIR (or data_fetch.py --dir DIR)") from None

def _cached(path, verify, quiet):
    """True if path exists and passes verify; one that fails (truncated, edited) is removed."""
    try:
        return path.exists() and verify(path) is None
    except ValueError as e:
        _warn(f"{path} failed its check ({e}); fetching it again", quiet)
        with contextlib.suppress(OSError):  # gone already; a read-only cache shows on writing
            path.unlink()
        return False

def _fetch(name, url, zip_path, verify, quiet):
    """(path, source): the zip from GroupLens, else for ml-100k recbole's wheel from PyPI."""
    try:
        install(zip_path, lambda f: download(url, f, quiet), verify)
        return zip_path, url
    except Exception as e:  # whatever went wrong with one source, try the next; report them all
        why = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)  # URLError's
        tried = [f"{url}: {why}"]
    if name == "ml-100k":  # only ml-100k has a copy on PyPI
        try:
            fetch_wheel(zip_path.parent)
            return zip_path.with_name("ml-100k.inter"), f"PyPI wheel {WHEEL}"
        except Exception as e:
            tried.append(f"pip download {WHEEL}: {e}")
    flag = "" if name == "ml-100k" else f" --name {name}"
    raise DataError(f"could not fetch {name} (tried {'; '.join(tried)}); download {url} by hand "
                    f"to {zip_path}, or run `python data_fetch.py{flag} --from-file PATH`")

def main(argv=None):
    """Command line: make the data available; say where it is, where it came from, what it holds."""
    p = argparse.ArgumentParser(description="Fetch and verify MovieLens for minicollab.")
    p.add_argument("--name", choices=list(URLS), default="ml-100k")
    p.add_argument("--dir", help="cache directory (default: $MINICOLLAB_DATA, ~/.cache/minicollab)")
    p.add_argument("--from-file", metavar="PATH", help="use a zip you downloaded by hand")
    p.error = lambda message: p.exit(1, f"error: {message}\n")  # one line, as minicollab's
    args = p.parse_args(argv)
    try:
        data = load_movielens(args.name, args.dir, args.from_file)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n_users, n_items = len(np.unique(data["user"])), len(np.unique(data["item"]))
    try:
        print(f"{args.name}: {len(data['rating']):,} ratings, {n_users:,} users, {n_items:,} "
              f"items, mean rating {data['rating'].mean():.3f}; item 1 is "
              f"{data['titles'].get(1)!r}\nsource: {data['source']}\npath:   {data['path']}")
        sys.stdout.flush()  # a closed stdout shows here, not in the flush at exit
    except BrokenPipeError:  # stdout closed early (| head): stop quietly, the exit's flush too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0

if __name__ == "__main__":
    sys.exit(main())
