"""Data for minicollab: any ratings file, read fast into numpy; MovieLens of any size, fetched, verified."""

import argparse
import array
import codecs
import collections
import contextlib
import csv
import functools
import gzip
import hashlib
import io
import math
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

# each MovieLens data set: the folder in its zip, its ratings and titles files, and the titles' encoding
# (None: UTF-8, or cp1252 where it is not). The .dat files and u.data have no header; the .csv files do.
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
# the zips GroupLens no longer changes (5,917,549, 198,702,078 and 261,978,986 bytes); the others (ml-10m,
# ml-32m, ml-latest, ml-latest-small) are checked by their structure instead
SHA256 = {"ml-1m": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
          "ml-20m": "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
          "ml-25m": "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"}
CSV_COLUMNS = ["userId", "movieId", "rating", "timestamp"]  # the header of every MovieLens ratings.csv
# recbole ships ml-100k as two tab-separated files: the same ratings, in u.data's order, and the titles
WHEEL = "recbole==1.2.1"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
WHEEL_DIR = "recbole/dataset_example/ml-100k/"
WHEEL_FILES = {"ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
               "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"}
TIMEOUT, RETRIES, BACKOFF = 30, 3, 1.0  # seconds per connect or read; tries per download; first pause
STALE = 3600  # seconds after which a temp file is taken to be left over from a killed run

CHUNK = 8 << 20  # bytes parsed at a time, cut at a line end: bounds memory, and small buffers are reused
BATCH = 1 << 20  # rows the exact reader gathers in Python lists before it packs them into numpy arrays
ROLES = ("user", "item", "rating")
MAX_RATING = 1e6  # any scale people rate on; far below where float32's squares overflow
OUT = (*ROLES, "timestamp")  # the order of the arrays in every result
ROLE_NAMES = {  # header names that give a column its role, compared lower-cased without spaces, '_' or '-'
    "user": {"user", "userid", "users", "uid", "username", "customer", "customerid", "reviewer", "reviewerid",
             "member"},
    "item": {"item", "itemid", "items", "iid", "movie", "movieid", "movies", "movietitle", "product",
             "productid", "book", "bookid", "booktitle", "isbn"},  # a title only where no id is named
    "rating": {"rating", "ratings", "score", "scores", "stars", "star", "rate", "grade"},
    "timestamp": {"timestamp", "ts", "unixtime", "unixtimestamp"},
}
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # a first line of these is data, not a header
PLAIN_INT = re.compile(r"0|-?[1-9][0-9]*")  # an int as str(int(s)) writes it; [0-9] is ASCII only, unlike \d
POW10 = 10 ** np.arange(1, 19, dtype=np.int64)  # 10 .. 1e18, to count an int64's digits
READ_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile)  # a damaged, truncated or unreadable stream


class DataError(ValueError):
    """A problem the user can fix; the message is one line that names the file and says what to do."""


def cache_dir(path=None):
    """The cache: path, else $MINICOLLAB_DATA, else $XDG_CACHE_HOME/minicollab, else ~/.cache/minicollab."""
    path = path or os.environ.get("MINICOLLAB_DATA")
    if not path:
        path = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "minicollab"
    return pathlib.Path(path).expanduser()


def _warn(message, quiet):
    """A note that stops nothing, on stderr."""
    if not quiet:
        print(f"warning: {message}", file=sys.stderr)

# -----------------------------------------------------------------------------
# reading a ratings file: any delimiter, encoding or header; numpy-fast for plain numeric rows


