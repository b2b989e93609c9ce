"""Tests for data_fetch.py's ratings reader and its MovieLens sets, on tiny files written here and zips served from
127.0.0.1 (to be merged into test_minicollab.py)."""

import codecs
import csv
import gzip
import hashlib
import http.server
import io
import math
import pathlib
import socket
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

import data_fetch
from data_fetch import DataError, load_movielens, read_ratings

HERE = pathlib.Path(__file__).resolve().parent
RATINGS_CSV = "userId,movieId,rating,timestamp\n1,10,4.0,100\n2,10,3.5,101\n1,9,5,102\n3,20,1,103\n"
MOVIES_CSV = 'movieId,title,genres\n9,"Heat, The (1995)",Action\n10,Amélie (2001),Comedy\n'


def write(path, text, encoding="utf-8"):
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path


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


# ---- read_ratings: what it returns, and the fast reader checked against the exact one ---------------------------

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

@pytest.mark.parametrize("odd, plain", [("007", "7"), ("+3", "3"), ("1_1", "11"), ("٣", "3"), (" 7", "7"),
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


def sha256_of(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def trust(monkeypatch, name, path):
    """Patch the pinned SHA-256 of name (if it has one) to that of path."""
    if name == "ml-100k":
        monkeypatch.setattr(data_fetch, "ML100K_SHA256", sha256_of(path))
    elif name in data_fetch.SHA256:
        monkeypatch.setitem(data_fetch.SHA256, name, sha256_of(path))


@pytest.fixture
def http_server(monkeypatch):
    """An HTTP server on 127.0.0.1 (port 0, own thread) serving .files; .hits lists the paths asked for."""
    monkeypatch.setenv("no_proxy", "*")  # talk to it directly even where a proxy is set
    files, hits = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = files.get(self.path)
            if body is None:
                return self.send_error(404)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    srv.files, srv.hits, srv.url = files, hits, f"http://127.0.0.1:{srv.server_port}"
    yield srv
    srv.shutdown()
    srv.server_close()


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


@pytest.fixture
def closed_url(monkeypatch):
    """A URL on a local port nobody listens on: connection refused, at once."""
    monkeypatch.setenv("no_proxy", "*")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/x.zip"


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
