"""Credentials against a real Milvus 2.3.5 server with authentication on.

Only one 2.3.5 server can run on a machine (its embedded etcd's peer port is fixed), so this
module does not start a second one: it restarts the harness server of ``tests/servers.py`` (named
by ``MILVUS_SERVER_PIDFILE``) with ``authorizationEnabled: true`` on the same data and port, runs
its tests, and restarts it without authentication afterwards, whatever happened (the pidfile
always names the server that runs, which the harness stops at exit). Two restarts cost about a
minute (the first schema change after a restart waits up to 30 s for the server to settle);
``make test`` needs nothing more. Without the harness the module skips and says why.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from clair_vec.errors import AuthenticationError
from clair_vec.store.backend import CollectionInfo
from clair_vec.store.plugins import get_backend
from clair_vec.store.testing import BackendConformance, make_records

ROOT_TOKEN = "root:Milvus"  # the 2.3.5 server's default superuser
WRONG = "root:not-the-password-7"


def _set_auth(config: Path, enabled: bool) -> None:
    text = config.read_text()
    old, new = f"authorizationEnabled: {str(not enabled).lower()}", f"authorizationEnabled: {str(enabled).lower()}"
    if new not in text:
        assert text.count(old) == 1, f"cannot find the authorization switch in {config}"
        config.write_text(text.replace(old, new))


def _wait_with_token(uri: str, proc, timeout: float, log=None, *, launcher: bool = False) -> None:
    """servers.wait_for_milvus, logging in: a server with authentication on refuses anonymous probes."""
    from pymilvus import MilvusClient

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"Milvus server at {uri} died before answering")
        try:
            client = MilvusClient(uri=uri, token=ROOT_TOKEN, timeout=3)
            client.list_collections()
            client.close()
            return
        except Exception:  # not up yet
            time.sleep(1)
    raise TimeoutError(f"Milvus at {uri} did not answer within {timeout:.0f} s")


@pytest.fixture(scope="module")
def auth_uri():
    pidfile = os.environ.get("MILVUS_SERVER_PIDFILE")
    if not pidfile:
        pytest.skip("MILVUS_SERVER_PIDFILE is not set: run through `make test` (tests/servers.py), whose Milvus 2.3.5 "
                    "server this module restarts with authentication on")  # fmt: skip
    import servers

    server = servers.MilvusServer.from_pidfile(pidfile)
    config = server.data_dir / "configs" / "milvus.yaml"
    server.stop()
    try:
        _set_auth(config, True)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(servers, "wait_for_milvus", _wait_with_token)
            server.start()
        yield server.uri
    finally:
        server.stop()  # gracefully: the next start then need not wait for this one's etcd session to expire
        _set_auth(config, False)
        try:
            server.start()
        finally:
            server.write_pidfile(pidfile)  # whatever happened, the harness stops the server that runs now


class TestMilvusServerWithAuthentication(BackendConformance):
    """The promises that involve credentials, with the token passed as an option."""

    backend_name = "milvus"

    @pytest.fixture
    def backend_uri(self, auth_uri):
        return auth_uri

    @pytest.fixture
    def backend_options(self):
        return {"token": ROOT_TOKEN}

    @pytest.fixture
    def wrong_credentials(self):
        return {"token": WRONG}

    @pytest.fixture
    def wrong_credentials_env(self, monkeypatch):
        monkeypatch.delenv("CLAIR_VEC_MILVUS_TOKEN", raising=False)  # it would win over MILVUS_TOKEN
        return {"MILVUS_TOKEN": WRONG}


KEEP = {"test_refused_credentials_are_not_retried_and_say_so", "test_refused_credentials_from_the_uri_or_the_environment_are_refused_alike",
        "test_a_refused_connection_is_backend_unavailable_at_once",
        "test_a_new_process_can_search_what_another_process_wrote", "test_shared_says_whether_a_second_process_can_write"}  # fmt: skip
for _name in dir(BackendConformance):
    if _name.startswith("test_") and _name not in KEEP:
        setattr(TestMilvusServerWithAuthentication, _name, None)  # the rest runs without auth in test_servers.py


def test_the_token_comes_from_the_environment_or_its_file(auth_uri, monkeypatch, tmp_path):
    monkeypatch.setenv("MILVUS_TOKEN", ROOT_TOKEN)
    name = f"conformance_{uuid.uuid4().hex[:10]}"
    with get_backend("milvus", auth_uri) as be:
        assert be._credential.source == "$MILVUS_TOKEN"
        be.create_collection(CollectionInfo(name, 4, "m"))
        be.upsert(name, make_records(3, dim=4))
    monkeypatch.delenv("MILVUS_TOKEN")
    (tmp_path / "token").write_text(ROOT_TOKEN + "\n")
    monkeypatch.setenv("CLAIR_VEC_MILVUS_TOKEN_FILE", str(tmp_path / "token"))
    with get_backend("milvus", auth_uri) as be:
        assert be.count(name) == 3
        assert be.drop_collection(name)


def test_missing_or_wrong_credentials_say_where_they_came_from_at_once(auth_uri, monkeypatch, caplog):
    for var in ("MILVUS_TOKEN", "CLAIR_VEC_MILVUS_TOKEN", "MILVUS_TOKEN_FILE", "CLAIR_VEC_MILVUS_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    caplog.set_level(logging.INFO)
    with pytest.raises(AuthenticationError) as none:
        get_backend("milvus", auth_uri)
    assert f"the server at {auth_uri} refused the credentials (none were given: pass option token, put user:password " \
           "in the URI, or set $CLAIR_VEC_MILVUS_TOKEN or $MILVUS_TOKEN (or *_FILE))" in str(none.value)  # fmt: skip
    monkeypatch.setenv("MILVUS_TOKEN", WRONG)
    with pytest.raises(AuthenticationError, match=r"refused the credentials \(from \$MILVUS_TOKEN\)") as wrong:
        get_backend("milvus", auth_uri)
    assert WRONG not in str(wrong.value) and "not-the-password" not in caplog.text
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


def test_which_credentials_win_options_then_the_uri_then_the_environment(auth_uri, monkeypatch, capsys):
    """The documented order, each against the real server: the first found is the one sent, and a
    refusal names where it came from (a password in the URI used to be reported as none given)."""
    host = auth_uri.split("://", 1)[1]
    right_in_uri, wrong_in_uri = f"http://{ROOT_TOKEN}@{host}", f"http://{WRONG}@{host}"
    monkeypatch.setenv("MILVUS_TOKEN", WRONG)
    with get_backend("milvus", right_in_uri) as be:  # the URI beats the environment
        assert be._credential.source == "the user:password in the URI" and be.list_collections() is not None
    with pytest.raises(AuthenticationError, match=r"refused the credentials \(from the user:password in the URI\)") as refused:
        get_backend("milvus", wrong_in_uri)
    assert "not-the-password" not in str(refused.value) and host in str(refused.value)
    with get_backend("milvus", wrong_in_uri, token=ROOT_TOKEN) as be:  # an option beats the URI
        assert be._credential.source == "option token" and be.list_collections() is not None
    monkeypatch.setenv("MILVUS_TOKEN", ROOT_TOKEN)
    with get_backend("milvus", auth_uri) as be:  # with nothing else, the environment
        assert be._credential.source == "$MILVUS_TOKEN"
    assert "not-the-password" not in capsys.readouterr().err


def test_a_user_without_the_privilege_is_told_so(auth_uri):
    from pymilvus import MilvusClient

    admin = MilvusClient(uri=auth_uri, token=ROOT_TOKEN)
    user, password = f"reader_{uuid.uuid4().hex[:6]}", "reader-pass-1234"
    admin.create_user(user, password)
    try:
        with get_backend("milvus", auth_uri, user=user, password=password) as be:
            assert be.list_collections() is not None  # a public user may look
            with pytest.raises(AuthenticationError, match="accepted the credentials .*refused this user the request"):
                be.create_collection(CollectionInfo(f"conformance_{uuid.uuid4().hex[:10]}", 4, "m"))
    finally:
        admin.drop_user(user)
        admin.close()


def test_check_command_against_the_server_with_credentials_from_the_environment(auth_uri, tmp_path):
    """`clair-vec backends --check` as an operator runs it: the token from the environment, the
    refused one on the command line, and nothing left on the server afterwards."""
    from pymilvus import MilvusClient

    admin = MilvusClient(uri=auth_uri, token=ROOT_TOKEN)
    before = sorted(admin.list_collections())
    env = {**os.environ, "MILVUS_TOKEN": ROOT_TOKEN}
    cmd = [sys.executable, "-m", "clair_vec.cli", "backends", "--check", "milvus", "--uri", auth_uri, "--wrong-credential",
           f"token={WRONG}", "-k", "refused_credentials or refused_connection or aliases_are_set"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "  holds    refused credentials are not retried and say so" in out.stdout
    assert "  holds    a refused connection is backend unavailable at once" in out.stdout
    # the refused token given on the command line, also tried in the URI (the environment one needs a fixture)
    assert "  holds    refused credentials from the uri or the environment are refused alike[uri]" in out.stdout
    assert "4 hold, 0 broken, 1 skipped" in out.stdout and WRONG not in out.stdout + out.stderr
    assert sorted(admin.list_collections()) == before and not (admin.list_aliases().get("aliases") or [])
    bad = subprocess.run(cmd[:-4], capture_output=True, text=True, env={**env, "MILVUS_TOKEN": WRONG}, timeout=300)
    assert bad.returncode == 2 and "refused the credentials (from $MILVUS_TOKEN)" in bad.stderr, bad.stderr[-2000:]
    assert WRONG not in bad.stderr + bad.stdout
    admin.close()
