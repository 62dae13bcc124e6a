"""Security end to end: TLS and mutual TLS with a CA made in the test, bearer tokens with scopes on every RPC kind,
health and reflection open, secrets never in logs or error messages, and a server that refuses to start when its
security configuration is unusable (docs/security.md)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import click
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from acg2vec.client import AsyncAcg2vecClient
from acg2vec.v1 import (
    image_feature_pb2,
    search_pb2,
    search_pb2_grpc,
    tagging_pb2,
    tagging_pb2_grpc,
    text_feature_pb2,
    text_feature_pb2_grpc,
)
from acg2vec_server.settings import Settings
from acg2vec_server.transport.auth import METHOD_SCOPES, AuthConfigError, TokenStore, hash_token, parse_tokens
from acg2vec_server.transport.security import Security, SecurityConfigError, is_loopback
from acg2vec_server.transport.tls import server_credentials
from acg2vec_testing.images import image_bytes
from acg2vec_testing.paths import ROOT
from tests.support.pki import CertificateAuthority, Pki
from tests.support.servers import SecureServer

ACG2VEC = str(Path(sys.executable).parent / "acg2vec")
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
UNAUTHENTICATED, PERMISSION_DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


def tls_channel(server: SecureServer) -> grpc.aio.Channel:
    """A channel that trusts the test CA and presents the client certificate (the server requires one)."""
    pki = server.pki
    credentials = grpc.ssl_channel_credentials(pki.read("ca.crt"), pki.read("client.key"), pki.read("client.crt"))
    return grpc.aio.secure_channel(server.target, credentials)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


async def stream_status(call) -> tuple[grpc.StatusCode, str, int]:
    answers = 0
    try:
        async for _ in call:
            answers += 1
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or "", answers
    return grpc.StatusCode.OK, "", answers


# --------------------------------------------------------------------------------------------- configuration


def test_every_rpc_of_the_protos_has_exactly_one_scope():
    from acg2vec.v1 import search_pb2 as s
    from acg2vec.v1 import tagging_pb2 as t

    methods = {
        f"/{service.full_name}/{m.name}"
        for module in (t, image_feature_pb2, text_feature_pb2, s)
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }
    assert set(METHOD_SCOPES) == methods
    writes = {m.rsplit("/", 1)[1] for m, scope in METHOD_SCOPES.items() if scope == "write"}
    assert writes == {
        "IndexIllustration",
        "StreamIndexIllustrations",
        "UpdateIllustrationMetadata",
        "DeleteIllustration",
    }


def test_tokens_file_format_and_its_errors_never_echo_a_token():
    plain = "plain-token-0123456789"
    entries = parse_tokens(
        f"# comment\n\nreader read {hash_token('x' * 20)}\nboth read,write {plain} ; ops write {hash_token('y' * 20)}",
        "tokens",
    )
    assert [(e.name, sorted(e.scopes)) for e in entries] == [
        ("reader", ["read"]),
        ("both", ["read", "write"]),
        ("ops", ["write"]),
    ]
    bad = {
        f"a read {plain} extra": "3 fields",
        f"a admin {plain}": "scopes must be",
        "a read short-token": "shorter than 16",
        "a read sha256:abcd": "64 hex",
        f"a read {plain}\na write {plain}x": "used twice",
        f"a read {plain}\nb write {plain}": "listed twice",
        f"bad/name read {plain}": "name",
    }
    for text, phrase in bad.items():
        with pytest.raises(AuthConfigError, match=phrase) as info:
            parse_tokens(text, "tokens")
        assert plain not in str(info.value) and "short-token" not in str(info.value)


def test_token_store_rereads_a_changed_file_and_keeps_the_old_tokens_on_a_bad_edit(tmp_path, caplog):
    file = tmp_path / "tokens"
    first, second = "first-token-0123456789", "second-token-0123456789"
    file.write_text(f"one read {hash_token(first)}\n")
    store = TokenStore(file, recheck_s=0)
    assert store.authenticate(first).name == "one" and store.authenticate(second) is None
    file.write_text(f"two write {hash_token(second)}\n")
    assert store.authenticate(second).name == "two" and store.authenticate(first) is None
    file.write_text(f"broken {second}\n")
    with caplog.at_level(logging.ERROR):
        assert store.authenticate(second).name == "two", "a bad edit locks nobody out"
    assert "keeping the previous tokens" in caplog.text and second not in caplog.text


def test_loopback_detection():
    assert all(map(is_loopback, ["127.0.0.1:1", "localhost:1", "[::1]:1", "127.0.0.2:1"]))
    assert not any(map(is_loopback, ["0.0.0.0:1", "[::]:1", "10.0.0.1:1", "acg2vec:1", ":1"]))


def test_security_settings_that_refuse_to_start(tmp_path, pki):
    def refused(phrase: str, **settings: object) -> None:
        with pytest.raises(SecurityConfigError, match=phrase):
            Security.from_settings(Settings(**settings))

    refused("no tokens are configured.*acg2vec auth make-token.*ACG2VEC_AUTH_TOKENS_FILE")  # the default
    refused("allowed on loopback only", auth="none", listen="0.0.0.0:50051")
    refused("cannot read the tokens file", auth_tokens_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("# nothing yet\n")
    refused("the tokens file .*empty has no entries", auth_tokens_file=tmp_path / "empty")
    refused("set tls_key_file", auth="none", tls_cert_file=pki.server_cert)
    refused("needs TLS", auth="none", tls_client_ca_file=pki.ca)
    refused(
        "cannot read the certificate", auth="none", tls_cert_file=tmp_path / "nope.crt", tls_key_file=pki.server_key
    )
    refused("do not load together", auth="none", tls_cert_file=pki.server_cert, tls_key_file=pki.client_key)
    (tmp_path / "junk.pem").write_text("not a certificate")
    refused("not PEM", auth="none", tls_cert_file=tmp_path / "junk.pem", tls_key_file=pki.server_key)
    # allowed: local mode on loopback; auth=none beyond loopback when mutual TLS authenticates every client
    assert Security.from_settings(Settings(auth="none")).interceptor is None
    mutual = Security.from_settings(
        Settings(auth="none", listen="0.0.0.0:50051", tls_cert_file=pki.server_cert, tls_key_file=pki.server_key,
                 tls_client_ca_file=pki.ca)
    )  # fmt: skip
    assert mutual.tls and "certificate" in mutual.warnings[0]
    plain = Security.from_settings(Settings(listen="0.0.0.0:50051", auth_tokens="a read " + "t" * 20))
    assert "plaintext" in plain.warnings[0]


def test_secrets_stay_out_of_settings_repr_and_cli_flags():
    token = "inline-secret-token-0123456789"
    settings = Settings(auth_tokens=f"ops read {token}", milvus_token="milvus-secret")
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert token not in text and "milvus-secret" not in text
    out = subprocess.run([ACG2VEC, "serve", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "--auth-tokens-file" in out and "--tls-client-ca-file" in out
    assert "--auth-tokens " not in out and "--milvus-token" not in out, "secrets come from env or files, never flags"


def test_serve_refuses_to_start_without_tokens_and_says_how_to_fix_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACG2VEC_")}
    env |= {"ACG2VEC_DATA_DIR": str(tmp_path), "ACG2VEC_METRICS_PORT": "0"}
    run = subprocess.run(
        [ACG2VEC, "serve", "--listen", "127.0.0.1:0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0
    assert "refusing to start" in run.stderr and "acg2vec auth make-token" in run.stderr, run.stderr
    assert list(tmp_path.iterdir()) == [], "nothing was started"


def test_make_token_cli_appends_a_hashed_entry_the_server_accepts(tmp_path):
    file = tmp_path / "tokens"
    run = subprocess.run(
        [ACG2VEC, "auth", "make-token", "indexer", "--scopes", "write", "--tokens-file", str(file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    assert token not in file.read_text() and hash_token(token) in file.read_text()
    assert oct(file.stat().st_mode & 0o777) == "0o600"
    assert TokenStore(file).authenticate(token).scopes == {"write"}


# --------------------------------------------------------------------------------------------- TLS and mTLS


async def test_tls_port_speaks_tls_only_and_health_stays_open(secure_server: SecureServer):
    request = health_pb2.HealthCheckRequest(service="")
    async with tls_channel(secure_server) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)  # no token: health is open
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name async for r in listing for s in r.list_services_response.service}
        assert "acg2vec.v1.SearchService" in names, "reflection is open too (grpcurl list)"
    async with grpc.aio.insecure_channel(secure_server.target) as channel:
        code, _ = await status_of(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE, "plaintext to the TLS port fails"
    async with grpc.aio.insecure_channel(secure_server.health_target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, "the plaintext health port for probes"
        code, _ = await status_of(
            text_feature_pb2_grpc.TextFeatureServiceStub(channel).ExtractTextFeature(
                text_feature_pb2.ExtractTextFeatureRequest(text="a"), metadata=bearer(secure_server.tokens["admin"])
            )
        )
        assert code == grpc.StatusCode.UNIMPLEMENTED, "the health port serves health only"


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(secure_server: SecureServer):
    pki, request = secure_server.pki, text_feature_pb2.ExtractTextFeatureRequest(text="魔法少女")

    async def call(credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
        async with grpc.aio.secure_channel(secure_server.target, credentials) as channel:
            stub = text_feature_pb2_grpc.TextFeatureServiceStub(channel)
            reply = stub.ExtractTextFeature(request, metadata=bearer(secure_server.tokens["reader"]), timeout=30)
            return (await status_of(reply))[0]

    ca = pki.read("ca.crt")
    assert await call(grpc.ssl_channel_credentials(ca)) == grpc.StatusCode.UNAVAILABLE, "no client certificate"
    stranger = grpc.ssl_channel_credentials(ca, pki.read("stranger.key"), pki.read("stranger.crt"))
    assert await call(stranger) == grpc.StatusCode.UNAVAILABLE, "a client certificate from another CA"
    assert (
        await call(grpc.ssl_channel_credentials(ca, pki.read("client.key"), pki.read("client.crt")))
        == grpc.StatusCode.OK
    )


async def test_tls_without_client_certificates_and_rotation(tmp_path, pki: Pki):
    """TLS alone (no client CA: no client certificate needed), and rotation: new connections get the new
    certificate without a restart; a certificate that does not load keeps the previous one."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.read("server.crt"))
    key.write_bytes(pki.read("server.key"))
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(cert, key, None))
    await server.start()

    async def serving(ca: bytes) -> bool:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca)) as channel:
            code, _ = await status_of(
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            )
            return code == grpc.StatusCode.OK

    try:
        new_ca = CertificateAuthority.create("rotated CA")
        assert await serving(pki.read("ca.crt")) and not await serving(new_ca.pem)
        new_key, new_cert = new_ca.issue("rotated", server=True)
        key.write_bytes(new_key)
        cert.write_bytes(new_cert)
        assert await serving(new_ca.pem) and not await serving(pki.read("ca.crt"))
        cert.write_text("truncated")
        assert await serving(new_ca.pem), "a certificate that does not load keeps the previous one"
    finally:
        await server.stop(0)


