"""Images that live elsewhere: ``http(s)://`` URLs, ``s3://`` objects and prefixes, webdataset
``.tar`` shards (local or on S3, with brace patterns such as ``shard-{0000..0099}.tar``), parquet
files holding image bytes, and URL lists (``.txt``, ``.csv``, ``.parquet``), as img2dataset reads
them. No torch here.

Every remote image is one :class:`~clair_vec.retrieval.sources.ImageSource` whose name is its URI
(credentials left out: a stored record never holds them) and whose ``fetch`` returns its bytes.
A record's id is the hash of those bytes, so re-runs, resumed runs and the same images from local
disk all give the same ids. A fetch that fails for a reason that may pass (a timeout, a reset, a
5xx or 429 answer, a truncated body) is retried with exponential backoff; one that will not (404,
403) is not. Either way the image is skipped and reported by name; the run goes on.

An ``http(s)`` URL's credentials come from its user info, or else from the netrc file (``$NETRC``,
default ``~/.netrc``) entry of its host, as ``curl --netrc`` reads it (never its ``default``
entry): stored URIs keep no credentials,
so ``reindex`` of a password-protected gallery finds them there.

S3 goes through Arrow's own filesystem (``pyarrow.fs.S3FileSystem``): any S3-compatible endpoint
via ``AWS_ENDPOINT_URL``, credentials from the standard AWS chain.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import csv
import functools
import hashlib
import http.client
import io
import logging
import netrc
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from clair_vec.datasets.images import IMAGE_SUFFIXES
from clair_vec.errors import CorruptImageError, DatasetError
from clair_vec.store.redaction import register_secret, uri_secrets, without_credentials

REMOTE = ("http://", "https://", "s3://")
#: the largest image fetched: a URL list pointing at a video must not fill the memory
MAX_BYTES = 64 << 20
#: tries after the first, the first wait (doubling), and the seconds a fetch may take; the
#: environment may change them (a slow link wants a longer timeout)
RETRIES = int(os.environ.get("CLAIR_VEC_FETCH_RETRIES", "3"))
BACKOFF = float(os.environ.get("CLAIR_VEC_FETCH_BACKOFF", "0.5"))
TIMEOUT = float(os.environ.get("CLAIR_VEC_FETCH_TIMEOUT", "30"))
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
_BRACE = re.compile(r"\{([^{}]*)\}")
_WDS_NAME = re.compile(r"^((?:.*/|)[^.]+)\.([^/]*)$")  # webdataset's own split of a member name into key and extension
MAX_SHARDS = 100_000
log = logging.getLogger(__name__)


def is_remote(name: object) -> bool:
    return isinstance(name, str) and name[:8].lower().startswith(REMOTE)


def shown(uri: str) -> str:
    """The URI as it is stored and printed: user info and credential-like parameters left out; the
    secrets themselves registered, so that no log line or error repeats them."""
    for secret in uri_secrets(uri):
        register_secret(secret)
    return without_credentials(uri)


class _Transient(Exception):
    """A failure worth another try."""


def _retry(uri: str, once: Callable[[], bytes], *, retries: int = RETRIES, backoff: float = BACKOFF) -> bytes:
    name = shown(uri)
    for attempt in range(retries + 1):
        try:
            return once()
        except _Transient as exc:
            if attempt == retries:
                raise CorruptImageError(name, f"{exc} (gave up after {retries + 1} tries)") from None
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def _read_limited(stream, name: str, *, limit: int = MAX_BYTES, deadline: float | None = None, out=None) -> bytes:
    """At most ``limit`` bytes of ``stream``, by chunks, before ``deadline`` (a server that drips
    a byte at a time must not hold a worker forever); into ``out`` when given."""
    chunks, total = [], 0
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise CorruptImageError(name, f"larger than {limit >> 20} MiB; not fetched")
        if deadline is not None and time.monotonic() > deadline:
            raise _Transient(f"slower than {TIMEOUT:g} s in all (CLAIR_VEC_FETCH_TIMEOUT)")
        if out is None:
            chunks.append(chunk)
        else:
            out.write(chunk)
    return b"".join(chunks)


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects to http(s) only, and credentials only to the host they were given for."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 (the stdlib's signature)
        new = urllib.parse.urlsplit(newurl)
        if new.scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirected to a {new.scheme or 'relative'}: URL, not followed",
                                         headers, fp)  # fmt: skip
        out = super().redirect_request(req, fp, code, msg, headers, newurl)
        old = urllib.parse.urlsplit(req.full_url)
        if out is not None and (new.netloc.lower() != old.netloc.lower() or new.scheme.lower() != old.scheme.lower()):
            out.remove_header("Authorization")  # another host, or https sent down to cleartext http
        return out


_OPENER = urllib.request.build_opener(_SameHostRedirects())


def _request(url: str) -> urllib.request.Request:
    """A request for ``url``: its user info sent as basic auth (as curl does; urllib would put it
    in the host name), never left in the URL itself."""
    parts = urllib.parse.urlsplit(url)
    headers = {"User-Agent": "clair-vec"}
    if parts.username is not None:
        user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    else:
        user, password = _netrc_login(parts.hostname or "")
    if user is not None:
        register_secret(password)
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return urllib.request.Request(url, headers=headers)


def _netrc_login(host: str) -> tuple[str | None, str]:
    """The login and password the netrc file holds for ``host`` itself. Its ``default`` entry is
    never used: a URL list names hosts the user never chose to send a password to."""
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    if not host:
        return None, ""
    try:
        hosts = _read_netrc(path, os.path.getmtime(path)).hosts
    except FileNotFoundError:
        return None, ""
    except (netrc.NetrcParseError, OSError, UnicodeDecodeError) as exc:
        # a broken file must not stop public URLs; the file's own text is never repeated (it holds passwords)
        _warn_once(f"cannot read the netrc file {path} ({type(exc).__name__} at line {getattr(exc, 'lineno', '?')}); "
                   "fetching without its credentials: fix it, or point $NETRC at another")  # fmt: skip
        return None, ""
    entry = next((v for k, v in hosts.items() if k.lower() == host.lower()), None)
    return (entry[0], entry[2] or "") if entry else (None, "")


@functools.lru_cache(maxsize=4)
def _read_netrc(path: str, _mtime: float) -> netrc.netrc:  # the mtime in the key: an edited file is read again
    return netrc.netrc(path)


_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()  # 16 fetch threads meet the same broken file at once


def _warn_once(message: str) -> None:
    with _WARNED_LOCK:
        if message in _WARNED:
            return
        _WARNED.add(message)
    log.warning("%s", message)


def _http(url: str, name: str, *, timeout: float, limit: int, out=None) -> bytes:
    """One try at an ``http(s)`` body: :class:`_Transient` for what may pass."""
    try:
        request = _request(url)
    except ValueError as exc:  # a malformed URL: it will not get better
        raise CorruptImageError(name, f"not a valid URL ({exc})") from None
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            data = _read_limited(response, name, limit=limit, deadline=time.monotonic() + timeout, out=out)
            got = len(data) if out is None else out.tell()
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and got < int(length):  # read(n) returns what came, no error
                raise _Transient(f"the response ended after {got} bytes, short of its length {length}")
            return data
    except urllib.error.HTTPError as exc:
        if exc.code in _TRANSIENT_HTTP:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        hint = ""
        if exc.code == 401 and "Authorization" not in request.headers:
            hint = (": the server wants credentials; give them in the URL (https://USER:PASSWORD@host/...) or in "
                    "~/.netrc ($NETRC), which is where reindex finds them, since stored URIs keep none")  # fmt: skip
        raise CorruptImageError(name, f"HTTP {exc.code} {exc.reason}{hint}") from None
    except http.client.IncompleteRead as exc:
        raise _Transient(f"the response ended after {len(exc.partial)} bytes, short of its length") from None
    except ValueError as exc:
        raise CorruptImageError(name, f"not a valid URL ({exc})") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Transient(f"cannot fetch: {reason}") from None


def fetch_url(url: str, *, timeout: float = TIMEOUT, retries: int = RETRIES, backoff: float = BACKOFF) -> bytes:
    """The body of an ``http(s)`` URL."""
    name = shown(url)
    return _retry(url, lambda: _http(url, name, timeout=timeout, limit=MAX_BYTES), retries=retries, backoff=backoff)


# ---------------------------------------------------------------------- S3
@functools.lru_cache(maxsize=1)
def s3_filesystem():
    """One S3 filesystem for the process: ``AWS_ENDPOINT_URL`` for any S3-compatible server."""
    from clair_vec.extras import require

    require("remote", "pyarrow", needed_for="reading s3:// images")
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
              "connect_timeout": 10, "request_timeout": TIMEOUT}  # fmt: skip
    if endpoint:
        scheme, _, rest = endpoint.partition("://")
        kwargs.update(endpoint_override=rest or scheme, scheme=scheme if rest else "https")
    return fs.S3FileSystem(**kwargs)


def _s3_path(uri: str) -> str:
    return uri[len("s3://") :].lstrip("/")


def _s3_problem(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


def _s3_transient(text: str) -> bool:
    return any(w in text.lower() for w in ("timeout", "timed out", "connection", "unreachable", "throttl", "slow down", "503", "500"))


def _s3(uri: str, name: str, *, limit: int, out=None) -> bytes:
    """One try at an S3 object: :class:`_Transient` for what may pass."""
    try:
        with s3_filesystem().open_input_stream(_s3_path(uri)) as f:
            return _read_limited(f, name, limit=limit, out=out)
    except FileNotFoundError:
        raise CorruptImageError(name, "no such object") from None
    except (OSError, ValueError) as exc:
        text = _s3_problem(exc)
        if _s3_transient(text):
            raise _Transient(text) from None
        raise CorruptImageError(name, text) from None


def fetch_s3(uri: str, *, retries: int = RETRIES, backoff: float = BACKOFF) -> bytes:
    name = shown(uri)
    return _retry(uri, lambda: _s3(uri, name, limit=MAX_BYTES), retries=retries, backoff=backoff)


def list_s3(uri: str, ignored: list[tuple[str, str]] | None = None) -> list[str]:
    """The image objects under an ``s3://bucket/prefix``, sorted (the others appended to
    ``ignored`` with why); an unreachable bucket or refused credentials are one
    :class:`DatasetError` that says which."""
    from pyarrow import fs

    path = _s3_path(uri).rstrip("/")
    try:
        infos = s3_filesystem().get_file_info(fs.FileSelector(path, recursive=True, allow_not_found=False))
    except FileNotFoundError:
        raise DatasetError(f"{shown(uri)}: no such bucket or prefix") from None
    except (OSError, ValueError) as exc:
        if "NO_SUCH_BUCKET" in str(exc):  # how Arrow says it when the prefix is not the bucket's root
            raise DatasetError(f"{shown(uri)}: no such bucket or prefix") from None
        raise DatasetError(f"{shown(uri)}: cannot list it ({_s3_problem(exc)}); check AWS_ENDPOINT_URL and the credentials") from None
    files = sorted(i.path for i in infos if i.type == fs.FileType.File)
    keys = [k for k in files if PurePosixPath(k).suffix.lower() in IMAGE_SUFFIXES]
    if ignored is not None:
        images = set(keys)
        ignored += [(f"s3://{k}", "not an image file (by its name)") for k in files if k not in images]
    return [f"s3://{k}" for k in keys]


def fetch(uri: str) -> bytes:
    return fetch_s3(uri) if uri.startswith("s3://") else fetch_url(uri)


# ---------------------------------------------------------------------- shards, parquet, lists
def expand_braces(pattern: str) -> list[str]:
    """``a-{0000..0002}.tar`` -> a-0000.tar, a-0001.tar, a-0002.tar; ``{x,y}`` -> both (as webdataset)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    lo, sep, hi = body.partition("..")
    if sep and lo.isdigit() and hi.isdigit():
        if int(hi) < int(lo) or int(hi) - int(lo) >= MAX_SHARDS:
            raise DatasetError(f"{pattern}: the range {{{body}}} must run upwards over at most {MAX_SHARDS:,} shards")
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [out for item in items for out in expand_braces(pattern[: m.start()] + item + pattern[m.end() :])]