def read_ratings(path, user_col=None, item_col=None, rating_col=None, quiet=False):
    """A ratings file -> {"user", "item", "rating"[, "timestamp"], "titles"} (from movies.csv beside it)."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        why = "it is a directory" if path.is_dir() else "no such file"
        raise DataError(f"no ratings file at {path} ({why}); give the path of a CSV or TSV file of ratings")
    wanted = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": None}
    data, _ = _read_table(str(path), functools.partial(open, path, "rb"), wanted, quiet)
    movies = path.with_name("movies.csv")  # the layout of MovieLens's own zips
    data["titles"] = {}
    if movies.is_file():
        try:
            data["titles"] = _read_titles(str(movies), functools.partial(open, movies, "rb"),
                                          int_ids=data["item"].dtype.kind == "i")
        except DataError as e:  # titles only decorate the output: say why they are missing, and go on
            _warn(f"{e}; going on without titles", quiet)
    return data


def _read_table(where, opener, wanted, quiet=False):
    """({role: array}, column names) from a text stream; wanted maps each role to a column name or None."""
    try:
        opener = _unwrap(where, opener)
        layout = _layout(where, opener, wanted)
        data = _read_fast(opener, layout)
        if data is None:  # some row is not plain: the exact reader decides, and names the line of a bad one
            encoding = _encoding(opener)
            if encoding != "utf-8-sig":
                _warn(f"{where} is not UTF-8; reading it as {encoding}", quiet)
            layout = _layout(where, opener, wanted, encoding)  # the header again, decoded as the file is
            data = _read_exact(where, opener, layout, encoding, quiet)
    except READ_ERRORS as e:
        raise DataError(f"{where}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not len(data["rating"]):
        raise DataError(f"{where} has a header ({', '.join(map(_show, layout.names))}) but no data rows")
    if not layout.has_header and any(wanted[role] is None for role in ROLES):
        taken = ", ".join(f"{layout.cols[role] + 1} as {role}" for role in ROLES)
        _warn(f"{where} has no header (its first line is numbers): all lines are data, columns {taken}",
              quiet)
    elif layout.guessed:  # films taken for users, say, must not pass in silence
        taken = ", ".join(f"{_show(layout.names[layout.cols[role]])} as {role}" for role in layout.guessed)
        roles = " or ".join(layout.guessed).replace(" or ", ", ", len(layout.guessed) - 2)  # a, b or c
        _warn(f"{where}: the header names no {roles} column we know, so columns were "
              f"taken by position: {taken}; if that is wrong, choose with --user-col, --item-col, "
              "--rating-col", quiet)
    chosen = {r for r in ROLES if wanted[r] is not None  # the caller named it, and a column named like it
              and _norm(layout.names[layout.cols[r]]) in ROLE_NAMES[r]}
    unused = [s for i, s in enumerate(layout.names) if layout.has_header and i not in layout.cols.values()
              and any(_norm(s) in ROLE_NAMES[r] for r in set(ROLES) - chosen)
              and not _norm(s).endswith("title")]
    if unused:  # --user-col timestamp, say: the userId column would go unread in silence
        _warn(f"{where}: {', '.join(map(_show, unused))} left unused, though named like a user, item or "
              "rating column; choose with --user-col, --item-col, --rating-col", quiet)
    return data, layout.names


def _unwrap(where, opener):
    """Check what a stream holds; an opener of it as ASCII-compatible bytes (gzip undone, UTF-16 recoded)."""
    head = _head(opener)
    if head.startswith(b"\x1f\x8b"):  # gzip's magic bytes
        opener = functools.partial(_gunzip, opener)
        head = _head(opener)
    if not head:
        raise DataError(f"{where} is empty; it needs a line per rating: user, item, rating")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise DataError(f"{where} is a zip archive; unzip it and pass the ratings file inside, or for a "
                        "MovieLens zip use `python data_fetch.py --name NAME --from-file ZIP`")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        opener = functools.partial(_utf16_as_utf8, where, opener)
        head = _head(opener)
    elif b"\0" in head:
        raise DataError(f"{where} is not a text file (it holds NUL bytes); give a CSV or TSV file "
                        "(UTF-16 needs its byte-order mark)")
    if b"\r" in head and b"\n" not in head:  # old Macs ended lines with \r alone
        opener = functools.partial(_cr_as_lf, opener)
    return opener


def _head(opener):
    """The first 64 KiB of a stream."""
    with opener() as f:
        return f.read(1 << 16)


@contextlib.contextmanager
def _gunzip(opener):
    """A gzip stream, decompressed as it is read."""
    with opener() as raw, gzip.GzipFile(fileobj=raw) as f:
        yield f


@contextlib.contextmanager
def _utf16_as_utf8(where, opener):
    """A UTF-16 stream as UTF-8 bytes, recoded in memory: such files come from Excel, and are small."""
    with opener() as f:
        raw = f.read()
    try:
        text = raw.decode("utf-16")
    except UnicodeDecodeError as e:
        raise DataError(f"{where} starts like UTF-16 but is not ({e.reason}); save it as UTF-8") from None
    yield io.BytesIO(text.encode())


class _CRAsLF(io.RawIOBase):
    """A binary stream whose every CR byte reads as LF."""

    def __init__(self, raw):
        self.raw = raw

    def readable(self):
        return True

    def readinto(self, b):
        data = self.raw.read(len(b)).replace(b"\r", b"\n")
        b[:len(data)] = data
        return len(data)


@contextlib.contextmanager
def _cr_as_lf(opener):
    """A stream whose CR line ends read as LF, translated as it is read: the readers see plain lines."""
    with opener() as raw:
        yield io.BufferedReader(_CRAsLF(raw), CHUNK)


def _encoding(opener):
    """'utf-8-sig' if the whole stream is UTF-8 (BOM or not), else 'cp1252' (Excel's), else 'latin-1'."""
    for encoding in ("utf-8-sig", "cp1252"):
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            with opener() as f:
                while chunk := f.read(CHUNK):
                    decoder.decode(chunk)
            decoder.decode(b"", final=True)
            return encoding
        except UnicodeDecodeError:
            pass
    return "latin-1"  # every byte is a latin-1 character


def _decode(line, encoding=None):
    """One line's bytes as text: in encoding if given, else UTF-8, else cp1252, else latin-1."""
    for enc in [encoding] if encoding else ["utf-8", "cp1252", "latin-1"]:
        with contextlib.suppress(UnicodeDecodeError):
            return line.decode(enc)


# lines before the data, the delimiter, the column names, whether the file has a header, {role: column index},
# and the roles whose column was taken by position (neither named by the caller nor known by its name)
Layout = collections.namedtuple("Layout", "skip delimiter names has_header cols guessed")


def _layout(where, opener, wanted, encoding=None):
    """Lines before the data, the delimiter, the column names and the column of each role."""
    with opener() as f:
        for n, line in enumerate(f, 1):
            line = line.removeprefix(codecs.BOM_UTF8) if n == 1 else line
            if line.strip() and not line.startswith(b"#"):
                break
        else:
            raise DataError(f"{where} holds only blank lines and comments; it needs a line per rating")
    text = _decode(line, encoding)
    delimiter = _delimiter(text)
    fields = _split(text, delimiter, where, n)
    has_header = not all(NUMBER.fullmatch(s) for s in fields)
    names = fields if has_header else [str(i) for i in range(1, len(fields) + 1)]  # --user-col 2 can name one
    cols, guessed = _pick(where, names, wanted, has_header)
    return Layout(n if has_header else n - 1, delimiter, names, has_header, cols, guessed)


def _delimiter(line):
    """'::' if the line holds it (MovieLens's .dat files), else the commonest of tab, comma, ';' and '|'."""
    return "::" if "::" in line else max("\t,;|", key=line.count)  # a tie goes to the earlier


def _split(line, delimiter, where, n):
    """Line n's fields, each stripped of spaces: by the csv module's rules (quotes) for tab, comma and ';'."""
    line = line.rstrip("\r\n")
    if '"' in line and delimiter in "\t,;":
        try:  # skipinitialspace: `1, "Heat, The", 5` as people type it
            fields = next(csv.reader([line], delimiter=delimiter, skipinitialspace=True))
        except csv.Error as e:
            why = str(e).split(" - ")[0]  # not its advice to open the file in universal-newline mode
            raise DataError(f"{where}, line {n}: not readable as CSV ({why}); check that it is a text "
                            "file of ratings, and fix or remove that line") from None
    else:
        fields = line.split(delimiter)  # '|' and '::': MovieLens's u.item and movies.dat quote nothing
    return [s.strip() for s in fields]


def _norm(name):
    """A column name as ROLE_NAMES spells it: 'User ID' -> 'userid'."""
    return re.sub(r"[\s_-]", "", name.lower())


def _show(name):
    """A column name as messages print it: quoted where spaces or punctuation would blur it."""
    return name if re.fullmatch(r"[\w.:-]+", name) else repr(name)


def _pick(where, names, wanted, has_header):
    """{role: column index}: the caller's names first, then names we know, then the first columns left."""
    found = ", ".join(map(_show, names))
    if len(names) < 3:
        raise DataError(f"{where} has {len(names)} column{'s' * (len(names) > 1)} ({found}); a ratings file "
                        "needs user, item and rating columns, separated by comma, tab, ';', '|' or '::'")
    cols = {}
    for role, name in wanted.items():
        if name is not None:
            i = _column(where, names, str(name).strip(), found, has_header)
            if i in cols.values():
                other = next(r for r, j in cols.items() if j == i)
                raise DataError(f"{where}: column {names[i]!r} is named for both the {other} and the {role}; "
                                "each needs its own column")
            cols[role] = i
    for role in wanted:  # userId, movieId, rating, timestamp and their common spellings
        if role not in cols and has_header:
            known = [i for i, s in enumerate(names) if _norm(s) in ROLE_NAMES[role]]
            free = sorted((i for i in known if i not in cols.values()),
                          key=lambda i: _norm(names[i]).endswith("title"))  # movieId before movie_title
            if free:
                cols[role] = free[0]
            elif known and role in ROLES:  # --user-col rating: the rating would silently become userId
                other = next(r for r, j in cols.items() if j == known[0])
                raise DataError(f"{where}: column {names[known[0]]!r} is the {role} by its name, and "
                                f"--{other}-col takes it for the {other}; name the {role} with --{role}-col")
    guessed = tuple(role for role in ROLES if role not in cols)
    for role in guessed:
        left = [i for i in range(len(names)) if i not in cols.values()]
        if not left:
            raise DataError(f"{where}: no column is left for the {role} (columns found: {found}); "
                            f"pick it with --{role}-col")
        cols[role] = left[0]
    for i in cols.values():
        if names.count(names[i]) > 1:
            raise DataError(f"{where}: {names.count(names[i])} columns are named {names[i]!r}; rename them so"
                            " that user, item and rating each have a column of their own")
    return cols, guessed


def _column(where, names, name, found, has_header):
    """The index of the column the caller named: exactly, else the one that differs only in case."""
    if name in names:
        return names.index(name)
    same = [i for i, s in enumerate(names) if s.lower() == name.lower()]
    if len(same) == 1:
        return same[0]
    hint = ("pick user, item and rating with --user-col, --item-col, --rating-col" if has_header
            else f"the file has no header: name columns by number, 1 to {len(names)}")
    raise DataError(f"{where}: no column {name!r}; columns found: {found} ({hint})")


def _read_fast(opener, layout):
    """Plain numeric rows, a chunk at a time by numpy's C parser; None if a row needs the exact reader."""
    kinds = ["S24"] * len(layout.names)  # columns no role uses: read as text only to count their bytes
    for role, i in layout.cols.items():
        kinds[i] = "S8" if role == "rating" else "i8"  # ratings as text: numpy parses floats 2x slower
    dtype = np.dtype([(f"c{i}", kind) for i, kind in enumerate(kinds)])
    out = {role: np.empty(0, np.float32 if role == "rating" else np.int64) for role in layout.cols}
    n, table = 0, {}  # rows so far; the distinct rating texts seen so far, and their values
    with opener() as f:
        for _ in range(layout.skip):
            f.readline()
        while chunk := f.read(CHUNK) + f.readline():  # whole lines only
            rows = _parse_chunk(chunk.removeprefix(codecs.BOM_UTF8), layout.delimiter, dtype)
            ratings = None if rows is None else _ratings(rows[f"c{layout.cols['rating']}"], table)
            if ratings is None or not (np.abs(ratings) <= MAX_RATING).all():  # NaN, inf, 1e39 too
                return None  # the exact reader names the line
            for role, i in layout.cols.items():
                out[role] = _grow(out[role], n + len(rows))
                out[role][n:n + len(rows)] = ratings if role == "rating" else rows[f"c{i}"]
            n += len(rows)
    data = {role: out[role][:n] for role in OUT if role in out}
    return data if np.isfinite(data["rating"]).all() else None  # the exact reader names the line of a NaN


def _grow(a, n):
    """a, or if it is shorter than n, a copy in an array twice as long (whose unused pages cost no memory)."""
    if n <= len(a):
        return a
    b = np.empty(max(n, 2 * len(a)), a.dtype)
    b[:len(a)] = a
    return b


def _parse_chunk(chunk, delimiter, dtype):
    """Whole lines of bytes -> a structured array, or None unless every row and id is written plainly."""
    if b"\r" in chunk:
        chunk = chunk.replace(b"\r\n", b"\n")  # numpy drops the \r, which would upset the byte count below
    if delimiter == "::":
        if b"," in chunk:  # it would become a delimiter too
            return None
        chunk, delimiter = chunk.replace(b"::", b","), ","
    chunk = _unpad(chunk, delimiter.encode())
    if not chunk.strip(b"\n"):  # blank lines only
        return np.zeros(0, dtype)
    if not chunk.isascii():  # then the encoding matters: the exact reader works it out
        return None
    try:  # numpy skips blank lines
        rows = np.loadtxt(io.BytesIO(chunk), dtype=dtype, delimiter=delimiter, comments=None, quotechar=None,
                          encoding="latin-1", ndmin=1)
    except ValueError:  # too few or too many fields, a word where an int goes, an int beyond int64
        return None
    # numpy also reads '+7', ' 7', '007' and '-0' as ints, and cuts long texts short; each of those is longer
    # than what we count for it, so the rows add up to the chunk's length only if every field is plain
    n_bytes = (len(dtype.names) - 1) * len(rows) + chunk.count(b"\n")  # delimiters, and newlines
    for name in dtype.names:
        column = rows[name]
        n_bytes += _n_digits(column) if column.dtype.kind == "i" else np.strings.str_len(column).sum()
    return rows if n_bytes == len(chunk) else None


def _unpad(chunk, d):
    """Lines of bytes without spaces typed around fields (tabs too, unless they split fields): `1, 10, 5`."""
    for pad in b" \t".replace(d, b""):
        pad = bytes([pad])
        if pad not in chunk:  # a plain file pays for this check only
            continue
        chunk = chunk.strip(pad)
        for padded, bare in ((pad + d, d), (d + pad, d), (pad + b"\n", b"\n"), (b"\n" + pad, b"\n")):
            while padded in chunk:  # a run of n spaces goes in n passes, each a fast bytes.replace
                chunk = chunk.replace(padded, bare)
    return chunk  # a space left (' \t ,') makes the byte count below fail: the exact reader strips it


def _n_digits(v):
    """The characters of all these int64s written plainly, '-' included (-2**63 counts short: no harm)."""
    a = np.abs(v)
    n_digits = np.searchsorted(POW10, a.max(initial=0), side="right") + 1  # of the longest
    return len(v) + np.count_nonzero(v < 0) + sum(np.count_nonzero(a >= p) for p in POW10[:n_digits - 1])


def _ratings(texts, table):
    """Rating texts ('S8') -> float64, each distinct one parsed once by float(); None if one is no number."""
    codes = texts.view(np.uint64)  # equal texts, equal codes: 8 bytes each
    try:
        if not table.get("many"):
            keys = table.get("keys", np.zeros(0, np.uint64))
            pos = np.searchsorted(keys, codes)
            if len(keys) and (keys.take(pos, mode="clip") == codes).all():
                return table["values"][pos]
            keys = np.union1d(keys, codes)  # texts not seen before: add them
            table["many"] = len(keys) > 1000  # a file of predictions, say: then numpy parses every text
            if not table["many"]:
                table["keys"] = keys
                table["values"] = np.array([float(k.tobytes().rstrip(b"\0")) for k in keys])
                return table["values"][np.searchsorted(keys, codes)]
        return texts.astype(np.float64)
    except ValueError:
        return None


def _read_exact(where, opener, layout, encoding, quiet):
    """Row by row, with the csv module's quoting: any text, any spacing; names the line of a bad row."""
    cols = layout.cols
    need = max(cols.values()) + 1
    texts = {role: [] for role in cols if role != "rating"}
    parts = {role: [] for role in texts}
    ratings = array.array("d")

    def pack():
        for role, t in texts.items():
            parts[role].append(np.array(t, dtype=str))
            t.clear()

    with opener() as raw:
        for n, line in enumerate(io.TextIOWrapper(raw, encoding=encoding, newline=""), 1):
            if n <= layout.skip or not line.strip() or line.startswith("#"):
                continue
            row = _split(line, layout.delimiter, where, n)
            if len(row) < need:
                needed = ", ".join(_show(layout.names[i]) for i in cols.values())
                raise DataError(f"{where}, line {n}: too few fields ({len(row)}, and {needed} need {need}); "
                                "fix or remove that line")
            text = row[cols["rating"]]
            try:
                rating = float(text)
            except ValueError:
                hint = " (write decimals with a dot)" if re.fullmatch(r"\s*\d*,\d+\s*", text) else ""
                raise DataError(f"{where}, line {n}: rating {text!r} is not a number{hint}; "
                                "fix or remove that line") from None
            if not math.isfinite(rating):
                raise DataError(f"{where}, line {n}: rating is {text.strip()}; remove or fill that row")
            if abs(rating) > MAX_RATING:  # its square would overflow float32 training
                raise DataError(f"{where}, line {n}: rating {text.strip()} is beyond ±{MAX_RATING:,.0f}; "
                                "rescale the ratings")
            ratings.append(rating)
            for role, t in texts.items():
                t.append(row[cols[role]])
            if len(ratings) % BATCH == 0:
                pack()
    pack()
    data = {role: np.concatenate(parts[role]) for role in parts}
    data["user"], data["item"] = (_ids(data[role], where, role, quiet) for role in ("user", "item"))
    data["rating"] = np.array(ratings, dtype=np.float32)
    if "timestamp" in data:
        try:
            data["timestamp"] = data["timestamp"].astype(np.int64)
        except (ValueError, OverflowError):
            _warn(f"{where}: the timestamps are not all whole numbers, so they are left out", quiet)
            del data["timestamp"]
    return {role: data[role] for role in OUT if role in data}


def _is_plain_int(s):
    """True if s is an int64 as str(int(s)) writes it: no '+', space, '_', leading 0 or non-ASCII digit."""
    return len(s) <= 20 and PLAIN_INT.fullmatch(s) is not None and -2**63 <= int(s) < 2**63


def _ids(texts, where, role, quiet):
    """Id texts -> int64 if every one is a plain integer, else left as text (so '007' and '7' stay apart)."""
    distinct = np.unique(texts).tolist()
    odd = next((s for s in distinct if not _is_plain_int(s)), None)
    if odd is None:
        return texts.astype(np.int64)
    if any(_is_plain_int(s) for s in distinct):  # mostly numbers: say why they stay text
        _warn(f"{where}: {role} ids are kept as text, as {odd!r} is not a plain 64-bit integer; so, e.g., "
              f"'07' and '7' are different {role}s", quiet)
    return texts


def _read_titles(where, opener, int_ids, encoding=None):
    """{item id: title} from movies.csv (a header, quoted titles), movies.dat ('::') or u.item ('|')."""
    titles, id_col = {}, None
    try:
        opener = _unwrap(where, opener)
        encoding = encoding or _encoding(opener)
        with opener() as raw:
            for n, line in enumerate(io.TextIOWrapper(raw, encoding=encoding, newline=""), 1):
                if not line.strip() or line.startswith("#"):
                    continue
                if id_col is None:  # the first line: a header, or already a movie
                    delimiter = _delimiter(line)
                    names = [_norm(s) for s in _split(line, delimiter, where, n)]
                    has_header = "title" in names or names[0] in ROLE_NAMES["item"]
                    ids = [i for i, s in enumerate(names) if s in ROLE_NAMES["item"]] if has_header else []
                    id_col = (ids or [0])[0]
                    title_col = names.index("title") if "title" in names else 1
                    if has_header:
                        continue
                row = _split(line, delimiter, where, n)
                if len(row) > max(id_col, title_col):
                    key = row[id_col]
                    titles[int(key) if int_ids and _is_plain_int(key) else key] = row[title_col]  # like items
    except READ_ERRORS as e:
        raise DataError(f"{where}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    return titles

# -----------------------------------------------------------------------------
# verified, atomic writes and downloads


def check_sha256(expected):
    """A verify function: raises ValueError unless the file's SHA-256 is `expected`."""
    def verify(path):
        with open(path, "rb") as f:
            got = hashlib.file_digest(f, "sha256").hexdigest()
        if got != expected:
            raise ValueError(f"SHA-256 mismatch: got {got[:16]}..., expected {expected[:16]}..., "
                             "file discarded")
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
    # a killed run's temp directory is cleaned up by a later run
    with tempfile.TemporaryDirectory(prefix=".partial-wheel-", dir=d) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--quiet", "--timeout", str(TIMEOUT), "--retries", str(RETRIES),
               "--dest", tmp, WHEEL]
        r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=10 * TIMEOUT)
        if r.returncode:
            raise OSError((r.stderr.strip().splitlines() or [f"pip exited with {r.returncode}"])[-1])
        (wheel,) = pathlib.Path(tmp).glob("*.whl")
        check_sha256(WHEEL_SHA256)(wheel)
        with zipfile.ZipFile(wheel) as z:
            for name, sha in WHEEL_FILES.items():
                install(d / name, lambda f: f.write(z.read(WHEEL_DIR + name)), check_sha256(sha))