# --------------------------------------------------------------------------------------------- tokens and scopes


async def test_unary_calls_need_a_known_token_with_the_right_scope(secure_server: SecureServer):
    t = secure_server.tokens
    async with tls_channel(secure_server) as channel:
        text = text_feature_pb2_grpc.TextFeatureServiceStub(channel)
        search = search_pb2_grpc.SearchServiceStub(channel)
        read = text_feature_pb2.ExtractTextFeatureRequest(text="初音ミク")
        index = search_pb2.IndexIllustrationRequest(id="secure-1", image=image_bytes(7))

        code, message = await status_of(text.ExtractTextFeature(read, timeout=30))
        assert code == UNAUTHENTICATED and "authorization: Bearer <token>" in message
        for header in (f"Bearer not-{t['reader']}", f"Basic {t['reader']}", "Bearer", t["reader"]):
            code, message = await status_of(text.ExtractTextFeature(read, metadata=(("authorization", header),)))
            assert code == UNAUTHENTICATED, header
            assert t["reader"] not in message
        for name in ("reader", "admin", "ops"):
            assert (await status_of(text.ExtractTextFeature(read, metadata=bearer(t[name]))))[0] == grpc.StatusCode.OK

        code, message = await status_of(search.IndexIllustration(index, metadata=bearer(t["reader"]), timeout=30))
        assert code == PERMISSION_DENIED and "'write' scope" in message and "reader" in message
        for request, rpc in [
            (search_pb2.DeleteIllustrationRequest(id="secure-1"), search.DeleteIllustration),
            (search_pb2.UpdateIllustrationMetadataRequest(id="secure-1"), search.UpdateIllustrationMetadata),
        ]:
            assert (await status_of(rpc(request, metadata=bearer(t["ops"]))))[0] == PERMISSION_DENIED
        code, message = await status_of(text.ExtractTextFeature(read, metadata=bearer(t["writer"])))
        assert code == PERMISSION_DENIED and "'read' scope" in message, "write does not imply read"

        reply = await search.IndexIllustration(index, metadata=bearer(t["writer"]), timeout=60)
        assert reply.illustration.id == "secure-1"
        got = await search.GetIllustration(
            search_pb2.GetIllustrationRequest(id="secure-1"), metadata=bearer(t["admin"])
        )
        assert got.illustration.id == "secure-1"
        deleted = await search.DeleteIllustration(
            search_pb2.DeleteIllustrationRequest(id="secure-1"), metadata=bearer(t["writer"])
        )
        assert deleted.existed