def is_shard(name: str) -> bool:
    return name.split("?")[0].lower().endswith(".tar")


def is_source(name: str) -> bool:
    """A name read through this module rather than as one local image file: a URL, an ``s3://``
    name, a webdataset shard (or pattern) or a parquet file of images."""
    return is_remote(name) or is_shard(name) or name.lower().endswith(".parquet")


#: the folder remote shards are downloaded to while it holds any (see _spool_tidy), by the process
#: that made it: a forked child finds none under its own pid and makes its own
_SPOOL: dict[int, str] = {}


def _spool_dir() -> str:
    if os.getpid() not in _SPOOL:
        _SPOOL[os.getpid()] = tempfile.mkdtemp(prefix="clair-vec-shards-")
    return _SPOOL[os.getpid()]


def _spool_tidy() -> None:
    """The spool folder goes as soon as it is empty, not only at exit: Ray's and multiprocessing's
    workers leave by ``os._exit``, which runs no atexit hook, and each would leave a folder in /tmp."""
    folder = _SPOOL.get(os.getpid())
    if folder is not None:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (a shard still in use) or already gone
            if os.path.isdir(folder):
                return
        del _SPOOL[os.getpid()]


@atexit.register
def _spool_remove() -> None:
    if os.getpid() in _SPOOL:
        shutil.rmtree(_SPOOL[os.getpid()], ignore_errors=True)


