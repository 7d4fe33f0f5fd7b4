"""Credentials never leave the process in a message.

- :func:`redact_uri` is how a backend shows its URI: user info and credential-like query
  parameters become ``***``, so ``http://user:pw@h:19530/?token=x&db=a`` is shown as
  ``http://***@h:19530/?token=***&db=a`` (the placeholders say that credentials were given,
  which helps whoever reads the message, without saying what they are).
- :func:`register_secret` remembers a secret of this process (a token, an API key, a
  password); :class:`~clair_vec.store.backend.Backend` registers those of its URI and options.
- :func:`scrub` replaces every registered secret, and anything shaped like credentials (URI
  user info, ``?token=...``, ``Bearer ...``, ``password=...``), with ``***``. The CLI's errors
  and the logs run text through it.
- :func:`mask_credential_shapes` replaces only what is shaped like credentials. HTTP answers use
  it: they echo what a request sent (an id, a label), and masking the registered secrets there
  would answer ``***`` exactly when a caller guessed the database password, an oracle. Secrets
  are kept out of HTTP answers where they enter instead: a backend shows its URI redacted, and a
  database failure is answered without its driver's text.

A registered secret shorter than :data:`MIN_SECRET_LENGTH` characters is scrubbed only where it
stands in a credential position (URI user info, a ``token=`` parameter), not from free text:
Milvus's well-known default password is ``Milvus``, and scrubbing it everywhere would erase the
engine's name from every message while protecting nothing.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

MASK = "***"
MIN_SECRET_LENGTH = 8
#: the last ``_``/``-`` separated part of a query parameter name that marks it as a credential
#: (``token``, ``api_key``, ``access_token``, ``X-Amz-Signature``, ``client_secret`` ...)
_SECRET_WORDS = r"token|key|apikey|password|passwd|pwd|secret|sig|signature|auth|authorization|credentials?"
_SECRET_PARAM = re.compile(rf"(?i)^(?:.*[_-])?(?:{_SECRET_WORDS})$")
_URI_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"<>]+@")
#: ``scheme:/user:password@``, as ``pathlib.Path`` prints a URL given as a folder: only with a
#: password (a drive letter's ``C:/x@y`` has none) and never for the path prefixes ``file:``/``local:``
_ONE_SLASH_USERINFO = re.compile(r"(?P<scheme>\b(?!(?:file|local):)[A-Za-z][A-Za-z0-9+.-]+:/)(?!/)[^/\s@:'\"<>]+:[^/\s@'\"<>]*@")
_QUERY_SECRET = re.compile(rf"(?i)(?P<key>[?&;](?:[A-Za-z0-9]+[_-])*(?:{_SECRET_WORDS})=)[^&#\s'\"<>]+")
#: ``password=x``, ``"api_key": "x"``, ``token: x`` in free text (headers, reprs of options)
_ASSIGNED_SECRET = re.compile(
    r"(?i)(?P<key>\b(?:[A-Za-z0-9]+[_-])*(?:token|api[_-]?key|password|passwd|secret)[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<value>[^\s'\",;&)}\]]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
#: ``user:password@host`` with no scheme before it (a server address typed without ``http://``);
#: the colon tells it from an e-mail address, and a URL's user info is masked before this runs
#: (possessive: a long run of name characters is tried once, not from every position of it)
_BARE_USERINFO = re.compile(r"(?<![\w/.:%@~!$&*+=-])[A-Za-z0-9._~%!$&*+=-]++:[^\s@/\\'\"<>]++@(?=[A-Za-z0-9\[])")
#: a whole URI shaped like that: ``user:password@host[:port][/...]``, split at its last ``@`` (a
#: password may hold ``@``, ``/`` or ``?``)
_SCHEMELESS_CREDENTIALS = re.compile(r"^(?P<userinfo>(?P<user>[^/\\@\s:]+):\S*)@(?P<rest>[A-Za-z0-9\[][^@\s]*)$")
#: ``prefix:`` forms that name a path, not a user: Qdrant's ``local:``, a drive letter (``C:``)
_PATH_PREFIXES = frozenset({"local", "file"})

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: object) -> None:
    """Remember ``value`` as a secret of this process: :func:`scrub` hides it from now on
    (and its URL-encoded form). Empty values and non-strings are ignored."""
    global _pattern
    if not isinstance(value, str) or not value:
        return
    forms = {value, quote(value, safe="")} - {""}
    with _lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        _pattern = None


def _secret_pattern() -> re.Pattern[str] | None:
    global _pattern
    with _lock:
        if _pattern is None:
            long_enough = sorted((s for s in _secrets if len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True)
            _pattern = re.compile("|".join(map(re.escape, long_enough))) if long_enough else re.compile(r"(?!x)x")
        return _pattern


def scrub(text: str) -> str:
    """``text`` with every registered secret and anything shaped like credentials replaced by ``***``."""
    if not isinstance(text, str) or not text:
        return text
    pattern = _secret_pattern()
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return mask_credential_shapes(text)


def mask_credential_shapes(text: str) -> str:
    """``text`` with anything shaped like credentials replaced by ``***``, whatever this process's
    secrets are: the same answer for every guess (see the module docstring)."""
    if not isinstance(text, str) or not text:
        return text
    text = _URI_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _ONE_SLASH_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _BARE_USERINFO.sub(f"{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)
    text = _ASSIGNED_SECRET.sub(lambda m: m[0] if _folder_name(m) else m["key"] + (m["value"] if m["value"] == MASK else MASK),
                                text)  # fmt: skip
    return _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)


def _folder_name(m: re.Match[str]) -> bool:
    """Whether an assignment-shaped match is a folder of a file system path, such as
    ``/models/token=v2/clair.json``: it starts a path component, has more path after it, and is
    not part of a URL (where ``/password=...`` may well be a credential)."""
    text, start = m.string, m.start()
    if start == 0 or text[start - 1] not in "/\\" or not any(sep in m["value"] for sep in "/\\") or "=" not in m["key"]:
        return False
    token_start = max(text.rfind(c, 0, start) for c in " \t\n'\"") + 1
    return "://" not in text[token_start : m.end()]


def is_secret_name(name: str) -> bool:
    """Whether an option or query parameter called ``name`` holds a credential (``token``,
    ``api_key``, ``password``, ``client_secret``...)."""
    return bool(_SECRET_PARAM.match(name))


def _is_url(parts: SplitResult) -> bool:
    return bool(parts.scheme and (parts.netloc or parts.query))


def redact_uri(uri: str | None) -> str:
    """How a URI is shown: user info and credential-like query parameters as ``***``; paths,
    ``local:`` URIs and anything without credentials unchanged. ``None`` is the embedded default."""
    if uri is None:
        return "(embedded default)"
    bare = _schemeless(uri)
    if bare is not None:
        return f"{MASK}@{bare['rest']}"
    try:
        parts = urlsplit(uri)
    except ValueError:  # not a URL at all: show it scrubbed
        return scrub(uri)
    if not _is_url(parts):
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        f"{k}={MASK}" if is_secret_name(unquote(k)) and sep else f"{k}{sep}{v}"
        for k, sep, v in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def without_credentials(uri: str) -> str:
    """``uri`` with its user info and credential-like query parameters left out (not masked): a URI
    a command line can show and still use, the credentials coming from elsewhere."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return scrub(uri)
    if not _is_url(parts):
        return uri
    query = "&".join(pair for pair in parts.query.split("&") if pair and not is_secret_name(unquote(pair.partition("=")[0])))
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, query, parts.fragment))