async def test_streaming_calls_are_checked_before_any_message(secure_server: SecureServer):
    t = secure_server.tokens
    sent = []

    def index_requests():
        for i in range(2):
            sent.append(i)
            yield search_pb2.StreamIndexIllustrationsRequest(id=f"secure-stream-{i}", image=image_bytes(30 + i))

    def tag_requests():
        yield tagging_pb2.StreamTagImagesRequest(request_id="0", image=image_bytes(3))

    async def nothing_yet():
        """Sends no message and never half-closes: the verdict must come before any request. (It also keeps
        the aio client clear of grpc/grpc#36066, a write racing the server's early status turned INTERNAL.)"""
        await asyncio.Event().wait()
        yield  # pragma: no cover - never reached

    async with tls_channel(secure_server) as channel:
        search = search_pb2_grpc.SearchServiceStub(channel)
        tagging = tagging_pb2_grpc.TaggingServiceStub(channel)
        code, _, _ = await asyncio.wait_for(stream_status(tagging.StreamTagImages(nothing_yet())), 30)
        assert code == UNAUTHENTICATED
        code, _, answers = await stream_status(tagging.StreamTagImages(tag_requests(), metadata=bearer(t["reader"])))
        assert code == grpc.StatusCode.OK and answers == 1
        code, message, answers = await asyncio.wait_for(
            stream_status(search.StreamIndexIllustrations(nothing_yet(), metadata=bearer(t["reader"]))), 30
        )
        assert code == PERMISSION_DENIED and answers == 0 and "'write' scope" in message
        code, _, answers = await stream_status(
            search.StreamIndexIllustrations(index_requests(), metadata=bearer(t["writer"]), timeout=120)
        )
        assert code == grpc.StatusCode.OK and answers == 2
        for i in range(2):
            await search.DeleteIllustration(
                search_pb2.DeleteIllustrationRequest(id=f"secure-stream-{i}"), metadata=bearer(t["writer"])
            )


