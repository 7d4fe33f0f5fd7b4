"""Where a server backend's credentials come from: an option, else the environment.

For each environment variable ``NAME`` the lookup also reads ``NAME_FILE``, a file that holds
the secret (how Docker and Kubernetes mount secrets), with trailing line breaks stripped.
Whatever is found is registered with :func:`~clair_vec.store.redaction.register_secret`, and its
*source* (``option token``, ``$MILVUS_TOKEN``, ``the file named by $MILVUS_TOKEN_FILE``) is what
error messages name: never the secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clair_vec.errors import BackendError
from clair_vec.store.redaction import register_secret


@dataclass(frozen=True)
class Secret:
    value: str
    #: where it came from, in words, for messages: ``option api_key``, ``$QDRANT_API_KEY``...
    source: str

    def __repr__(self) -> str:  # a Secret printed by accident shows where it came from only
        return f"Secret(from {self.source})"

    def __bool__(self) -> bool:
        return bool(self.value)


NO_SECRET = Secret("", "nowhere (none given)")


def find_secret(
    value: str | None, option: str, env: Sequence[str], environ: Mapping[str, str] | None = None
) -> Secret:
    """The secret given as option ``option`` (``value``), else the first of ``env`` (and its
    ``_FILE`` variant, in the order ``A``, ``A_FILE``, ``B``, ``B_FILE``) that is set."""
    environ = os.environ if environ is None else environ
    if value:
        register_secret(value)
        return Secret(value, f"option {option}")
    for name in env:
        if environ.get(name):
            register_secret(environ[name])
            return Secret(environ[name], f"${name}")
        file_var = f"{name}_FILE"
        path = environ.get(file_var)
        if path:
            try:
                with open(path, encoding="utf-8") as fh:
                    secret = fh.read().rstrip("\r\n")
            except OSError as exc:
                raise BackendError(
                    f"${file_var} names {path!r}, which cannot be read ({exc.strerror or exc}); fix the path or unset "
                    f"${file_var}"
                ) from None
            if secret:
                register_secret(secret)
                return Secret(secret, f"the file named by ${file_var}")
    return NO_SECRET
