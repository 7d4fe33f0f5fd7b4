"""Conformance suite for clair_vec backends: subclass it in your plugin's tests.

::

    from clair_vec.plugin import BackendConformance

    class TestMyBackend(BackendConformance):
        backend_name = "mydb"                      # the name your plugin registers

        @pytest.fixture
        def backend_uri(self, tmp_path):           # every handle opens this same storage
            return str(tmp_path / "store")

The suite opens the backend the way users do, ``clair_vec.get_backend(backend_name, uri)``,
so it also proves the plugin is registered. Some promises are checked from a *new process*
(spawned, like a second ``clair-vec`` command): what one process wrote, another must be able to
search. Every test states one promise of the :class:`clair_vec.store.backend.Backend` contract, so a
failure names what the backend gets wrong, in words. No torch needed.

Fixtures a plugin may override besides ``backend_uri`` / ``backend_options``: ``fresh_uri`` /
``fresh_path`` (embedded: a store that does not exist yet), ``fresh_namespace`` (servers: an
empty database or namespace, see :class:`FreshNamespace`), ``unreachable_uri`` (a URI where
nothing listens; derived from an ``http(s)`` ``backend_uri`` by default),
``wrong_credentials`` (options with credentials the server refuses), ``wrong_credentials_uri``
(the URI with refused ``user:password@``; derived from ``wrong_credentials`` by default) and
``wrong_credentials_env`` (environment variables with refused credentials). A promise whose fixture is
None is skipped with the reason. Every collection and alias the suite makes starts with
``conformance_`` and is dropped at the end of its test, so the suite may run against a live
server (``clair-vec backends --check``).

The promises live in one module per family, as the plugin guide lists them ("What the suite
checks"): :mod:`.collections` (registration too), :mod:`.isolation`, :mod:`.processes`,
:mod:`.writes`, :mod:`.reads`, :mod:`.strings`, :mod:`.errors`, :mod:`.hygiene`, :mod:`.vectors`
and :mod:`.aliases`, each a mixin of ``test_*`` methods; :mod:`.support` holds what they share.
This module joins them into :class:`BackendConformance` and owns the fixtures, so a plugin's
subclass overrides a fixture in one place and every family sees it.

pytest rewrites the asserts of this package and all its modules (``clair_vec.store.pytest_plugin``,
a ``pytest11`` entry point, registers the package name, which covers its sub-modules), so a
failure shows the values compared.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from clair_vec.store.backend import Backend, CollectionInfo, Record
from clair_vec.store.testing.aliases import AliasPromises
from clair_vec.store.testing.collections import CollectionPromises
from clair_vec.store.testing.errors import ErrorPromises
from clair_vec.store.testing.hygiene import HygienePromises
from clair_vec.store.testing.isolation import IsolationPromises
from clair_vec.store.testing.processes import ProcessPromises
from clair_vec.store.testing.reads import ReadPromises
from clair_vec.store.testing.strings import LOOKALIKES, TRICKY, StringPromises
from clair_vec.store.testing.support import (
    DIM,
    PREFIX,
    FreshNamespace,
    _drop_all,
    in_new_process,
    make_records,
    open_backend,
    unreachable_like,
    with_userinfo,
)
from clair_vec.store.testing.vectors import VectorPromises
from clair_vec.store.testing.writes import WritePromises

__all__ = [
    "DIM", "LOOKALIKES", "PREFIX", "TRICKY", "AliasPromises", "BackendConformance", "CollectionPromises", "ErrorPromises",
    "FreshNamespace", "HygienePromises", "IsolationPromises", "ProcessPromises", "ReadPromises", "StringPromises",
    "VectorPromises", "WritePromises", "in_new_process", "make_records", "open_backend",
]  # fmt: skip


class BackendConformance(CollectionPromises, IsolationPromises, ProcessPromises, WritePromises, ReadPromises,
                         StringPromises, ErrorPromises, HygienePromises, VectorPromises, AliasPromises):  # fmt: skip
    """The behaviour every backend must show. Set ``backend_name``; override ``backend_uri``.

    The promises come from one mixin per family; the fixtures are defined here, once, so that a
    subclass's override is the one every family's promises get."""

    #: the name the plugin registers with ``register(name, factory)``
    backend_name: ClassVar[str] = ""
    dim = DIM
    #: how long a refused connection or refused credentials may take to fail, retries included:
    #: a hang guard, far above a sane client timeout
    failure_deadline: ClassVar[float] = 60.0

    @pytest.fixture
    def backend_uri(self, tmp_path) -> str | None:  # pragma: no cover - always overridden
        raise NotImplementedError("override backend_uri to return the storage every handle of the suite opens")

    @pytest.fixture
    def backend_options(self) -> dict[str, Any]:
        """Keyword options passed to the backend factory with the URI."""
        return {}

    @pytest.fixture
    def fresh_uri(self, tmp_path) -> str | None:
        """A storage location that does not exist yet, for embedded engines (None: a server, or a
        backend whose storage is not a file system path; the promise is then skipped)."""
        return None

    @pytest.fixture
    def fresh_path(self, fresh_uri) -> str | None:
        """The file system path behind ``fresh_uri`` (override when the URI is not a bare path)."""
        return fresh_uri

    @pytest.fixture
    def fresh_namespace(self) -> FreshNamespace | None:
        """Servers: an empty database or namespace, and how to list what is in it (None: skip)."""
        return None

    @pytest.fixture
    def unreachable_uri(self, backend_uri) -> str | None:
        """A URI of this backend's kind where nothing listens. Default: an ``http(s)``/``grpc``
        ``backend_uri`` with a free loopback port; None (skip) for embedded stores."""
        return unreachable_like(backend_uri)

    @pytest.fixture
    def wrong_credentials(self) -> dict[str, Any] | None:
        """Options (merged over ``backend_options``) with credentials the server refuses, e.g.
        ``{"token": "root:wrong"}``; None (skip) for a store without authentication."""
        return None

    @pytest.fixture
    def wrong_credentials_uri(self, backend_uri, wrong_credentials) -> str | None:
        """``backend_uri`` with refused credentials in it (``user:password@``). Default: derived
        from ``wrong_credentials`` when they are a ``token`` of the form ``user:password`` or a
        ``user`` and a ``password``, and the URI is a server's; None (skip) otherwise, or for a
        backend that reads no credentials from its URI."""
        creds = wrong_credentials or {}
        token = creds.get("token")
        userinfo = token if isinstance(token, str) and ":" in token else (
            f"{creds['user']}:{creds['password']}" if {"user", "password"} <= creds.keys() else None)  # fmt: skip
        return with_userinfo(backend_uri, userinfo) if userinfo else None

    @pytest.fixture
    def wrong_credentials_env(self) -> dict[str, str] | None:
        """Environment variables holding refused credentials, e.g. ``{"MILVUS_TOKEN":
        "root:wrong"}``; None (skip) for a backend that reads none."""
        return None

    @pytest.fixture
    def made(self) -> list[str]:
        """Names of the extra collections a test creates: dropped with it, aliases first."""
        return []

    @pytest.fixture
    def backend_factory(self, backend_uri, backend_options) -> Callable[[], Backend]:
        if not self.backend_name:
            pytest.fail(f"{type(self).__name__} must set backend_name to the name its plugin registers")
        return lambda: open_backend(self.backend_name, backend_uri, backend_options)

    @pytest.fixture
    def backend(self, backend_factory, info, made):
        b = backend_factory()
        yield b
        b.close()
        # servers outlive the test: leave nothing behind (a fresh handle, as the test's may be closed)
        cleanup = backend_factory()
        try:
            _drop_all(cleanup, [info.name, *made], info.name)
        finally:
            cleanup.close()

    @pytest.fixture
    def info(self) -> CollectionInfo:
        # unique per test, so suites may share one server
        return CollectionInfo(name=f"{PREFIX}{uuid.uuid4().hex[:10]}", dim=self.dim, model="test-model", target_domain="photo")

    @pytest.fixture
    def filled(self, backend: Backend, info: CollectionInfo) -> list[Record]:
        backend.create_collection(info)
        records = make_records(60, dim=self.dim)
        assert backend.upsert(info.name, records) == 60
        return records