def _schemeless(uri: object) -> re.Match[str] | None:
    if not isinstance(uri, str) or "://" in uri:
        return None
    m = _SCHEMELESS_CREDENTIALS.match(uri)
    return m if m is not None and len(m["user"]) > 1 and m["user"].lower() not in _PATH_PREFIXES else None


def schemeless_credentials(uri: str | None) -> bool:
    """Whether ``uri`` is ``user:password@host...`` without a scheme: a server address typed
    without ``http://``, which no backend should take for a file path."""
    return _schemeless(uri) is not None


def uri_secrets(uri: str | None) -> list[str]:
    """The secrets a URI carries: its password (or its whole user info when there is no
    password, e.g. a token as user name) and the values of credential-like query parameters."""
    if not uri:
        return []
    bare = _schemeless(uri)
    if bare is not None:
        password = bare["userinfo"].partition(":")[2]
        return [v for v in dict.fromkeys([bare["userinfo"], unquote(bare["userinfo"]), password, unquote(password)]) if v]
    try:
        parts = urlsplit(uri)
    except ValueError:
        return []
    if not _is_url(parts):
        return []
    found = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        user, _, password = userinfo.partition(":")
        found += [unquote(userinfo), userinfo] + ([unquote(password), password] if password else [unquote(user)])
    for pair in parts.query.split("&"):
        key, sep, value = pair.partition("=")
        if sep and value and is_secret_name(unquote(key)):
            found += [value, unquote(value)]
    return [s for s in dict.fromkeys(found) if s]


class ScrubFilter(logging.Filter):
    """Scrubs a log record's message and its formatted exception before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logging module's to report
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = ScrubFilter()


def install_log_filter(*prefixes: str) -> None:
    """Attach the scrubbing filter to the loggers named ``prefixes`` and every logger below
    them that exists now. A logger's filter only sees records logged to that very logger, so
    each one gets it; called again when a backend opens, it covers loggers created since."""
    names = set(prefixes)
    names |= {n for n in list(logging.root.manager.loggerDict) if any(n.startswith(p + ".") for p in prefixes)}
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