async def test_index_cli_with_a_read_only_token_fails_with_permission_denied(secure_server: SecureServer, tmp_path):
    """`acg2vec index` over TLS with a token that lacks the write scope: exit 1, nothing indexed, and a summary
    that ends on PERMISSION_DENIED and names the scope (a stream lost to grpc's INTERNAL race, grpc/grpc#36066, is
    retried until the real status comes through)."""
    pki = secure_server.pki
    (tmp_path / "images").mkdir()
    for i in range(3):
        (tmp_path / "images" / f"{i}.png").write_bytes(image_bytes(60 + i))
    (tmp_path / "token").write_text(secure_server.tokens["reader"] + "\n")
    args = [
        ACG2VEC, "index", str(tmp_path / "images"), "--target", secure_server.target, "--no-progress",
        "--token-file", str(tmp_path / "token"), "--tls-ca-file", str(pki.ca),
        "--tls-cert-file", str(pki.client_cert), "--tls-key-file", str(pki.client_key),
        "--journal", str(tmp_path / "journal"),
    ]  # fmt: skip
    for _ in range(3):  # the race hit about one run in three before the fix
        run = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=180)
        assert run.returncode == 1, run.stdout + run.stderr
        output = run.stdout + run.stderr
        assert "ABORTED: PERMISSION_DENIED" in output and "'write' scope" in output, output


