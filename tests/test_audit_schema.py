"""The JSON Schemas of `imgchain audit --output json` and of one `jsonl`
line (imgchain/schema/, shipped as package data): valid draft 2020-12,
strict (a missing field, an unknown field or code fails), in step with
imgchain.policy.CODES and the README, and met by real outputs of a store
that mixes clean and hostile images, names that are not UTF-8 among them."""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import pathlib
import re
import shutil
import subprocess

import craft
import pytest
from test_audit_output import BASE, MID, hostile_store, put, qcow2_naming, run

from imgchain.cli import EXIT_FAIL
from imgchain.formats import qcow2 as qcow2_format
from imgchain.policy import CODES, Severity

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extra: pip install -e '.[test]'")

README = pathlib.Path(__file__).parent.parent / "README.md"
FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"


def schema(name: str) -> dict:  # type: ignore[type-arg]
    """A schema as the installed package carries it."""
    text = importlib.resources.files("imgchain").joinpath(f"schema/{name}.schema.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


DOC, LINE = schema("audit"), schema("audit-line")


def validator(s: dict):  # type: ignore[no-untyped-def,type-arg]
    return jsonschema.Draft202012Validator(s)


def test_the_schemas_are_valid_draft_2020_12_and_share_their_definitions():
    for s in (DOC, LINE):
        assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(s)
    assert DOC["$defs"] == LINE["$defs"], "audit.schema.json and audit-line.schema.json must define the same $defs"


def test_the_codes_are_imgchain_policy_codes():
    for s in (DOC, LINE):
        assert s["$defs"]["finding"]["properties"]["code"]["enum"] == sorted(CODES), (
            "a code was added to or removed from imgchain.policy.CODES: update the enum in both schema files"
        )
        severities = set(s["$defs"]["severity"]["enum"])
        assert {c.severity.label for c in CODES.values()} <= severities
        assert severities <= {s.label for s in Severity}


def test_the_schemas_are_package_data():
    text = pathlib.Path(__file__).parent.parent.joinpath("pyproject.toml").read_text()
    assert re.search(r'^imgchain = \[.*"schema/\*\.json".*\]$', text, re.M)


def test_every_field_is_documented_in_the_readme():
    readme = README.read_text()
    section = readme[readme.index("## `imgchain audit`") :]
    fields = {*DOC["$defs"]["image"]["properties"], *DOC["$defs"]["finding"]["properties"], "findings"}
    for field in fields:
        if field.endswith("_hex"):
            assert f"`{field}`" in section, f"README: {field} is not named among the _hex fields"
        else:
            assert f"| `{field}` |" in section, f"README: no row for the JSON field {field}"


# -- real outputs -----------------------------------------------------------------------------


def big_hostile_store(root: pathlib.Path) -> None:
    """hostile_store, and more: a data file, a polyglot, a qemu-made vmdk
    with a rewritten embedded descriptor (with qemu-img), a raw disk holding
    a qcow2 header that names a non-UTF-8 backing file, a data file named
    in bytes that are not UTF-8."""
    hostile_store(root)
    r = os.fsencode(root)
    put(os.path.join(r, b"up/data.qcow2"), (FIXTURES / "misc/data-file.qcow2").read_bytes())
    named_data = craft.qcow2(extensions=[craft.ext(qcow2_format.EXT_DATA_FILE, b"d\xff.raw")], incompatible_features=4)
    put(os.path.join(r, b"up/data\xff.qcow2"), named_data)
    iso = bytearray(128 * 1024)
    iso[0x8000:0x8006] = b"\x01CD001"
    iso[0x8800:0x8806] = b"\xffCD001"
    qcow2 = craft.qcow2(cluster_bits=16)
    put(os.path.join(r, b"up/poly.qcow2"), qcow2[:0x8000] + bytes(iso[0x8000:0x10000]) + qcow2[0x10000:])
    put(os.path.join(r, b"up/guest\xfd.raw"), qcow2_naming(b"/etc/\xff\xfe"))
    put(os.path.join(r, b"up/clean.raw"), BASE)
    put(os.path.join(r, b"up/clean.qcow2"), craft.rebacked(MID, None))
    if shutil.which("qemu-img"):
        vmdk = os.path.join(r, b"up/so.vmdk")
        make = [b"qemu-img", b"create", b"-q", b"-f", b"vmdk", b"-o", b"subformat=streamOptimized", vmdk, b"1M"]
        subprocess.run(make, check=True)
        with open(vmdk, "rb") as f:
            data = bytearray(f.read())
        at = data.index(b'SPARSE "so.vmdk"')
        data[at : at + 16] = b'SPARSE "/x\xff" '
        put(os.path.join(r, b"up/evil.vmdk"), bytes(data))


@pytest.fixture
def hostile(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    big_hostile_store(tmp_path / "s")
    return tmp_path


#: The option sets the store is audited with: each brings findings of its own.
RUNS = [
    (),
    ("-f", "raw"),
    ("--standalone",),
    ("--formats", "raw,vmdk"),
    ("--root", "s/vm1"),
    ("--max-depth", "2"),
]


def outputs(capsys, output: str):  # type: ignore[no-untyped-def]
    for options in RUNS:
        code, out, err = run(capsys, "audit", f"--output={output}", *options, "s", "missing-path")
        assert code == EXIT_FAIL, err
        yield options, out


def test_real_json_documents_meet_the_schema(hostile, capsys):
    seen: set[str] = set()
    hexes: set[str] = set()
    check = validator(DOC)
    for options, out in outputs(capsys, "json"):
        doc = json.loads(out)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(doc)]
        assert errors == [], (options, errors[:5])
        seen |= {f["code"] for f in doc["findings"]}
        for item in [*doc["images"], *doc["findings"]]:
            hexes |= {k for k in item if k.endswith("_hex")}
    # The outputs checked hold most codes, and names that are not UTF-8 in every kind of field.
    expected = {
        "backing-missing",
        "backing-outside-root",
        "backing-network",
        "backing-not-regular",
        "backing-loop",
        "backing-format-unrecorded",
        "unsupported-feature",
        "external-data-file",
        "format-polyglot",
        "format-probe-mismatch",
        "not-standalone",
        "format-not-allowed",
        "image-unreadable",
        "backing-too-deep",
    }
    if shutil.which("qemu-img"):
        expected.add("vmdk-embedded-extent")
    assert expected <= seen, expected - seen
    assert {"path_hex", "backing_hex", "dependents_hex", "image_hex", "chain_hex", "target_hex"} <= hexes
    assert {"would_open_hex", "would_open_files_hex", "data_file_hex"} <= hexes


def test_real_jsonl_lines_meet_the_schema(hostile, capsys):
    check = validator(LINE)
    places = 0
    for options, out in outputs(capsys, "jsonl"):
        for text in out.splitlines():
            line = json.loads(text)
            errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(line)]
            assert errors == [], (options, line, errors[:5])
            places += "named" not in line
    assert places >= len(RUNS)  # (the missing path is a place, not an image)


