"""The store's contract pieces that need no engine: redaction of credentials, where credentials
come from, capabilities, the top_k limit, free-space checks, crash markers, alias files, the
`clair-vec backends --check` arguments, and the guide's list of promises kept in sync."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clair_vec_numpy import NumpyBackend

from clair_vec.errors import (
    AuthenticationError,
    BackendError,
    BackendUnavailableError,
    CapabilityError,
    CollectionMismatchError,
    DiskFullError,
    RecordNotFoundError,
)
from clair_vec.store import disk_space
from clair_vec.store.alias_file import AliasFile
from clair_vec.store.backend import Backend, CollectionInfo, Record
from clair_vec.store.crash_marker import WriteMarker, probe
from clair_vec.store.credentials import find_secret
from clair_vec.store.redaction import (
    install_log_filter,
    redact_uri,
    register_secret,
    schemeless_credentials,
    scrub,
    uri_secrets,
)
from clair_vec.store.testing import BackendConformance, make_records

ROOT = Path(__file__).resolve().parents[1]


def test_the_guide_lists_every_promise_of_the_suite():
    guide = (ROOT / "plugins" / "WRITING_A_BACKEND.md").read_text()
    listed = guide[guide.index("### What the suite checks") :]
    promises = sorted(n for n in dir(BackendConformance) if n.startswith("test_"))
    missing = [p for p in promises if f"`{p}`" not in listed]
    assert not missing, f"promises of BackendConformance missing from the guide's 'What the suite checks': {missing}"
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", listed))
    assert named <= set(promises), f"the guide lists promises the suite does not have: {sorted(named - set(promises))}"


# ---------------------------------------------------------------------------- redaction
@pytest.mark.parametrize(("uri", "shown"), [
    ("http://user:pw@h:19530/?token=x&db=a", "http://***@h:19530/?token=***&db=a"),
    ("https://k3y@db.example.com/path?api_key=abc&X-Amz-Signature=s1g&keyspace=ks", "https://***@db.example.com/path?api_key=***&X-Amz-Signature=***&keyspace=ks"),
    ("http://127.0.0.1:19530", "http://127.0.0.1:19530"),
    ("./gallery.db", "./gallery.db"),
    ("local:/data/qdrant", "local:/data/qdrant"),
    ("root:pw-no-scheme@db.example.com:19530", "***@db.example.com:19530"),  # a server address typed without http://
    ("/data/photos@2x/gallery.db", "/data/photos@2x/gallery.db"),  # an '@' in a path is not user info
    (None, "(embedded default)"),
])  # fmt: skip
def test_redact_uri_hides_user_info_and_credential_parameters(uri, shown):
    assert redact_uri(uri) == shown


def test_uri_secrets_and_scrub_hide_what_a_uri_carries():
    uri = "http://alice:s3cret-Pa55%21@h:1/?access_token=tok-123456789&db=x"
    assert set(uri_secrets(uri)) >= {"s3cret-Pa55!", "s3cret-Pa55%21", "tok-123456789"}
    for s in uri_secrets(uri):
        register_secret(s)
    text = f"failed: {uri} said s3cret-Pa55! and tok-123456789 (see 'Authorization: Bearer abcdefgh123')"
    clean = scrub(text)
    assert "s3cret" not in clean and "tok-123456789" not in clean and "abcdefgh123" not in clean, clean
    assert "db=x" in clean and "failed:" in clean


def test_scrub_leaves_short_registered_secrets_in_free_text_but_not_in_credential_positions():
    register_secret("Milvus")  # Milvus's well-known default password: too short to scrub from prose
    assert scrub("cannot reach Milvus at http://root:Milvus@h:19530") == "cannot reach Milvus at http://***@h:19530"
    assert scrub("options password=Milvus, token: root:Milvus") == "options password=***, token: ***"


def test_credentials_without_a_scheme_are_masked_in_text_and_refused_as_a_store(tmp_path, monkeypatch):
    text = "cannot reach Milvus at 'root:No-Scheme-Pw-31@10.0.0.5:19530' (uri: root:No-Scheme-Pw-31@10.0.0.5:19530 is illegal)"
    assert scrub(text) == "cannot reach Milvus at '***@10.0.0.5:19530' (uri: ***@10.0.0.5:19530 is illegal)"
    for prose in ("mail bob@example.com", "ssh git@github.com:org/repo", "/data/photos@2x/a.png", "error: x@y"):
        assert scrub(prose) == prose  # an e-mail address, scp's syntax, a path: no colon-separated user info before '@'
    for uri in ("root:p@ss-No-Scheme-1@db:19530", "root:ab/cd-No-Scheme-2@db:6333", "root:pa?ss-No-Scheme-3@db:1"):
        assert redact_uri(uri) == f"***@db:{uri.rsplit(':', 1)[1]}" and schemeless_credentials(uri)  # '@', '/', '?' in it
    assert not any(map(schemeless_credentials, ("local:gallery@2x", "C:gallery@2x.db", "http://u:p@h", "//nas[1]/g.db")))
    # an id a request sent, echoed in a 404: quadratic backtracking took minutes at this size, a blocked event loop
    code = ("from clair_vec.store.redaction import mask_credential_shapes as m\n"
            "for t in (\"no image '\" + '+' * 200_000 + \"'\", '=a' * 100_000 + ':'): m(t)")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20)  # about a second with the import; minutes before
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"'\*\*\*@10.0.0.5:19530' holds credentials but no scheme: put http://") as refused:
        NumpyBackend("root:No-Scheme-Pw-31@10.0.0.5:19530")  # an embedded engine would have made a folder of that name
    assert "No-Scheme-Pw-31" not in str(refused.value) and list(tmp_path.iterdir()) == []
    assert scrub("No-Scheme-Pw-31") == "***"  # registered before the refusal: a later message cannot show it either


def test_the_log_filter_scrubs_records_of_clair_vec_and_plugin_loggers(caplog):
    register_secret("log-secret-0042")
    install_log_filter("clair_vec", "clair_vec_milvus")
    caplog.set_level(logging.INFO)
    logging.getLogger("clair_vec_milvus").info("connecting with %s", "log-secret-0042")
    try:
        raise RuntimeError("server said log-secret-0042")
    except RuntimeError:
        logging.getLogger("clair_vec.store.backend").exception("it failed")
    assert "log-secret-0042" not in caplog.text and caplog.text.count("***") >= 2, caplog.text


def test_a_backend_never_shows_the_credentials_of_its_uri_or_options(tmp_path):
    uri = f"{tmp_path}/store"
    with pytest.raises(ValueError, match=r"the numpy backend \(NumpyBackend at .*\) has no option 'api_key'; its options: disk_margin_mb") as refused:
        NumpyBackend(uri, api_key="option-key-77777777")  # a credential it does not take: refused, never shown
    assert "option-key-77777777" not in str(refused.value) and scrub("key option-key-77777777") == "key ***"
    assert not Path(uri).exists()
    be = NumpyBackend(uri)
    try:
        assert repr(be) == f"<NumpyBackend 'numpy' at {uri}>"
    finally:
        be.close()
    remote = NumpyBackend("http://bob:uri-pass-123456@db:5432/?token=uri-token-123456")  # a server URI, as the base sees it
    try:
        assert remote.display_uri == "http://***@db:5432/?token=***"
        assert "uri-pass" not in repr(remote) and scrub("uri-pass-123456 uri-token-123456") == "*** ***"
    finally:
        remote.close()


# ---------------------------------------------------------------------------- credentials
def test_credentials_come_from_the_option_then_each_variable_then_its_file(tmp_path):
    env = ("CLAIR_VEC_X_TOKEN", "X_TOKEN")
    assert find_secret("given-123", "token", env, {"X_TOKEN": "env"}).source == "option token"
    found = find_secret(None, "token", env, {"X_TOKEN": "from-env-1", "CLAIR_VEC_X_TOKEN": "from-clair-1"})
    assert (found.value, found.source) == ("from-clair-1", "$CLAIR_VEC_X_TOKEN")
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file-123\n")  # as Docker mounts it: a trailing line break
    found = find_secret(None, "token", env, {"CLAIR_VEC_X_TOKEN_FILE": str(secret_file), "X_TOKEN": "later"})
    assert (found.value, found.source) == ("from-file-123", "the file named by $CLAIR_VEC_X_TOKEN_FILE")
    assert "from-file-123" not in repr(found) and scrub("from-file-123") == "***"
    assert not find_secret(None, "token", env, {})
    with pytest.raises(BackendError, match=r"\$X_TOKEN_FILE names .*missing.*cannot be read"):
        find_secret(None, "token", env, {"X_TOKEN_FILE": str(tmp_path / "missing")})


def test_milvus_reads_its_token_from_the_environment_and_never_shows_it(tmp_path, monkeypatch):
    from clair_vec_milvus import MilvusBackend

    (tmp_path / "tok").write_text("root:file-token-9999\n")
    monkeypatch.setenv("MILVUS_TOKEN", "root:env-token-8888")
    monkeypatch.setenv("CLAIR_VEC_MILVUS_TOKEN_FILE", str(tmp_path / "tok"))
    with pytest.raises(BackendUnavailableError, match="cannot reach Milvus") as err:
        MilvusBackend("http://127.0.0.1:9", timeout=2)
    assert "file-token-9999" not in str(err.value) and "env-token-8888" not in str(err.value)
    be = MilvusBackend.__new__(MilvusBackend)  # the lookup alone, without a server to connect to
    be.lite, be.uri = False, "http://127.0.0.1:9"
    assert be._find_credential(None, "", None).source == "the file named by $CLAIR_VEC_MILVUS_TOKEN_FILE"
    monkeypatch.delenv("CLAIR_VEC_MILVUS_TOKEN_FILE")
    assert be._find_credential(None, "", None).source == "$MILVUS_TOKEN"
    assert be._find_credential(None, "root", "pw-12345678").source == "options user/password"
    with pytest.raises(ValueError, match="password needs option user"):
        be._find_credential(None, "", "pw-12345678")


def test_qdrant_reads_its_api_key_file_and_a_refused_connection_is_unavailable(tmp_path, monkeypatch):
    from clair_vec_qdrant import QdrantClientBackend

    (tmp_path / "key").write_text("qdrant-key-55555555")
    monkeypatch.setenv("QDRANT_API_KEY_FILE", str(tmp_path / "key"))
    with pytest.raises(BackendUnavailableError, match="cannot reach Qdrant at 'http://127.0.0.1:9'") as err:
        QdrantClientBackend("http://127.0.0.1:9", timeout=2)
    assert "qdrant-key-55555555" not in str(err.value)


# ---------------------------------------------------------------------------- capabilities and limits
class Bare(NumpyBackend):
    """The example without the optional primitives, as a minimal third-party plugin is."""

    name = "bare"
    _vectors = Backend._vectors
    _set_alias, _drop_alias, _list_aliases = Backend._set_alias, Backend._drop_alias, Backend._list_aliases


def test_missing_capabilities_are_said_plainly():
    be = Bare()
    try:
        be.create_collection(CollectionInfo("c", 3, "m"))
        assert not be.supports("vectors") and not be.supports("aliases")
        with pytest.raises(CapabilityError, match=r"backend 'bare' cannot search by stored id \(it does not implement _vectors\)"):
            be.vectors("c", ["a"])
        with pytest.raises(CapabilityError, match="does not implement _set_alias"):
            be.set_alias("live", "c")
        assert be.aliases() == {} and be.drop_alias("live") is False and be.resolve("c") == "c"
        with pytest.raises(ValueError, match="unknown feature 'colour'"):
            be.supports("colour")
    finally:
        be.close()


def test_vectors_name_every_missing_id():
    be = NumpyBackend()
    try:
        be.create_collection(CollectionInfo("c", 4, "m"))
        records = make_records(3, dim=4)
        be.upsert("c", records)
        got = be.vectors("c", [records[2].id, records[0].id])
        assert list(got) == [records[2].id, records[0].id] and got[records[0].id].dtype == np.float32
        missing = [f"absent{i}" for i in range(7)]
        with pytest.raises(RecordNotFoundError) as err:
            be.vectors("c", [records[1].id, *missing])
        assert err.value.ids == missing and isinstance(err.value, LookupError)
        assert "7 of the 8 ids asked for are not stored in collection 'c': 'absent0'" in str(err.value)
        assert "and 2 more" in str(err.value)
    finally:
        be.close()


def test_top_k_above_milvus_limit_is_refused_before_the_engine(tmp_path):
    from clair_vec_milvus import MilvusBackend

    with MilvusBackend(str(tmp_path / "m.db")) as be:
        be.create_collection(CollectionInfo("c", 4, "m"))
        be.upsert("c", make_records(3, dim=4))
        with pytest.raises(ValueError) as err:
            be.search("c", np.ones(4), top_k=20000)
        assert str(err.value) == "top_k 20000 is above the milvus backend's limit of 16384; ask for fewer hits or page with offset"
        assert len(be.search("c", np.ones(4), top_k=16384)[0]) == 3


def test_a_milvus_flush_waits_out_a_data_node_that_re_registers_and_then_names_it(tmp_path, monkeypatch, caplog):
    """A loaded 2.3 server whose data node lost its etcd session answered a second process's
    flush with "session not found->datanode-2: node not found": the flush is asked
    again until the node is back, and a node that never comes back is BackendUnavailableError
    saying so, not the raw server trace. Any other flush error is not waited on."""
    pytest.importorskip("milvus_lite")
    from clair_vec_milvus import MilvusBackend, writes
    from pymilvus.exceptions import MilvusException

    gone = MilvusException(code=65535, message="attempt #0: stack trace: /__w/milvus-lite/milvus_binary/milvus/pkg/tracer/stack_trace.go:51 "
                           "...: session not found->datanode-2: node not found[node=2]: unrecoverable error")  # fmt: skip
    clock = [0.0]
    monkeypatch.setattr(writes.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(writes.time, "monotonic", lambda: clock[0])
    with MilvusBackend(str(tmp_path / "m.db")) as be:
        be.create_collection(CollectionInfo("c", 4, "m"))
        be.upsert("c", make_records(3, dim=4))
        real, asked = be.client.flush, []

        def flush(name, answers):
            asked.append(name)
            answer = next(answers)
            if answer is not None:
                raise answer
            return real(name)

        answers = iter([gone, gone, None])
        monkeypatch.setattr(be.client, "flush", lambda name, **kw: flush(name, answers))
        be.flush("c")
        assert len(asked) == 3 and "re-registering its data node" in caplog.text
        assert be.count("c") == 3

        asked.clear()
        forever = iter(lambda: gone, object())
        monkeypatch.setattr(be.client, "flush", lambda name, **kw: flush(name, forever))
        with pytest.raises(BackendUnavailableError) as err:
            be.flush("c")
        said = str(err.value)
        assert "its data node has not come back for 60 s" in said and "check the server's log" in said
        assert "stack trace" not in said and "/__w/" not in said and "answers 'node not found'" in said and 60 <= len(asked) <= 63

        asked.clear()
        other = iter([MilvusException(code=1, message="collection not loaded")])
        monkeypatch.setattr(be.client, "flush", lambda name, **kw: flush(name, other))
        with pytest.raises(Exception, match="collection not loaded"):
            be.flush("c")
        assert len(asked) == 1


def test_auth_errors_and_rejected_requests_are_never_retried(tmp_path, monkeypatch):
    class Refusing(NumpyBackend):
        def translate_error(self, exc):
            return AuthenticationError("the server refused the credentials") if isinstance(exc, PermissionError) else None

        def is_transient(self, exc):
            return True  # a careless plugin: translate_error still wins

    be = Refusing()
    calls = []
    monkeypatch.setattr(be, "retry_base_delay", 0.0)

    def refused():
        calls.append(1)
        raise PermissionError("401")

    with pytest.raises(AuthenticationError):
        be._call(refused)
    assert len(calls) == 1
    be.close()


# ---------------------------------------------------------------------------- disks
def test_a_write_the_disk_cannot_hold_is_refused_with_the_numbers(tmp_path, monkeypatch):
    be = NumpyBackend(str(tmp_path / "np"), disk_margin_mb=16)
    try:
        be.create_collection(CollectionInfo("c", 4, "m"))
        monkeypatch.setattr(disk_space, "free_bytes", lambda path: 3 * 2**20)
        with pytest.raises(DiskFullError) as err:
            be.upsert("c", make_records(10, dim=4))
        message = str(err.value)
        assert message.startswith(f"not enough free space for the numpy store {tmp_path / 'np'}: 3.0 MiB free on ")
        assert "this write needs about 16.0 MiB (the batch plus a 16 MiB safety margin" in message
        assert "Free space, or move the store to a bigger disk." in message and be.count("c") == 0
        monkeypatch.setattr(disk_space, "free_bytes", lambda path: 17 * 2**20)
        assert be.upsert("c", make_records(10, dim=4)) == 10
    finally:
        be.close()
    with pytest.raises(ValueError, match="disk_margin_mb must be >= 0"):
        NumpyBackend(disk_margin_mb=-1)


def test_an_engines_no_space_left_becomes_disk_full(tmp_path):
    class Full(NumpyBackend):
        def _upsert(self, name, records):
            raise OSError(errno.ENOSPC, "No space left on device")

    be = Full(str(tmp_path / "np"))
    try:
        be.create_collection(CollectionInfo("c", 4, "m"))
        with pytest.raises(DiskFullError, match="the disk holding the numpy store .* is full .*What was written before"):
            be.upsert("c", make_records(2, dim=4))
    finally:
        be.close()
    wrapped = RuntimeError("<MilvusException: (code=1, message=[Errno 28] No space left on device)>")
    assert disk_space.is_disk_full(wrapped) and not disk_space.is_disk_full(RuntimeError("no"))


def test_write_marker_and_probe(tmp_path):
    marker = WriteMarker(tmp_path)
    with marker:
        with marker:  # re-entrant: the file stays until the outermost write ends
            assert marker.stale().startswith(f"pid {os.getpid()} started a write")
        assert marker.stale() is not None
    assert marker.stale() is None
    assert probe("pass") is None
    assert probe(f"import os; os.kill(os.getpid(), {int(signal.SIGBUS)})") == "killed by SIGBUS"
    assert probe("raise SystemExit('gone')") == "exit status 1: gone"


def test_alias_file_reads_a_map_replaced_by_anyone(tmp_path):
    f = AliasFile(tmp_path / "aliases.json")
    assert f.read() == {} and f.target("a") is None
    assert f.update({"a": "c1", "b": "c2"}) == {"a": "c1", "b": "c2"}
    other = AliasFile(tmp_path / "aliases.json")  # another handle, or another process, moves "a"
    other.update({"a": "c3"}, drop=("b",))
    assert f.read() == {"a": "c3"} and f.target("a") == "c3"
    assert not list(tmp_path.glob(".*tmp"))


# ---------------------------------------------------------------------------- backends --check arguments
@pytest.mark.parametrize(("argv", "says"), [
    (["backends", "--check", "numpy"], "--check needs --uri"),
    (["backends", "--check", "nosuchdb", "--uri", "/tmp/x"], "unknown backend 'nosuchdb'"),
    (["backends", "--check", "qdrant", "--uri", "/tmp/x", "--option", "timeout"], "--option takes KEY=VALUE"),
    (["backends", "--uri", "/tmp/x"], "go with --check NAME"),
])  # fmt: skip
def test_check_refuses_bad_arguments_with_exit_2(argv, says, capsys):
    from clair_vec.cli import main

    assert main(argv) == 2
    assert says in capsys.readouterr().err


def test_check_options_parse_numbers_but_keep_credentials_strings():
    from clair_vec.store.deployment_check import parse_options

    assert parse_options(["timeout=5", "ratio=0.5", "db_name=prod", "flag=true", "token=123456"]) == {
        "timeout": 5, "ratio": 0.5, "db_name": "prod", "flag": True, "token": "123456"}  # fmt: skip
    assert parse_options(['index_params={"M": 16}', "index_threshold=none", 'token={"not": "parsed"}']) == {
        "index_params": {"M": 16}, "index_threshold": None, "token": '{"not": "parsed"}'}  # fmt: skip
    with pytest.raises(ValueError, match="--backend-option index_params=...: the value is not a JSON object"):
        parse_options(["index_params={M: 16}"], flag="--backend-option")


def test_records_written_before_a_refused_batch_stay(tmp_path, monkeypatch):
    be = NumpyBackend(str(tmp_path / "np"))
    try:
        be.create_collection(CollectionInfo("c", 4, "m"))
        monkeypatch.setattr(be, "max_batch_records", 2)
        free = iter([10 * 2**30, 0])
        monkeypatch.setattr(disk_space, "free_bytes", lambda path: next(free))
        with pytest.raises(DiskFullError):
            be.upsert("c", [Record(f"id{i}", np.ones(4), {"domain": "photo"}) for i in range(4)])
        assert be.count("c") == 2  # the first batch landed; the second was never started
    finally:
        be.close()


def test_an_engine_that_refuses_top_k_is_a_value_error_too():
    """Without the declared limit, the 2.3.5 server's own refusal still reaches the user as a ValueError."""
    uri = os.environ.get("MILVUS_URI")
    if not uri:
        pytest.skip("MILVUS_URI is not set: run through `make test` (tests/servers.py starts a Milvus 2.3.5 server)")
    from clair_vec_milvus import MilvusBackend

    name = f"conformance_topk_{os.getpid()}"
    with MilvusBackend(uri) as be:
        be.max_top_k = None  # as a plugin that does not know its engine's limit
        be.create_collection(CollectionInfo(name, 4, "m"))
        try:
            be.upsert(name, make_records(3, dim=4))
            with pytest.raises(ValueError, match=r"the Milvus server at .* refused top_k: .*16384.*ask for fewer hits"):
                be.search(name, np.ones(4), top_k=20000)
        finally:
            be.drop_collection(name)


def test_a_handle_that_cached_a_collection_refuses_another_model_s_vectors_after_it_was_made_anew():
    """Another handle dropped the collection and created it again for another model; the first
    handle's cached spec still said the old model, so it wrote old-model vectors into the new one."""
    a, b = NumpyBackend(), NumpyBackend()
    b.data = a.data  # one store seen by two handles, as two processes see a server
    try:
        a.create_collection(CollectionInfo("g", 4, "model-v1"))
        a.upsert("g", make_records(3, dim=4), model="model-v1")
        assert b.drop_collection("g")
        b.create_collection(CollectionInfo("g", 4, "model-v2"))
        with pytest.raises(CollectionMismatchError, match="holds vectors of model 'model-v2', not 'model-v1'"):
            a.upsert("g", make_records(3, dim=4, prefix="late"), model="model-v1")
        assert b.count("g") == 0
        assert a.upsert("g", make_records(2, dim=4, prefix="new"), model="model-v2") == 2
    finally:
        a.close()
        b.close()