async def test_tokens_never_reach_the_logs(secure_server: SecureServer, caplog, capfd):
    """The access log names the token (client=writer) and the outcome, never the token itself; nor does
    anything else the server logs (grpc's own stderr included)."""
    t = secure_server.tokens
    unknown = "unknown-token-0123456789abcdef"
    caplog.set_level(logging.DEBUG)
    async with tls_channel(secure_server) as channel:
        text = text_feature_pb2_grpc.TextFeatureServiceStub(channel)
        search = search_pb2_grpc.SearchServiceStub(channel)
        read = text_feature_pb2.ExtractTextFeatureRequest(text="silver hair")
        await text.ExtractTextFeature(read, metadata=bearer(t["reader"]))
        await status_of(
            search.DeleteIllustration(search_pb2.DeleteIllustrationRequest(id="x"), metadata=bearer(t["reader"]))
        )
        await status_of(text.ExtractTextFeature(read, metadata=bearer(unknown)))
        await status_of(text.ExtractTextFeature(read, metadata=(("authorization", f"Token {t['admin']}"),)))
        await search.DeleteIllustration(search_pb2.DeleteIllustrationRequest(id="x"), metadata=bearer(t["writer"]))
    access = [r.getMessage() for r in caplog.records if r.name == "acg2vec.access"]
    assert any("ExtractTextFeature OK" in line and "client=reader" in line for line in access), access
    assert any("DeleteIllustration PERMISSION_DENIED" in line and "client=-" in line for line in access), access
    assert any("ExtractTextFeature UNAUTHENTICATED" in line for line in access), access
    assert any("DeleteIllustration OK" in line and "client=writer" in line for line in access), access
    captured = capfd.readouterr()
    everything = caplog.text + "\n".join(r.getMessage() for r in caplog.records) + captured.out + captured.err
    for secret in [*t.values(), unknown]:
        assert secret not in everything