# -----------------------------------------------------------------------------
# MovieLens readers: every source ends as the same dict of numpy arrays and titles


def _result(a, titles):
    """The loader's dict from an (n, 4) array of user, item, rating, timestamp."""
    user, item, rating, timestamp = a.T  # each (n,); astype copies them into contiguous arrays
    return {"user": user.astype(np.int64), "item": item.astype(np.int64), "rating": rating.astype(np.float32),
            "timestamp": timestamp.astype(np.int64), "titles": titles}


@contextlib.contextmanager
def _zip_member(path, member):
    """One file in a zip, streamed: the big ratings files are never written out."""
    with zipfile.ZipFile(path) as z, z.open(member) as f:
        yield f


def read_movielens_zip(name, path):
    """Ratings, timestamps and titles from the GroupLens zip of MovieLens `name`; ValueError if it is not."""
    folder, ratings, movies, encoding = MOVIELENS[name]
    ratings, movies = f"{folder}/{ratings}", f"{folder}/{movies}"
    headed = ratings.endswith(".csv")  # u.data and the .dat files are bare: user, item, rating, timestamp
    columns = CSV_COLUMNS if headed else ["1", "2", "3", "4"]
    wanted = dict(zip(OUT, [None] * 4 if headed else columns))  # a csv's columns are known by their names
    try:
        with zipfile.ZipFile(path) as z:
            missing = [m for m in (ratings, movies) if m not in z.namelist()]
        if missing:
            raise ValueError(f"no {missing[0]} in the zip")
        data, names = _read_table(ratings, functools.partial(_zip_member, path, ratings), wanted, quiet=True)
        if names != columns:
            raise ValueError(f"{ratings} has columns {', '.join(names)}, not {', '.join(columns)}")
        if data["user"].dtype.kind != "i" or data["item"].dtype.kind != "i" or "timestamp" not in data:
            raise ValueError(f"{ratings} has ids or timestamps that are not integers")
        if not ((data["rating"] >= 0.5) & (data["rating"] <= 5)).all():
            raise ValueError(f"{ratings} has ratings outside 0.5..5")
        data["titles"] = _read_titles(movies, functools.partial(_zip_member, path, movies), True, encoding)
        if not data["titles"]:
            raise ValueError(f"{movies} holds no titles")
    except (zipfile.BadZipFile, ValueError) as e:  # DataError is a ValueError
        raise ValueError(f"not {name}: {e}") from None
    return data


