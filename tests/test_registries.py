"""Registry packages without npm, node, apt or dpkg (acg2vec_models.registries, image/js_bundle.py): the fetch step
run on a machine whose PATH has none of those tools (real npm registry and Debian mirror, small packages), Debian's
sources and version order, .deb unpacking, integrity refusals, and the nsfwjs bundles read in Python exactly as
Node.js evaluates them."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import pytest

from acg2vec_models.image import js_bundle, nsfwjs
from acg2vec_models.registries import debian, npm
from acg2vec_testing.paths import ROOT

#: A small npm package and the registry's integrity of it (https://registry.npmjs.org/is-number/7.0.0).
SMALL_NPM = (
    "is-number",
    "7.0.0",
    "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==",
)
#: A small Debian package (architecture all, about 17 KB) of the pinned suite.
SMALL_DEB = "python3-six"
TOOLS = ("npm", "npx", "node", "nodejs", "apt", "apt-get", "apt-cache", "dpkg", "dpkg-deb", "ar", "tar", "xz", "curl")

FETCH_WITHOUT_TOOLS = """
import json, shutil, sys
from pathlib import Path
from acg2vec_models.registries import debian, npm
tools = {name: shutil.which(name) for name in json.loads(sys.argv[2])}
assert not any(tools.values()), tools
out = Path(sys.argv[1])
package, version, integrity = json.loads(sys.argv[3])
tarball = npm.fetch_tarball(package, version, integrity, out / "npm")
npm.unpack(tarball, out / "npm-unpacked")
found = debian.fetch_and_extract([sys.argv[4]], out / "deb-root", out / "debs")
print(json.dumps({"tarball": str(tarball), "deb": {n: [p.version, p.sha256, p.url] for n, p in found.items()}}))
"""


def test_the_fetch_step_runs_without_npm_node_apt_or_dpkg(tmp_path):
    bin_dir = tmp_path / "bin"  # PATH: a folder with python in it and nothing else
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("PATH", "npm_config_registry", "NPM_CONFIG_REGISTRY")}
    out = subprocess.run(
        [sys.executable, "-c", FETCH_WITHOUT_TOOLS, str(tmp_path / "out"), json.dumps(TOOLS), json.dumps(SMALL_NPM),
         SMALL_DEB],
        env={**env, "PATH": str(bin_dir)}, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    package = json.loads((tmp_path / "out" / "npm-unpacked" / "package" / "package.json").read_text())
    assert (package["name"], package["version"]) == SMALL_NPM[:2]
    assert (tmp_path / "out" / "npm-unpacked" / "package" / "index.js").is_file()
    _, sha256, url = result["deb"][SMALL_DEB]
    assert url.startswith("https://") and url.endswith(".deb") and len(sha256) == 64
    six = list((tmp_path / "out" / "deb-root" / "usr" / "lib").rglob("six.py"))
    assert len(six) == 1 and "Utilities for writing code that runs on Python 2 and 3" in six[0].read_text()
    deb = next((tmp_path / "out" / "debs").glob("*.deb"))
    assert debian._sha256(deb) == sha256, "the kept .deb is the one the index describes"


def test_a_pin_the_registry_does_not_publish_is_refused(tmp_path):
    package, version, _ = SMALL_NPM
    wrong = "sha512-" + "A" * 86 + "=="
    with pytest.raises(RuntimeError, match="publishes integrity"):
        npm.fetch_tarball(package, version, wrong, tmp_path)
    assert not list(tmp_path.iterdir()), "nothing is downloaded for a package that is not the pinned one"
    with pytest.raises(ValueError, match="Subresource Integrity"):
        npm.fetch_tarball(package, version, "md5-abc", tmp_path)


def test_npm_registry_is_the_one_npm_would_use(tmp_path, monkeypatch):
    monkeypatch.delenv("npm_config_registry", raising=False)
    monkeypatch.delenv("NPM_CONFIG_REGISTRY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert npm.registry_url() == npm.DEFAULT_REGISTRY
    (tmp_path / ".npmrc").write_text("fund=false\nregistry = https://npm.example.org/mirror\n")
    assert npm.registry_url() == "https://npm.example.org/mirror/"
    monkeypatch.setenv("npm_config_registry", "https://other.example.org")
    assert npm.registry_url() == "https://other.example.org/"


# ------------------------------------------------------------------------------------------------ Debian


def test_mirrors_come_from_apt_sources_in_both_formats_over_https(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        textwrap.dedent("""\
            # a comment
            deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example.org/debian bookworm main
            deb-src http://src.example.org/debian bookworm main
            deb https://deb.debian.org/debian bookworm main  # again, as the default
        """)
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        textwrap.dedent("""\
            Types: deb
            # http://snapshot.debian.org/archive/debian/20250520T000000Z
            URIs: http://deb822.example.org/debian
             http://second.example.org/debian
            Suites: bookworm bookworm-updates
            Components: main

            Types: deb
            URIs: http://disabled.example.org/debian
            Suites: bookworm
            Enabled: no

            Types: deb-src
            URIs: http://only-source.example.org/debian
            Suites: bookworm
        """)
    )
    (tmp_path / "sources.list.d" / "cdrom.list").write_text("deb cdrom:[Debian 12]/ bookworm main\n")
    assert debian.configured_mirrors(tmp_path) == [
        "https://mirror.example.org/debian",
        "https://deb.debian.org/debian",
        "https://deb822.example.org/debian",
        "https://second.example.org/debian",
    ]
    assert debian.configured_mirrors(tmp_path / "none") == [debian.DEFAULT_MIRROR]


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.0", "1.0-1"), ("1.0-1", "1.0-2"), ("1.0~rc1", "1.0"), ("1.0", "1.0+dfsg"), ("1.0", "1.0a"),
        ("2.9", "2.10"), ("9:1.0", "10:0.1"), ("2.0", "1:0.1"), ("0.18+dfsg-15", "0.18+dfsg-19"),
        ("1.0~~", "1.0~"), ("1.0-1~bpo1", "1.0-1"), ("1.2.3", "1.2.3.0"), ("1.02", "1.3"),
    ],
)  # fmt: skip
def test_debian_version_order_is_dpkgs(older, newer):
    assert debian.compare_versions(older, newer) < 0 < debian.compare_versions(newer, older)
    assert debian.compare_versions(newer, newer) == 0


def test_the_index_gives_the_newest_version_of_each_wanted_package():
    index = textwrap.dedent("""\
        Package: tool
        Version: 1.0-2
        Architecture: all
        Filename: pool/main/t/tool/tool_1.0-2_all.deb
        Size: 10
        SHA256: aa
        Description: a tool
         spanning two lines

        Package: other
        Version: 9
        Filename: pool/o.deb
        Size: 1
        SHA256: bb

        Package: tool
        Version: 1:0.9
        Architecture: all
        Filename: pool/main/t/tool/tool_0.9_all.deb
        Size: 11
        SHA256: cc
    """)
    found = debian.parse_index(iter(index.splitlines(keepends=True)), {"tool"}, "https://m.example.org/debian")
    assert list(found) == ["tool"]
    assert found["tool"].version == "1:0.9" and found["tool"].sha256 == "cc" and found["tool"].size == 11
    assert found["tool"].url == "https://m.example.org/debian/pool/main/t/tool/tool_0.9_all.deb"


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    """An ar archive as dpkg-deb writes one (16-byte names, decimal sizes, 2-byte alignment)."""
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}".encode() + b"`\n"
        out.write(header + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _data_tar(entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:xz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return buffer.getvalue()


@pytest.mark.parametrize(("suffix", "mode"), [("xz", "w:xz"), ("gz", "w:gz"), ("bz2", "w:bz2")])
def test_a_deb_is_unpacked_like_dpkg_deb_x(tmp_path, suffix, mode):
    link = tarfile.TarInfo("./usr/share/pics/alias.png")
    link.type, link.linkname = tarfile.SYMTYPE, "../pics/real.png"
    data = _data_tar([("./usr/share/pics/real.png", b"PNG!"), ("./usr/share/doc/odd", b"x"), link], mode)
    deb = tmp_path / "p.deb"
    deb.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _data_tar([])), (f"data.tar.{suffix}", data)]))
    names = debian.extract(deb, tmp_path / "root")
    assert "./usr/share/pics/real.png" in names
    assert (tmp_path / "root" / "usr" / "share" / "pics" / "real.png").read_bytes() == b"PNG!"
    alias = tmp_path / "root" / "usr" / "share" / "pics" / "alias.png"
    assert alias.is_symlink() and alias.read_bytes() == b"PNG!"


def test_a_deb_that_writes_outside_its_root_or_is_not_a_deb_is_refused(tmp_path):
    evil = tmp_path / "evil.deb"
    evil.write_bytes(_ar([("debian-binary", b"2.0\n"), ("data.tar.xz", _data_tar([("../escaped", b"x")]))]))
    with pytest.raises(tarfile.OutsideDestinationError):
        debian.extract(evil, tmp_path / "root")
    assert not (tmp_path / "escaped").exists()
    (tmp_path / "notar.deb").write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(ValueError, match="not an ar archive"):
        debian.extract(tmp_path / "notar.deb", tmp_path / "root")
    (tmp_path / "nodata.deb").write_bytes(_ar([("debian-binary", b"2.0\n")]))
    with pytest.raises(ValueError, match=r"one data\.tar"):
        debian.extract(tmp_path / "nodata.deb", tmp_path / "root")


# ------------------------------------------------------------------------------------------------ JS bundles

UMD = (
    '!function(e){if("object"==typeof exports&&"undefined"!=typeof module)module.exports=e();else{window.m=e()}}'
    "(function(){return function e(a,n,i){return n}({1:[function(e,a,n){a.exports=%s},{}]},{},[1])(1)});"
)


def test_bundle_literals_are_read_as_javascript_reads_them():
    literal = (
        "{a:!0,b:!1,'c d':.5,\"e\":-0,f:1e-3,g:[1,[2,{h:null}],void 0],0:'it\\'s',i:\"\\u00e9\\x41\\n\","
        "$j:-.25,k:[],l:{},m:'\\ud83d\\ude00'}"
    )
    value = js_bundle.exported_value(UMD % literal)
    assert value == {
        "a": True, "b": False, "c d": 0.5, "e": 0, "f": 0.001, "g": [1, [2, {"h": None}], None], "0": "it's",
        "i": "éA\n", "$j": -0.25, "k": [], "l": {}, "m": "😀",
    }  # fmt: skip
    assert js_bundle.exported_value('module.exports = "c2hhcmQ=";\n') == "c2hhcmQ="
    assert js_bundle.exported_value("module.exports = [1, 2, 3]") == [1, 2, 3]


@pytest.mark.parametrize(
    "source",
    [
        UMD % "{a:foo()}",  # a call
        UMD % '"a"+"b"',  # an expression built from literals
        UMD % "{a:1,b:[1,2}",  # broken
        "module.exports = compute();",  # no literal at all
        "var x = 1;",
    ],
)
def test_a_bundle_that_computes_its_value_is_refused(source):
    with pytest.raises(js_bundle.BundleError):
        js_bundle.exported_value(source)


NODE_DUMP = """
const fs = require("fs");
const dir = process.argv[1];
const bundle = require(dir + "/model.min.js");
const shards = bundle.weightsManifest.flatMap(group => group.paths.map(p => require(dir + "/" + p + ".min.js")));
fs.writeSync(1, JSON.stringify({topology: bundle.modelTopology, manifest: bundle.weightsManifest, shards}));
"""


@pytest.mark.parametrize("model", ["mobilenet_v2", "inception_v3"])
def test_the_real_nsfwjs_bundles_read_in_python_as_nodejs_evaluates_them(model):
    models = nsfwjs.fetch(ROOT / ".cache" / "packages" / "npm")
    folder = models / model
    bundle = js_bundle.exported_value((folder / "model.min.js").read_text())
    paths = [path for group in bundle["weightsManifest"] for path in group["paths"]]
    shards = [js_bundle.exported_value((folder / f"{path}.min.js").read_text()) for path in paths]
    tfjs = nsfwjs.read_bundle(folder)  # every weight byte used exactly once
    assert set(tfjs.weights) == {w["name"] for g in bundle["weightsManifest"] for w in g["weights"]}
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: the comparison with its evaluation needs it (the reading does not)")
    out = subprocess.run([node, "-e", NODE_DUMP, str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    evaluated = json.loads(out.stdout)
    assert evaluated["topology"] == bundle["modelTopology"]
    assert evaluated["manifest"] == bundle["weightsManifest"]
    assert evaluated["shards"] == shards