async def test_grpcurl_with_ca_and_token(secure_server: SecureServer):
    """The docs/security.md grpcurl form: -cacert (and -cert/-key for mutual TLS) and an authorization header."""
    pki = secure_server.pki
    base = [GRPCURL, "-cacert", str(pki.ca), "-cert", str(pki.client_cert), "-key", str(pki.client_key)]
    call = [*base, "-H", f"authorization: Bearer {secure_server.tokens['reader']}", "-d", '{"text": "sample"}']
    call += [secure_server.target, "acg2vec.v1.TextFeatureService/ExtractTextFeature"]
    run = await asyncio.to_thread(subprocess.run, call, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and '"normalized": true' in run.stdout, run.stderr
    run = await asyncio.to_thread(
        subprocess.run, [*base, secure_server.target, "list"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and "acg2vec.v1.SearchService" in run.stdout, run.stderr
    denied = [
        *base,
        "-d",
        '{"text": "sample"}',
        secure_server.target,
        "acg2vec.v1.TextFeatureService/ExtractTextFeature",
    ]
    run = await asyncio.to_thread(subprocess.run, denied, capture_output=True, text=True, timeout=60)
    assert run.returncode == 64 + 16 and "Unauthenticated" in run.stderr, (run.returncode, run.stderr)
    probe = [GRPCURL, "-plaintext", secure_server.health_target, "grpc.health.v1.Health/Check"]
    run = await asyncio.to_thread(subprocess.run, probe, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and '"SERVING"' in run.stdout, run.stderr


# --------------------------------------------------------------------------------------------- Python client


async def test_python_client_with_mutual_tls_and_token(secure_server: SecureServer):
    pki, t = secure_server.pki, secure_server.tokens
    tls = dict(root_certificates=pki.read("ca.crt"), private_key=pki.read("client.key"))
    tls["certificate_chain"] = pki.read("client.crt")

    def client(token: str | None) -> AsyncAcg2vecClient:
        return AsyncAcg2vecClient(secure_server.target, tls=True, token=token, timeout_s=60, **tls)

    async with client(t["admin"]) as admin:
        assert (await admin.health_check()).status == health_pb2.HealthCheckResponse.SERVING
        indexed = await admin.index_illustration("secure-client", image_bytes(11), title="t")
        assert indexed.illustration.id == "secure-client"
        answers = [a async for a in admin.stream_index_illustrations([("secure-client-2", image_bytes(12))])]
        assert [a.id for a in answers] == ["secure-client-2"] and not answers[0].HasField("error")
        assert (await admin.get_illustration("secure-client-2")).illustration.id == "secure-client-2"
        assert (await admin.search(text="t", top_k=3)).hits is not None
    async with client(t["reader"]) as reader:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await reader.delete_illustration("secure-client")
        assert info.value.code() == PERMISSION_DENIED
        assert (await reader.get_illustration("secure-client")).illustration.id == "secure-client"
    async with client(None) as anonymous:
        assert (await anonymous.health_check()).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await anonymous.extract_text_feature("x")
        assert info.value.code() == UNAUTHENTICATED
    async with client(t["writer"]) as writer:
        for id in ("secure-client", "secure-client-2"):
            assert (await writer.delete_illustration(id)).existed


def test_readme_local_mode_is_explicit():
    """README command 1 runs with auth explicitly off, on loopback (scripts/run.sh)."""
    script = (ROOT / "scripts" / "run.sh").read_text()
    assert "AUTH=${ACG2VEC_AUTH:-none}" in script and '--auth "$AUTH"' in script
    assert "LISTEN=${ACG2VEC_LISTEN:-127.0.0.1:50051}" in script


async def test_cli_connection_flags_reach_a_secured_server(secure_server: SecureServer, tmp_path):
    """The flags `acg2vec index` (and any command that calls a server) takes: --target, --tls-ca-file,
    --tls-cert-file/--tls-key-file, --token-file."""
    from click.testing import CliRunner

    from acg2vec.client import Acg2vecClient
    from acg2vec.indexer.connection import client_kwargs, connection_options

    @click.command()
    @connection_options
    def delete(**connection: object) -> None:
        with Acg2vecClient(**client_kwargs(**connection)) as client:
            click.echo(f"existed={client.delete_illustration('cli-none').existed}")

    pki, t = secure_server.pki, secure_server.tokens
    for name in ("writer", "reader"):
        (tmp_path / name).write_text(t[name] + "\n")
    flags = ["--target", secure_server.target, "--tls-ca-file", str(pki.ca)]
    flags += ["--tls-cert-file", str(pki.client_cert), "--tls-key-file", str(pki.client_key)]

    def run(*args: str):
        return asyncio.to_thread(CliRunner().invoke, delete, [*flags, *args])

    result = await run("--token-file", str(tmp_path / "writer"))
    assert result.exit_code == 0 and result.output.strip() == "existed=False", result.output
    result = await run("--token-file", str(tmp_path / "reader"))
    assert isinstance(result.exception, grpc.RpcError) and result.exception.code() == PERMISSION_DENIED
    result = await asyncio.to_thread(CliRunner().invoke, delete, ["--tls-cert-file", str(pki.client_cert)])
    assert result.exit_code == 2 and "needs both" in result.output