def read_ml100k_zip(path):
    """Ratings and titles from the GroupLens zip: u.data (tab-separated) and u.item (|-separated, latin-1)."""
    return read_movielens_zip("ml-100k", path)


def read_recbole(inter, item):
    """Ratings and titles from recbole's ml-100k.inter and ml-100k.item (tab-separated, with a header)."""
    a = np.array(inter.read_bytes().split(b"\n", 1)[1].split(), dtype=np.int64).reshape(-1, 4)  # (n, 4)
    titles = {}
    for line in item.read_text(encoding="utf-8").splitlines()[1:]:
        i, title, year = line.split("\t")[:3]
        # recbole split u.item's "Title (year)" in two; glue it back. u.item calls item 267 "unknown"
        titles[int(i)] = "unknown" if title == "unkonwn" else f"{title} ({year})"
    return _result(a, titles)

# -----------------------------------------------------------------------------
# finding the data: from a file, the cache, GroupLens, PyPI, in that order


def _writable(d):
    """Create the cache directory if needed; fail with a clear message if we cannot write there."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=d).close()
    except OSError as e:
        why = "it is a file, not a directory" if d.is_file() else e.strerror or e
        raise DataError(f"cannot write to cache directory {d} ({why}); "
                        f"choose another with MINICOLLAB_DATA=DIR (or data_fetch.py --dir DIR)") from None


def _cached(path, verify, quiet):
    """True if path exists and passes verify; one that fails (truncated, edited) is removed, to refetch."""
    if not path.exists():
        return False
    try:
        verify(path)
        return True
    except ValueError as e:
        if not quiet:
            print(f"warning: {path} failed its check ({e}); fetching it again", file=sys.stderr)
        with contextlib.suppress(OSError):  # gone already; a read-only cache is reported when we write
            path.unlink()
        return False


def _find(name, d, from_file, quiet):
    """(path, source, data) of verified data for name, fetched into d if need be; data if checking read it."""
    url, zip_path = URLS[name], d / f"{name}.zip"
    sha = ML100K_SHA256 if name == "ml-100k" else SHA256.get(name)
    checked = {}

    def read_and_keep(path):  # no pinned hash, as GroupLens updates these zips: read them whole, check them
        checked["data"] = read_movielens_zip(name, path)  # kept, so that it is not read twice
    verify = check_sha256(sha) if sha else read_and_keep
    wheel_files = [d / f for f in WHEEL_FILES] if name == "ml-100k" else []
    if from_file:
        src = pathlib.Path(from_file).expanduser()
        if not zipfile.is_zipfile(src):
            what = "is a directory" if src.is_dir() else "does not exist"
            what = "is not a zip file" if src.is_file() else what
            raise DataError(f"{src} {what}; pass the path of the {zip_path.name} you downloaded from {url}")
        _writable(d)
        try:
            install(zip_path, lambda f: f.write(src.read_bytes()), verify)
        except ValueError as e:
            raise DataError(f"{src} is not the {zip_path.name} from GroupLens ({e}); "
                            f"download it from {url}") from None
        return zip_path, f"file {src}", checked.get("data")
    if _cached(zip_path, verify, quiet):
        return zip_path, "cache", checked.get("data")
    if wheel_files and all(_cached(p, check_sha256(WHEEL_FILES[p.name]), quiet) for p in wheel_files):
        return wheel_files[0], "cache", None
    _writable(d)
    tried = []
    try:
        install(zip_path, lambda f: download(url, f, quiet), verify)
        return zip_path, url, checked.get("data")
    except Exception as e:  # whatever went wrong with one source, try the next and report it at the end
        why = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)  # URLError's str: noisy
        tried.append(f"{url}: {why}")
    if wheel_files:  # only ml-100k has a copy on PyPI
        if not quiet and sys.stderr.isatty():  # logs get the one summary line below
            print(f"{tried[0]}; trying pip download {WHEEL}", file=sys.stderr)
        try:
            fetch_wheel(d)
            return wheel_files[0], f"PyPI wheel {WHEEL}", None
        except Exception as e:
            tried.append(f"pip download {WHEEL}: {e}")
    flag = "" if name == "ml-100k" else f" --name {name}"
    raise DataError(f"could not fetch {name} (tried {'; '.join(tried)}); download {url} by hand "
                    f"to {zip_path}, or run `python data_fetch.py{flag} --from-file PATH`")


def _remove_stale(d):
    """Delete temp files left by a killed run; a live download keeps its own fresh, so it is spared."""
    for p in d.glob(".partial-*"):
        with contextlib.suppress(OSError):  # gone already, or a read-only cache: harmless either way
            if time.time() - p.stat().st_mtime > STALE:
                shutil.rmtree(p) if p.is_dir() else p.unlink()


def load(name=None, ratings=None, user_col=None, item_col=None, rating_col=None):
    """minicollab's data: a ratings file of one's own, else a MovieLens by name (ml-100k by default)."""
    if name and ratings:
        raise DataError("give --data NAME or --ratings FILE, not both")
    if (user_col or item_col or rating_col) and not ratings:
        raise DataError("--user-col and the like pick columns of --ratings FILE")
    if not ratings:  # where it came from is part of a run's output: stderr is for what went wrong
        return load_movielens("ml-100k" if name is None else name, summary=sys.stdout)
    data = read_ratings(ratings, user_col, item_col, rating_col)
    if len(data["rating"]) < 2:
        raise DataError(f"{ratings} holds 1 rating; training and validating need at least two")
    return data


def load_movielens(name="ml-100k", dir=None, from_file=None, quiet=False, summary=None):
    """MovieLens ratings as numpy arrays plus {item id: title}, fetched and verified first if need be."""
    if name not in URLS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(URLS)}")
    d = cache_dir(dir)
    _remove_stale(d)
    path, source, data = _find(name, d, from_file, quiet)
    if data is None and path.suffix == ".inter":
        data = read_recbole(path, path.with_suffix(".item"))
    elif data is None:
        try:
            data = read_movielens_zip(name, path)
        except ValueError as e:  # a zip that matches its pinned hash reads; tests' stand-ins may not
            raise DataError(f"{path}: {e}") from None
    data.update(source=source, path=path)
    if not quiet:
        print(f"{name}: {len(data['rating']):,} ratings from {source} (cached at {path})",
              file=summary or sys.stderr)
    return data


def _refuse(message):
    """argparse's complaint as one line and exit status 1, as minicollab.py does."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv=None):
    """Command line: make the data available, say where it is, where it came from, and what it holds."""
    p = argparse.ArgumentParser(description="Fetch and verify MovieLens for minicollab (asks no questions).")
    p.add_argument("--name", choices=list(URLS), default="ml-100k")
    p.add_argument("--dir", help="cache directory (default: $MINICOLLAB_DATA, else ~/.cache/minicollab)")
    p.add_argument("--from-file", metavar="PATH", help="use a zip you downloaded by hand")
    p.error = _refuse
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
    try:
        print(f"{args.name}: {len(data['rating']):,} ratings, {n_users:,} users, {n_items:,} items, "
              f"mean rating {data['rating'].mean():.3f}; item 1 is {data['titles'].get(1)!r}")
        print(f"source: {data['source']}\npath:   {data['path']}")
        sys.stdout.flush()  # a closed stdout shows here, not in the flush at exit
    except BrokenPipeError:  # stdout closed early (| head): stop quietly, the exit's flush too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