def _spooled(uri: str) -> str:
    return os.path.join(_spool_dir(), hashlib.sha256(uri.encode()).hexdigest()[:24] + ".tar")


_DOWNLOADS = threading.Lock()  # one download of a shard at a time: two thumbnails may want the same one
MAX_SHARD = 64 << 30


def _download(uri: str) -> str:
    """A remote shard streamed to a local file (shards are larger than any image: never whole in
    memory), retried like any fetch; the file goes when the process ends."""
    with _DOWNLOADS:
        target = _spooled(uri)
        if not os.path.exists(target):
            try:
                _retry(uri, functools.partial(_fetch_shard, uri, target))
            finally:
                _spool_tidy()  # a download that failed leaves no empty folder behind
    return target


def _fetch_shard(uri: str, target: str) -> bytes:
    name = shown(uri)
    fd, part = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as dst:
            if uri.startswith("s3://"):
                _s3(uri, name, limit=MAX_SHARD, out=dst)
            else:
                _http(uri, name, timeout=max(TIMEOUT, 600.0), limit=MAX_SHARD, out=dst)
        os.replace(part, target)
    finally:
        if os.path.exists(part):  # a failed or interrupted try leaves nothing half-written
            os.unlink(part)
    return b""


@dataclass(frozen=True)
class Member:
    name: str  # the stored name: shard URI (without credentials) # member name
    file: str  # the local shard file
    offset: int
    size: int
    label: str

    def read(self) -> bytes:
        if self.size > MAX_BYTES:
            raise CorruptImageError(self.name, f"larger than {MAX_BYTES >> 20} MiB; not read as an image")
        with open(self.file, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def shard_members(uri: str) -> list[Member]:
    """Each image of a webdataset shard, in shard order, read by offset when needed. A sample's
    ``.cls`` or ``.txt`` member, when there is one, is its label (``--label-from-folder``)."""
    try:
        path = _download(uri) if is_remote(uri) else uri
    except CorruptImageError as exc:
        raise DatasetError(f"shard {exc.path}: {exc.reason}") from None
    images: list[tarfile.TarInfo] = []
    labels: dict[str, str] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                m = _WDS_NAME.match(member.name)  # webdataset's rule: the key is the path up to the file name's first dot
                if m is None:
                    continue
                key, ext = m.group(1), m.group(2).lower()
                if f".{ext.rsplit('.', 1)[-1]}" in IMAGE_SUFFIXES:
                    images.append(member)
                elif ext.rsplit(".", 1)[-1] in ("cls", "txt", "label") and member.size <= 4096:
                    labels[key] = tar.extractfile(member).read().decode("utf-8", "replace").strip()  # type: ignore[union-attr]
    except OSError as exc:
        raise DatasetError(f"shard {shown(uri)}: {exc.strerror or exc}") from None
    except tarfile.TarError as exc:
        raise DatasetError(f"shard {shown(uri)} is not a readable tar file ({exc})") from None
    base = shown(uri)
    return [Member(f"{base}#{m.name}", path, m.offset_data, m.size, labels.get(_WDS_NAME.match(m.name).group(1), ""))  # type: ignore[union-attr]
            for m in images]  # fmt: skip


def shard_images(uri: str) -> list[tuple[Member, bytes | CorruptImageError]]:
    """Every image of a shard with its bytes, in one pass. A remote shard is downloaded for it and
    removed after, so that a Ray listing task hands its workers bytes instead of each worker
    downloading the whole shard again for the members it hashes."""
    members = shard_members(uri)
    try:
        out = []
        for m in members:
            try:
                out.append((m, m.read()))
            except CorruptImageError as exc:  # too large: reported as that member's reason
                out.append((m, exc))
        return out
    finally:
        if is_remote(uri):  # a shard of no images was downloaded too
            with _DOWNLOADS:
                with contextlib.suppress(OSError):
                    os.remove(members[0].file if members else _spooled(uri))
                _spool_tidy()


@functools.lru_cache(maxsize=4)
def _members(shard: str, stamp: tuple[int, int] | None) -> dict[str, Member]:
    """A shard's members by name: a reindex or the thumbnails read them one after another. A local
    shard is cached with its size and mtime (``stamp``): one written again has its members at new
    offsets, and the old ones would read another image's bytes."""
    return {m.name.partition("#")[2]: m for m in shard_members(shard)}


def _shard_member(path: str, shard: str, member: str) -> bytes:
    stamp = None
    if not is_remote(shard):
        try:
            st = os.stat(shard)
        except OSError:
            raise CorruptImageError(path, f"its shard {shown(shard)} is gone") from None
        stamp = (st.st_size, st.st_mtime_ns)
    for attempt in range(2):
        found = _members(shard, stamp).get(member)
        if found is None:
            raise CorruptImageError(path, "no such member in its shard any more")
        try:
            return found.read()
        except FileNotFoundError:  # the downloaded copy went (a /tmp cleaner): download it again, once
            if attempt or stamp is not None:
                raise CorruptImageError(path, f"its shard {shown(shard)} is gone") from None
            _members.cache_clear()
    raise AssertionError("unreachable")


def parquet_images(path: str, *, image_column: str | None = None, key_column: str | None = None) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of each row of a parquet file holding image bytes: the column of binary
    values (or ``image_column``; a struct with ``bytes``, as Hugging Face writes images, works too),
    named ``path#key`` by ``key_column`` (default ``key`` or ``url``, else the row number)."""
    table = _read_table(path, path)
    import pyarrow as pa

    names = table.column_names
    if image_column is None:
        binary = [n for n in names if pa.types.is_binary(table.schema.field(n).type) or pa.types.is_large_binary(table.schema.field(n).type)
                  or (pa.types.is_struct(table.schema.field(n).type) and "bytes" in [f.name for f in table.schema.field(n).type])]  # fmt: skip
        if len(binary) != 1:
            raise DatasetError(f"{path}: cannot tell which column holds the images: it needs exactly one column of "
                               f"image bytes, and has {len(binary)} ({binary}) among {names}")  # fmt: skip
        image_column = binary[0]
    if image_column not in names:
        raise DatasetError(f"{path} has no column {image_column!r}; it has {names}")
    key_column = key_column or next((n for n in ("key", "url") if n in names), None)
    values = table.column(image_column).to_pylist()
    keys = table.column(key_column).to_pylist() if key_column else list(range(len(values)))
    out = []
    for key, value in zip(keys, values, strict=True):
        body = value.get("bytes") if isinstance(value, dict) else value
        out.append((f"{path}#{shown(str(key))}", body if isinstance(body, bytes) else b""))
    return out


#: parquet files up to this size are held, once read, for the next row asked of them
PARQUET_CACHE = 256 << 20


@functools.lru_cache(maxsize=2)
def _parquet_rows(path: str, _mtime: float) -> dict[str, bytes]:
    """A parquet file's images by name, the first row of a name winning, as a scan of the file
    finds it: a reindex or the thumbnails read rows one after another (the mtime in the key: a
    rewritten file is read again)."""
    return dict(reversed(parquet_images(path)))


def _read_table(path: str, what: str):
    """A parquet file as an Arrow table; ``what`` names it in the one-line error."""
    from clair_vec.extras import require

    require("remote", "pyarrow", needed_for="reading parquet files")
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{what} is not a readable parquet file ({str(exc)[:200]})") from None


def read_list(path: str, *, column: str | None = None) -> list[str]:
    """The URLs (or paths) of a list file: ``.txt`` one a line; ``.csv`` and ``.parquet`` by
    ``column`` (default ``url``), as img2dataset reads its inputs."""
    low = path.lower()
    if low.endswith(".parquet"):
        table = _read_table(path, f"list {path}")
        col = column or "url"
        if col not in table.column_names:
            raise DatasetError(f"list {path} has no column {col!r}; it has {table.column_names} (choose one with --column)")
        return [str(v).strip() for v in table.column(col).to_pylist() if v is not None and str(v).strip()]
    try:
        text = open(path, encoding="utf-8-sig", newline="").read()  # a spreadsheet's byte-order mark is not part of a name
    except FileNotFoundError:
        raise DatasetError(f"list {path} does not exist") from None
    except IsADirectoryError:
        raise DatasetError(f"list {path} is a folder; give a .txt, .csv or .parquet file") from None
    except UnicodeDecodeError:
        raise DatasetError(f"list {path} is not UTF-8 text") from None
    if low.endswith(".csv"):
        rows = csv.DictReader(io.StringIO(text))
        col = column or "url"
        if rows.fieldnames is None or col not in rows.fieldnames:
            raise DatasetError(f"list {path} has no column {col!r}; it has {rows.fieldnames} (choose one with --column)")
        return [r[col].strip() for r in rows if r.get(col) and r[col].strip()]
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


_MEMBER = re.compile(r"^(.*?\.(?:tar|parquet))#(.*)$", re.IGNORECASE | re.DOTALL)


def split_member(path: str) -> tuple[str, str] | None:
    """``(container, member)`` of ``shard.tar#member`` or ``images.parquet#key``, else None. The
    first ``.tar#``/``.parquet#`` splits, so a '#' in a folder name before it stays in the path."""
    m = _MEMBER.match(path)
    return (m.group(1), m.group(2)) if m else None


def stored_file(path: str) -> str:
    """The local file a stored path lives in: ``shard.tar#member`` and ``images.parquet#key``
    live in the shard or parquet file; any other path is its own file."""
    found = split_member(path)
    return found[0] if found else path


def scheme(path: str) -> str:
    return path.split("://", 1)[0] + "://" if "://" in path else "a file"


def stored_bytes(path: str) -> bytes:
    """The bytes of a stored record's image, by the path it was stored under (thumbnails)."""
    container, member = split_member(path) or ("", "")
    if is_shard(container):
        return _shard_member(path, container, member)
    if container.lower().endswith(".parquet"):
        try:
            size, mtime = os.path.getsize(container), os.path.getmtime(container)
        except OSError:
            raise CorruptImageError(path, "its parquet file is gone") from None
        # a big file is read again each time rather than held: it would stay in memory
        rows = _parquet_rows.__wrapped__(container, mtime) if size > PARQUET_CACHE else _parquet_rows(container, mtime)
        found = rows.get(path)
        if found is None:
            raise CorruptImageError(path, "no such row in its parquet file any more")
        return found
    return fetch(path)

