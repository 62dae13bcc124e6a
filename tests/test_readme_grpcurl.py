"""Every grpcurl command in README.md's `grpcurl-examples` block runs as written against a live server.

The commands are taken from the README (backslash continuations joined, comments dropped) and run with bash from
the repository root, in order (index before get, delete last); only the README's port 50051 is replaced by the
test server's. Each must exit 0 and print what its RPC answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Callable
from typing import Any

from acg2vec_testing.paths import ROOT
from acg2vec_testing.services import LISTED

README = ROOT / "README.md"
MARKER = "# grpcurl-examples:"
README_TARGET = "127.0.0.1:50051"


def readme_commands() -> list[str]:
    blocks = re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)
    marked = [b for b in blocks if b.startswith(MARKER)]
    assert len(marked) == 1, f"README.md needs exactly one ```sh block starting with {MARKER!r}"
    commands, current = [], ""
    for line in marked[0].splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
            continue
        commands.append(current)
        current = ""
    assert not current, "dangling line continuation in the README block"
    return commands


COMMANDS = readme_commands()


def what(command: str) -> str:
    """The method a command calls (the last `pkg.Service/Method`), or grpcurl's verb (list / describe)."""
    methods = re.findall(r"\b[\w.]+\.\w+/(\w+)\b", command)
    if methods:
        return methods[-1]
    verb = re.search(r"grpcurl -plaintext \S+ (list|describe)\b", command)
    assert verb, f"not a grpcurl call: {command}"
    return verb.group(1)


def expect_list(out: str, command: str) -> None:
    names = set(out.split())
    if command.endswith(" list"):
        assert names == LISTED
    else:
        service = command.rsplit(" ", 1)[1]
        assert f"{service}.Search" in names and f"{service}.IndexIllustration" in names


def expect_describe(out: str, command: str) -> None:
    name = command.rsplit(" ", 1)[1]
    assert f"{name} is a " in out
    assert "rpc TagImage ( .acg2vec.v1.TagImageRequest )" in out or "bytes image = 1;" in out


def expect_json(check: Callable[[dict[str, Any], str], None]) -> Callable[[str, str], None]:
    def parse(out: str, command: str) -> None:
        check(json.loads(out), command)

    return parse


def health(out: dict[str, Any], command: str) -> None:
    assert out == {"status": "SERVING"}


def tags(out: dict[str, Any], command: str) -> None:
    result = out["result"]
    assert 0 < len(result["tags"]) <= 5 and all(t["score"] >= 0.3 for t in result["tags"])
    assert result["rating"].startswith("RATING_") and result["model"]["name"] == "tagger"


def feature(out: dict[str, Any], command: str) -> None:
    vector = out["feature"]
    assert len(vector["values"]) == vector["dimension"] > 0 and vector["normalized"] is True


def indexed(out: dict[str, Any], command: str) -> None:
    assert out["illustration"]["id"] == "sample"
    assert out.get("outcome") in ("INDEX_OUTCOME_CREATED", "INDEX_OUTCOME_UPDATED", "INDEX_OUTCOME_UNCHANGED")


def got(out: dict[str, Any], command: str) -> None:
    illustration = out["illustration"]
    assert illustration["id"] == "sample" and illustration["metadata"]["fields"] == {"source": "readme"}
    assert "image_vector" not in illustration, "vectors only when includeVectors is asked for"


def searched(out: dict[str, Any], command: str) -> None:
    ids = [hit["id"] for hit in out.get("hits", [])]
    if '"illustration_id"' in command:
        assert "sample" not in ids, "search by a stored id leaves that illustration out"
    elif '"filter"' in command:
        assert ids == ["sample"], "the field filter leaves only the README's illustration"
    else:
        scores = {hit["id"]: hit["score"] for hit in out["hits"]}
        assert scores.get("sample", 0) > 0.99, "its own image (or vector) finds it"
        assert scores["sample"] >= max(scores.values()) - 1e-4, "... first (ties: other tests may index the same image)"


def deleted(out: dict[str, Any], command: str) -> None:
    assert out == {"existed": True}


EXPECT: dict[str, Callable[[str, str], None]] = {
    "list": expect_list,
    "describe": expect_describe,
    "Check": expect_json(health),
    "TagImage": expect_json(tags),
    "ExtractImageFeature": expect_json(feature),
    "ExtractTextFeature": expect_json(feature),
    "IndexIllustration": expect_json(indexed),
    "GetIllustration": expect_json(got),
    "Search": expect_json(searched),
    "DeleteIllustration": expect_json(deleted),
}


def test_readme_covers_every_service_and_the_asked_for_calls():
    called = [what(c) for c in COMMANDS]
    assert set(called) <= EXPECT.keys(), set(called) - EXPECT.keys()
    for name in ("list", "describe", "Check", "TagImage", "ExtractImageFeature", "ExtractTextFeature"):
        assert name in called, name
    for name in ("IndexIllustration", "GetIllustration", "DeleteIllustration"):
        assert name in called, name
    searches = [c for c in COMMANDS if what(c) == "Search"]
    for query in ('"text"', '"image"', '"illustration_id"', '"vector"'):
        assert any(query in c for c in searches), f"no Search by {query}"
    health_names = re.findall(r'"service": "([\w.]+)"', " ".join(c for c in COMMANDS if what(c) == "Check"))
    assert {*health_names, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} >= LISTED
    assert all(README_TARGET in c for c in COMMANDS), "every command talks to the README's address"


async def test_readme_grpcurl_commands_run_as_written(app):
    for command in COMMANDS:
        local = command.replace(README_TARGET, f"127.0.0.1:{app.port}")
        argv = ["bash", "-o", "pipefail", "-c", local]
        # in a thread: the server under test runs on this event loop
        result = await asyncio.to_thread(subprocess.run, argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        for _ in range(30):  # a health check may catch a NOT_SERVING blip (slow backend probe on a busy machine)
            if what(command) != "Check" or '"NOT_SERVING"' not in result.stdout:
                break
            await asyncio.sleep(1)
            result = await asyncio.to_thread(subprocess.run, argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stderr}"
        if command.endswith("|| true"):  # the bad-input example: the status is on stderr
            assert "Code: InvalidArgument" in result.stderr and "text is empty" in result.stderr, result.stderr
            assert "google.rpc.BadRequest" in result.stderr, result.stderr
            continue
        try:
            EXPECT[what(command)](result.stdout, command)
        except (AssertionError, KeyError, json.JSONDecodeError) as e:
            raise AssertionError(f"{command}\nprinted:\n{result.stdout}") from e
