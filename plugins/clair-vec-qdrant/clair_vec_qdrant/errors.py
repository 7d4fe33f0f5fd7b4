"""How Qdrant's failures become clair_vec's errors, for both engines.

qdrant-client's exceptions (a server's answer, or no answer) are sorted here into "ask again" and
"refused credentials"; :class:`~clair_vec_qdrant.client.QdrantClientBackend` calls these from its
``is_transient`` and ``translate_error``. Qdrant Edge raises no client exceptions: what is shared
with it is the way out of a store that one process holds (:data:`SHARE_A_SERVER`).

qdrant-client is imported inside the functions, so importing the plugin does not import it.
"""

from __future__ import annotations

from clair_vec.plugin import AuthenticationError, Secret

from .uri import API_KEY_ENV

#: the end of every "store in use" message: both embedded engines take one process at a time
SHARE_A_SERVER = "use a server backend that several processes share (a Qdrant server: pass its URL as --uri)."
#: the answers that mean "busy, ask again"; any other answer would be the same the second time
BUSY = (429, 502, 503, 504)


def client_is_transient(exc: BaseException) -> bool | None:
    """qdrant-client's verdict on ``exc``: whether asking again may succeed, or None when ``exc``
    is none of qdrant-client's and the generic rules decide."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):  # the server answered: only "busy" is worth asking again
        return exc.status_code in BUSY
    return True if isinstance(exc, ResponseHandlingException) else None


def refused_status(exc: BaseException) -> int | None:
    """401 or 403 when ``exc`` is a server refusing the credentials, else None."""
    from qdrant_client.http.exceptions import UnexpectedResponse

    return exc.status_code if isinstance(exc, UnexpectedResponse) and exc.status_code in (401, 403) else None


def refused_credentials(status: int, display_uri: str, api_key: Secret | None) -> AuthenticationError:
    """The error for a server that refused the API key (401) or what the key may do (403)."""
    source = api_key.source if api_key else "none was given"
    if status == 401:
        return AuthenticationError(
            f"the server at {display_uri} refused the credentials (API key from {source}); check the key, "
            f"or set ${API_KEY_ENV[0]} / ${API_KEY_ENV[1]} (or *_FILE)"
        )
    return AuthenticationError(
        f"the server at {display_uri} accepted the API key (from {source}) but refused the request "
        "(403 forbidden): use a key with write access, or a read-only request"
    )