# -- strict enough to fail ------------------------------------------------------------------------


def test_the_schemas_refuse_what_is_wrong(store_doc):  # type: ignore[no-untyped-def]
    doc, line = store_doc
    check, check_line = validator(DOC), validator(LINE)
    assert check.is_valid(doc) and check_line.is_valid(line)

    def refused(edit, target=doc, v=check) -> bool:  # type: ignore[no-untyped-def]
        broken = copy.deepcopy(target)
        edit(broken)
        return not v.is_valid(broken)

    assert refused(lambda d: d["images"][0].pop("named"))
    assert refused(lambda d: d["images"][0].pop("dependents"))
    assert refused(lambda d: d["images"][0].update(colour="red"))
    assert refused(lambda d: d["images"][0].update(path_hex="zz"))
    assert refused(lambda d: d["images"][0].update(format_source="guessed"))
    assert refused(lambda d: d["findings"][0].update(code="backing-lost"))
    assert refused(lambda d: d["findings"][0].update(severity="info"))
    assert refused(lambda d: d["findings"][0].pop("message"))
    assert refused(lambda d: d["findings"][0].update(chain=[]))
    assert refused(lambda d: d["findings"][0].update(extra="x"))
    assert refused(lambda d: d["findings"][0].pop("target"))  # (backing-missing always names its target)
    assert refused(lambda d: d.pop("findings"))
    assert refused(lambda d: d.update(version=1))
    assert refused(lambda d: d.pop("findings"), line, check_line)
    assert refused(lambda d: d.pop("worst"), line, check_line)  # an image line has every image field
    assert refused(lambda d: d["findings"][0].update(code="nope"), line, check_line)


@pytest.fixture
def store_doc(tmp_path, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    put(tmp_path / "s/a.qcow2", qcow2_naming(b"gone.raw"))
    code, out, _ = run(capsys, "audit", "--output=json", "s")
    assert code == EXIT_FAIL
    doc = json.loads(out)
    code, out, _ = run(capsys, "audit", "--output=jsonl", "s")
    (line,) = [json.loads(text) for text in out.splitlines()]
    assert doc["findings"][0]["code"] == "backing-missing"
    return doc, line
