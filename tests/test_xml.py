"""imgchain xml: the RFC's two layouts and libvirt's backingStore, for file,
block, network and directory sources, with mirrors; reading them back; and
--verify against the disks."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import craft
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgchain.backing_name import Host, NetworkSource
from imgchain.chain import resolve_chain
from imgchain.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, main
from imgchain.disk import Disk, DiskChain, DiskLayer, describe_chain
from imgchain.emit.xml import LAYOUTS, disk_element, render, terminal_text, to_xml
from imgchain.errors import XmlEmitError, XmlError
from imgchain.formats import qcow2
from imgchain.xmlread import detect_layout, parse_disk, read_disks

ROOT = pathlib.Path(__file__).parent.parent
RFC_DIR = ROOT / "fixtures" / "rfc"
#: The 2012 RFC that started this project, carried with the tests (a copy of
#: shared/seed/libvirt-rfc-backing-chain-xml-2012.txt, which users do not have).
SEED = ROOT / "tests" / "data" / "libvirt-rfc-backing-chain-xml-2012.txt"

# The RFC's two layouts of its example, as its text gives them (quoted lines
# of the mail, "> " stripped), with the "<disk ...>" header and the
# "has none" marker of the proof of concept in the same thread added.
RFC_NESTED = """
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/path/to/top'/>
      <mirror>
        <driver name='qemu' type='qed'/>
        <source file='/path/to/mirror'/>
        <backingFile>
          <driver name='qemu' type='raw'/>
          <source file='/path/to/base'/>
          <backingFile/>
        </backingFile>
      </mirror>
      <backingFile>
        <driver name='qemu' type='qcow2'/>
        <source file='/path/to/middle'/>
        <backingFile>
          <driver name='qemu' type='raw'/>
          <source file='/path/to/base'/>
          <backingFile/>
        </backingFile>
      </backingFile>
      <target dev='vda' bus='virtio'/>
    </disk>
"""
RFC_FLAT = """
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/path/to/top'/>
      <mirror>
        <source file='/path/to/mirror' format='qed'/>
        <backing file='/path/to/base' format='raw'/>
      </mirror>
      <backing file='/path/to/middle' format='qcow2'/>
      <backing file='/path/to/base' format='raw'/>
      <target dev='vda' bus='virtio'/>
    </disk>
"""


def shape(element: ET.Element) -> tuple[object, ...]:
    """An element as comparable data: tag, attributes, children (whitespace
    and attribute order do not matter)."""
    return (element.tag, sorted(element.attrib.items()), [shape(c) for c in element])


def test_rfc_text_is_transcribed_faithfully():
    seed = "\n".join(line[2:] if line.startswith("> ") else line for line in SEED.read_text().splitlines())
    for expected in (RFC_NESTED, RFC_FLAT):
        lines = [
            line.strip()
            for line in expected.strip().splitlines()
            if "<backingFile/>" not in line and "<target" not in line and "<disk" not in line
        ]
        for line in lines:
            assert line in seed, line


@pytest.mark.parametrize(("layout", "expected"), [("nested", RFC_NESTED), ("flat", RFC_FLAT)])
def test_rfc_example_reproduces_on_qemu_made_images(capsys, layout, expected):
    """base[raw] <- middle[qcow2] <- top[qcow2], mirror[qed] on base (fixtures/rfc)."""
    assert main(["xml", "--layout", layout, "--mirror", str(RFC_DIR / "mirror"), str(RFC_DIR / "top")]) == EXIT_OK
    ours = capsys.readouterr().out
    rfc = expected.replace("/path/to/", f"{RFC_DIR}/")
    assert shape(ET.fromstring(ours)) == shape(ET.fromstring(rfc))


# -- every layout, every source type -----------------------------------------------------------

NBD = NetworkSource("nbd", "export", (Host("example.org", 10809, "tcp"),))
NBD_UNIX = NetworkSource("nbd", "export", (Host(None, None, "unix", "/run/nbd.sock"),))
RBD = NetworkSource(
    "rbd",
    "pool/image",
    (Host("mon1", 6789, "tcp"), Host("mon2", None, "tcp")),
    snapshot="snap",
    config="/etc/ceph.conf",
)
HTTP = NetworkSource("https", "dir/disk.img", (Host("example.org", 443, "tcp"),), query="a=b")
NFS = NetworkSource("nfs", "export/disk.img", (Host("nfs.example.org", None, "tcp"),), nfs_user="+0", nfs_group="+0")


def layer(kind: str, fmt: str | None = "raw", path: str | None = None, net: NetworkSource | None = None) -> DiskLayer:
    if kind == "network":
        return DiskLayer("network", network=net or NBD, format=fmt)
    return DiskLayer(kind, path=path or f"/img/{kind}", format=fmt)


SHAPES = {
    "file-alone": DiskChain((layer("file", "qcow2"),)),
    "file-file": DiskChain((layer("file", "qcow2", "/a/top"), layer("file", "raw", "/a/base"))),
    "file-block": DiskChain((layer("file", "qcow2"), layer("block", "raw", "/dev/vg/base"))),
    "block-top": DiskChain((layer("block", "qcow2", "/dev/sdb"), layer("file", "raw"))),
    "file-nbd": DiskChain((layer("file", "qcow2"), layer("network", "raw", net=NBD)), ends=False),
    "file-nbd-unix": DiskChain((layer("file", "qcow2"), layer("network", "raw", net=NBD_UNIX)), ends=False),
    "file-rbd": DiskChain((layer("file", "qcow2"), layer("network", "raw", net=RBD)), ends=False),
    "file-https": DiskChain((layer("file", "qcow2"), layer("network", "qcow2", net=HTTP)), ends=False),
    "file-dir": DiskChain((layer("file", "qcow2"), layer("dir", "fat", "/srv/tree")), ends=False),
    "file-nfs": DiskChain((layer("file", "qcow2"), layer("network", "raw", net=NFS)), ends=False),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("path", ["/a\x1b]0;pwned\x07", "/tab\there", "/new\nline", "/cr\rhere", "/bad\udcffbyte"])
def test_names_libvirt_cannot_carry_are_refused(layout, path):
    # libvirt writes a tab, newline or CR raw into an attribute, and its next
    # parse makes a space of it: the name would not survive.
    disk = Disk(DiskChain((layer("file", "qcow2"), layer("file", "raw", path))))
    with pytest.raises(XmlEmitError, match="cannot carry"):
        to_xml(disk, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("path", ["/nb\u00a0sp", "/zero\u200bwidth", "/\u200ezw", "/del\x7fnel\x85"])
def test_names_libvirt_carries_are_written_and_escaped_only_for_a_terminal(layout, path):
    disk = Disk(DiskChain((layer("file", "qcow2"), layer("file", "raw", path))))
    text = to_xml(disk, layout)
    assert path in text
    assert parse_disk(ET.fromstring(text)) == disk
    shown = terminal_text(text)
    assert path not in shown and "&#x" in shown
    assert parse_disk(ET.fromstring(shown)) == disk  # the same XML


def test_ssh_is_written_with_a_note_that_the_schema_lacks_it():
    ssh = NetworkSource("ssh", "p", (Host("h", 22, "tcp"),))
    disk = Disk(DiskChain((layer("file", "qcow2"), layer("network", "raw", net=ssh)), ends=False))
    rendering = render(disk, "backingstore")
    assert parse_disk(ET.fromstring(rendering.text)) == disk
    assert any("protocol 'ssh'" in n and "virt-xml-validate will refuse" in n for n in rendering.notes)
    assert parse_disk(ET.fromstring(to_xml(disk, "flat"))) == disk


def test_backingstore_refuses_an_unknown_format_the_rfc_layouts_leave_it_out():
    unknown = Disk(DiskChain((layer("file", "qcow2"), layer("network", None, net=HTTP)), ends=False))
    with pytest.raises(XmlEmitError, match=r"was not specified in the image metadata.*libvirt cannot probe"):
        to_xml(unknown, "backingstore")
    for layout in ("nested", "flat", "list"):
        assert parse_disk(ET.fromstring(to_xml(unknown, layout))) == unknown


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_every_layout_round_trips_every_source_type(layout, name):
    disk = Disk(SHAPES[name], mirror=SHAPES["file-block"], target="sdb", bus="scsi")
    text = to_xml(disk, layout)
    element = ET.fromstring(text)
    assert detect_layout(element) == layout
    assert parse_disk(element) == disk


def test_network_layer_is_last_and_unmarked():
    element = disk_element(Disk(SHAPES["file-nbd"]), "backingstore")
    store = element.find("backingStore")
    assert store is not None and store.get("type") == "network"
    assert store.find("backingStore") is None
    source = store.find("source")
    assert source is not None
    assert source.attrib == {"protocol": "nbd", "name": "export"}
    assert [h.attrib for h in source.findall("host")] == [{"name": "example.org", "port": "10809"}]
    unix = disk_element(Disk(SHAPES["file-nbd-unix"]), "flat").find("backing")
    assert unix is not None
    assert unix.attrib == {"protocol": "nbd", "name": "export", "format": "raw"}
    assert [h.attrib for h in unix.findall("host")] == [{"transport": "unix", "socket": "/run/nbd.sock"}]


def test_has_none_marker_only_where_the_end_is_known():
    nested = disk_element(Disk(SHAPES["file-alone"]), "nested")
    assert [c.tag for c in nested] == ["driver", "source", "backingFile", "target"]
    assert len(nested.find("backingFile")) == 0  # type: ignore[arg-type]
    open_ended = disk_element(Disk(DiskChain(SHAPES["file-alone"].layers, ends=False)), "nested")
    assert open_ended.find("backingFile") is None


# Any printable text (what imgchain writes into XML; the rest it refuses).
AWKWARD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp", "Zs")) | st.just(" "),
    min_size=1,
    max_size=20,
)
PATHS = st.builds(lambda s: "/" + s, AWKWARD | st.sampled_from(["it's", 'say "hi"', "a&b", "<x>", "dé/漢", "~ %20"]))
FORMATS = st.sampled_from(["raw", "qcow2", "qed", None])
HOSTS = st.builds(Host, st.sampled_from(["h1", "10.0.0.1", "[::1]"]), st.integers(1, 65535) | st.none(), st.just("tcp"))
NETS = st.builds(
    NetworkSource,
    st.sampled_from(["nbd", "rbd", "gluster", "iscsi", "http", "https", "nfs"]),
    AWKWARD | st.none(),
    st.lists(HOSTS, max_size=3).map(tuple),
)
LOCAL = st.builds(DiskLayer, st.sampled_from(["file", "block"]), PATHS, st.none(), FORMATS)
TOPS = st.builds(DiskLayer, st.sampled_from(["file", "block"]), PATHS, st.none(), FORMATS)


@st.composite
def chains(draw: st.DrawFn, layout: str) -> DiskChain:
    layers = [draw(TOPS), *draw(st.lists(LOCAL, max_size=4))]
    end = draw(st.sampled_from(["ends", "network", "open"]))
    if end == "network":
        layers.append(DiskLayer("network", network=draw(NETS), format=draw(FORMATS)))
    if layout == "backingstore":  # a backing layer there always has a format
        layers[1:] = [DiskLayer(x.type, x.path, x.network, x.format or "raw") for x in layers[1:]]
    if layout in ("flat", "list") and end == "open":
        end = "ends"  # the flat and list layouts have no way to say "not looked at"
    if layout == "list" and len(layers) == 2 and layers[1].format is None:
        # One <source> without format= is also the nested layout's open end.
        layers[1] = DiskLayer(layers[1].type, layers[1].path, layers[1].network, "raw")
    return DiskChain(tuple(layers), ends=end == "ends")


@pytest.mark.parametrize("layout", LAYOUTS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_emit_then_parse_gives_back_the_chain(layout, data):
    chain = data.draw(chains(layout))
    mirror = data.draw(st.none() | chains(layout))
    disk = Disk(chain, mirror)
    text = to_xml(disk, layout)
    assert parse_disk(ET.fromstring(text), layout) == disk


# -- libvirt's schema ------------------------------------------------------------------------


def domain_with(disk: ET.Element) -> str:
    domain = ET.Element("domain", type="kvm")
    ET.SubElement(domain, "name").text = "imgchain-test"
    ET.SubElement(domain, "memory").text = "131072"
    ET.SubElement(ET.SubElement(domain, "os"), "type").text = "hvm"
    ET.SubElement(domain, "devices").append(disk)
    return ET.tostring(domain, encoding="unicode")


@pytest.mark.libvirt
@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="virt-xml-validate is not installed")
@pytest.mark.parametrize("name", list(SHAPES))
def test_backingstore_validates_against_libvirts_schema(tmp_path, name):
    mirror = SHAPES["file-file"]
    path = tmp_path / "domain.xml"
    rendering = render(Disk(SHAPES[name], mirror), "backingstore")
    assert rendering.notes == ()  # a note is given exactly where the schema refuses
    path.write_text(domain_with(ET.fromstring(rendering.text)))
    proc = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.libvirt
@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="virt-xml-validate is not installed")
def test_schema_check_can_fail(tmp_path):
    bad = disk_element(Disk(SHAPES["file-file"]), "backingstore")
    bad.find("backingStore").set("type", "carrier-pigeon")  # type: ignore[union-attr]
    path = tmp_path / "domain.xml"
    path.write_text(domain_with(bad))
    assert subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, check=False).returncode != 0


# -- from images on disk ----------------------------------------------------------------------


def overlay(backing: bytes, fmt: bytes) -> bytes:
    """A qcow2 naming ``backing`` with its format recorded."""
    return craft.qcow2(backing=backing, extensions=[craft.ext(qcow2.EXT_BACKING_FORMAT, fmt)])


@pytest.fixture
def images(tmp_path, monkeypatch):
    """top.qcow2 -> sub/mid.qcow2 -> ../base.raw, made byte by byte."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.raw").write_bytes(b"\0" * 4096)
    fmt = qcow2.EXT_BACKING_FORMAT
    (tmp_path / "sub" / "mid.qcow2").write_bytes(
        craft.qcow2(backing=b"../base.raw", extensions=[craft.ext(fmt, b"raw")])
    )
    (tmp_path / "top.qcow2").write_bytes(craft.qcow2(backing=b"sub/mid.qcow2", extensions=[craft.ext(fmt, b"qcow2")]))
    return tmp_path


def test_paths_are_absolute_and_built_as_libvirt_builds_them(images):
    chain = describe_chain(resolve_chain("top.qcow2"))
    assert [(x.path, x.format) for x in chain.layers] == [
        (f"{images}/top.qcow2", "qcow2"),
        (f"{images}/sub/mid.qcow2", "qcow2"),
        (f"{images}/sub/../base.raw", "raw"),
    ]
    assert chain.ends


def test_network_backing_from_a_real_header(images, capsys):
    name = b"nbd+unix:///export?socket=/run/nbd.sock"
    (images / "net.qcow2").write_bytes(
        craft.qcow2(backing=name, extensions=[craft.ext(qcow2.EXT_BACKING_FORMAT, b"raw")])
    )
    assert main(["xml", "--layout", "backingstore", "net.qcow2"]) == EXIT_OK
    store = ET.fromstring(capsys.readouterr().out).find("backingStore")
    assert store is not None and store.get("type") == "network"
    source = store.find("source")
    assert source is not None and source.get("protocol") == "nbd" and source.get("name") == "export"
    assert [h.attrib for h in source.findall("host")] == [{"transport": "unix", "socket": "/run/nbd.sock"}]


def test_json_local_backing_is_walked_and_its_relative_name_kept_as_libvirt_keeps_it(images):
    name = b'json:{"driver":"raw","file":{"driver":"file","filename":"base.raw"}}'
    (images / "j.qcow2").write_bytes(craft.qcow2(backing=name))
    chain = resolve_chain("j.qcow2")
    assert [x.format for x in chain.layers] == ["qcow2", "raw"]
    # libvirt's virStorageSourceParseBackingJSONPath keeps "filename" as it is.
    assert describe_chain(chain).layers[1].path == "base.raw"


def test_credentials_never_reach_the_xml(images, capsys):
    name = b"iscsi://alice:s3cret@example.org/iqn.2013-07.com.example:disk/1"
    (images / "i.qcow2").write_bytes(craft.qcow2(backing=name))
    assert main(["xml", "--layout", "flat", "i.qcow2"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "s3cret" not in out and "alice" not in out
    assert "example.org" in out


@pytest.mark.parametrize(
    "args",
    [("xml",), ("xml", "--verify", "d.xml", "top.qcow2"), ("xml", "--mirror-format", "raw", "top.qcow2")],
)
def test_xml_usage_errors(images, capsys, args):
    assert main(list(args)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("imgchain: usage: ") and err.count("\n") == 1


# -- --verify ---------------------------------------------------------------------------------


def write_domain(path: pathlib.Path, disks: list[ET.Element]) -> None:
    domain = ET.Element("domain", type="kvm")
    devices = ET.SubElement(domain, "devices")
    devices.extend(disks)
    path.write_text(ET.tostring(domain, encoding="unicode"))


def verify(capsys, path: pathlib.Path) -> tuple[int, list[str]]:
    code = main(["xml", "--verify", str(path)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out.splitlines()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_verify_accepts_the_truth(images, capsys, layout):
    disk = Disk(describe_chain(resolve_chain("top.qcow2")))
    write_domain(images / "d.xml", [disk_element(disk, layout)])
    code, lines = verify(capsys, images / "d.xml")
    assert code == EXIT_OK
    assert lines == [f"{images}/d.xml: disk vda: matches the disk (3 layers declared)"]


def drifted(images: pathlib.Path, change: str) -> Disk:
    chain = describe_chain(resolve_chain(str(images / "top.qcow2")))
    layers = list(chain.layers)
    if change == "format":
        layers[2] = DiskLayer("file", path=layers[2].path, format="qcow2")
    elif change == "missing-layer":
        layers.pop()
    elif change == "extra-layer":
        layers.append(DiskLayer("file", path=str(images / "older.raw"), format="raw"))
    elif change == "path":
        layers[1] = DiskLayer("file", path=str(images / "elsewhere.qcow2"), format="qcow2")
    elif change == "type":
        layers[2] = DiskLayer("block", path=layers[2].path, format="raw")
    return Disk(DiskChain(tuple(layers), ends=True))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("change", ["format", "missing-layer", "extra-layer", "path", "type"])
def test_verify_finds_each_kind_of_drift(images, capsys, layout, change):
    write_domain(images / "d.xml", [disk_element(drifted(images, change), layout)])
    code, lines = verify(capsys, images / "d.xml")
    assert code == EXIT_FAIL
    assert any(f": {change}: " in line for line in lines), lines


def test_verify_catches_a_raw_declared_layer_holding_a_qcow2_header(images, capsys):
    # The probing attack: the XML and the overlay both say raw, the content is qcow2.
    (images / "base.raw").write_bytes(craft.qcow2(backing=b"/etc/shadow"))
    disk = Disk(describe_chain(resolve_chain("top.qcow2")))
    write_domain(images / "d.xml", [disk_element(disk, "backingstore")])
    code, lines = verify(capsys, images / "d.xml")
    assert code == EXIT_FAIL
    assert any("format: the XML says raw, but the content probes as qcow2" in line for line in lines)


def test_verify_reports_a_fifo_without_opening_it(images, capsys):
    disk = Disk(describe_chain(resolve_chain("top.qcow2")))
    write_domain(images / "d.xml", [disk_element(disk, "backingstore")])
    os.unlink(images / "base.raw")
    os.mkfifo(images / "base.raw")
    code, lines = verify(capsys, images / "d.xml")
    assert code == EXIT_FAIL
    assert any("unreadable" in line and "a FIFO" in line for line in lines)


def test_verify_on_a_bare_disk_and_on_network_tops(images, capsys):
    disk = Disk(describe_chain(resolve_chain("top.qcow2")))
    (images / "disk.xml").write_text(to_xml(disk, "nested"))
    assert verify(capsys, images / "disk.xml")[0] == EXIT_OK
    net = ET.fromstring("<disk type='network'><source protocol='nbd' name='x'/><target dev='vdb'/></disk>")
    write_domain(images / "d.xml", [disk_element(disk, "flat"), net])
    code, lines = verify(capsys, images / "d.xml")
    assert code == EXIT_OK
    assert lines[-1].endswith("disk vdb: no local source to check")


@pytest.mark.parametrize("text", ["<domain", "<nope/>", "<domain><devices/></domain>"])
def test_verify_bad_xml_is_one_line(images, capsys, text):
    (images / "d.xml").write_text(text)
    assert main(["xml", "--verify", "d.xml"]) == EXIT_FAIL
    err = capsys.readouterr().err
    assert re.fullmatch(r"imgchain: d\.xml: [^\n]+\n", err), err


def test_read_disks_refuses_unknown_source_for_that_disk_alone():
    [(_, error)] = read_disks(
        "<disk type='file'><source file='/x'/><backingStore type='file'><source/></backingStore></disk>"
    )
    assert isinstance(error, XmlError) and "has none of" in str(error)


def test_verify_never_opens_a_fifo(tmp_path, capsys):
    os.mkfifo(tmp_path / "domain.xml")
    assert main(["xml", "--verify", str(tmp_path / "domain.xml")]) == EXIT_FAIL
    assert capsys.readouterr().err.endswith("not a regular file; not opened\n")


def test_top_path_keeps_dot_dot_after_a_symlink(tmp_path, monkeypatch, capsys):
    """``link/../top.qcow2`` is far/top.qcow2 when link -> far/deep: the XML
    must name that file, not a decoy ./top.qcow2 that normalising would give."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "far/deep").mkdir(parents=True)
    (tmp_path / "far/base.raw").write_bytes(b"\0" * 512)
    (tmp_path / "far/top.qcow2").write_bytes(overlay(b"base.raw", b"raw"))
    (tmp_path / "top.qcow2").write_bytes(b"decoy")
    os.symlink("far/deep", tmp_path / "link")
    assert main(["xml", "--layout", "flat", "link/../top.qcow2"]) == EXIT_OK
    disk = parse_disk(ET.fromstring(capsys.readouterr().out))
    assert [x.path for x in disk.chain.layers] == [f"{tmp_path}/link/../top.qcow2", f"{tmp_path}/link/../base.raw"]
    (tmp_path / "v.xml").write_text(to_xml(disk, "nested"))
    assert verify(capsys, tmp_path / "v.xml")[0] == EXIT_OK
    # The same chain declared with the normalised (wrong) base path is a difference.
    wrong = Disk(DiskChain((disk.chain.layers[0], DiskLayer("file", f"{tmp_path}/base.raw", format="raw"))))
    (tmp_path / "w.xml").write_text(to_xml(wrong, "nested"))
    code, lines = verify(capsys, tmp_path / "w.xml")
    assert code == EXIT_FAIL and any(": path: " in line for line in lines)


def test_verify_network_layers_with_credentials_match(images, capsys):
    (images / "n.qcow2").write_bytes(overlay(b"https://user:pw@example.org/x.img?q=1", b"raw"))
    assert main(["xml", "--layout", "backingstore", "n.qcow2"]) == EXIT_OK
    (images / "n.xml").write_text(capsys.readouterr().out)
    code, lines = verify(capsys, images / "n.xml")
    assert code == EXIT_OK, lines


# -- what libvirt's parser reads but its schema refuses: written, with a note ----------------------

SCHEMA_REFUSES = {
    "ssh": NetworkSource("ssh", "srv/x", (Host("h", 22, "tcp"),)),
    "host": NetworkSource("nbd", "x", (Host("my_host", 10809, "tcp"),)),
    "snapshot": NetworkSource("rbd", "pool/img", (), snapshot="snap.1"),
    "socket": NetworkSource("nbd", "x", (Host(None, None, "unix", "run/nbd.sock"),)),
    "config": NetworkSource("rbd", "pool/img", (), config="ceph.conf"),
    "nfs-identity": NetworkSource("nfs", "export/x", (Host("h", None, "tcp"),)),
}


@pytest.mark.libvirt
@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="virt-xml-validate is not installed")
@pytest.mark.parametrize("case", [*SCHEMA_REFUSES, "dir"])
def test_names_the_schema_refuses_are_written_with_a_note(tmp_path, case):
    if case == "dir":
        below = DiskLayer("dir", path="relative/tree", format="fat")
    else:
        below = layer("network", "raw", net=SCHEMA_REFUSES[case])
    disk = Disk(DiskChain((layer("file", "qcow2"), below), ends=False))
    rendering = render(disk, "backingstore")
    assert parse_disk(ET.fromstring(rendering.text)) == disk
    assert len(rendering.notes) == 1 and "virt-xml-validate will refuse this XML" in rendering.notes[0]
    path = tmp_path / "domain.xml"
    path.write_text(domain_with(ET.fromstring(rendering.text)))
    assert subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, check=False).returncode


# -- from images: what libvirt will read as the truth, or a refusal ----------------------------------


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


@pytest.fixture
def unrecorded(tmp_path, monkeypatch):
    """top.qcow2 -> (no format recorded) mid.qcow2 -> (raw recorded) base.raw."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.raw").write_bytes(b"\0" * 4096)
    (tmp_path / "mid.qcow2").write_bytes(overlay(b"base.raw", b"raw"))
    (tmp_path / "top.qcow2").write_bytes(craft.qcow2(backing=b"mid.qcow2"))
    return tmp_path


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_probed_format_is_never_declared(unrecorded, capsys, layout):
    code, out, err = run(capsys, "xml", "--layout", layout, "top.qcow2")
    assert code == EXIT_FAIL and out == ""
    assert "format of backing image 'mid.qcow2' of image" in err
    assert "was not specified in the image metadata (libvirt refuses it" in err
    assert "qemu-img rebase -u -b 'mid.qcow2' -F FORMAT" in err and "--allow-probed" in err
    code, out, err = run(capsys, "xml", "--layout", layout, "--allow-probed", "top.qcow2")
    assert code == EXIT_OK
    assert "warning: the format of backing layer" in err and "libvirt will trust it" in err
    assert parse_disk(ET.fromstring(out)).chain.layers[1].format == "qcow2"


def test_a_probed_layer_with_no_backing_file_is_what_libvirt_probes_too(unrecorded, capsys):
    (unrecorded / "leaf.qcow2").write_bytes(craft.qcow2(backing=b"base.raw"))  # base.raw: probed, no backing
    code, out, err = run(capsys, "xml", "--layout", "backingstore", "leaf.qcow2")
    assert code == EXIT_OK and err == ""
    assert parse_disk(ET.fromstring(out)).chain.layers[1].format == "raw"


@pytest.mark.parametrize(
    "name",
    [
        b"https://user:pw@example.org/x.img",
        b'json:{"driver":"iscsi","transport":"tcp","portal":"example.org","target":"iqn.x:t","user":"u","password":"p"}',
    ],
)
def test_inline_credentials_get_no_backing_layer_as_in_libvirt(unrecorded, capsys, name):
    (unrecorded / "c.qcow2").write_bytes(overlay(name, b"raw"))
    code, out, err = run(capsys, "xml", "--layout", "backingstore", "c.qcow2")
    assert code == EXIT_OK
    assert "backingStore" not in out and "pw" not in out
    assert "libvirt adds no backing layer" in err and "inline authentication" in err
    disk = parse_disk(ET.fromstring(out))
    assert len(disk.chain.layers) == 1 and not disk.chain.ends
    # The RFC layouts describe the chain: the source, never the credentials.
    code, out, err = run(capsys, "xml", "--layout", "list", "c.qcow2")
    assert code == EXIT_OK and "example.org" in out and "pw" not in out


def test_rbd_credentials_are_dropped_but_the_layer_kept_as_in_libvirt(unrecorded, capsys):
    (unrecorded / "r.qcow2").write_bytes(overlay(b"rbd:pool/img:id=admin:key=SECRET", b"raw"))
    code, out, err = run(capsys, "xml", "--layout", "backingstore", "r.qcow2")
    assert code == EXIT_OK and "SECRET" not in out and "admin" not in out
    assert "<source protocol='rbd' name='pool/img'>" in out or "<source protocol='rbd' name='pool/img'/>" in out
    assert "credentials in the backing name" in err


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (b"file:base.raw", "invalid backing protocol 'file'"),
        (
            b'json:{"driver":"qcow2","file":{"driver":"file","filename":"mid.qcow2"}}',
            "missing parser implementation for JSON backing volume driver 'qcow2'",
        ),
    ],
)
def test_names_libvirts_parser_refuses_are_refused_in_backingstore(unrecorded, capsys, name, reason):
    (unrecorded / "n.qcow2").write_bytes(overlay(name, b"qcow2" if b"qcow2" in name else b"raw"))
    code, out, err = run(capsys, "xml", "--layout", "backingstore", "n.qcow2")
    assert code == EXIT_FAIL and out == ""
    assert reason in err and "libvirt refuses the backing name" in err
    assert run(capsys, "xml", "--layout", "nested", "n.qcow2")[0] == EXIT_OK


def test_a_relative_json_file_name_stays_relative_as_in_libvirt(unrecorded, capsys):
    name = b'json:{"driver":"raw","offset":512,"size":1024,"file":{"driver":"file","filename":"base.raw"}}'
    (unrecorded / "j.qcow2").write_bytes(overlay(name, b"raw"))
    code, out, err = run(capsys, "xml", "--layout", "backingstore", "j.qcow2")
    assert code == EXIT_OK
    assert "<source file='base.raw'>" in out
    assert "<slice type='storage' offset='512' size='1024'/>" in out
    assert "the relative path 'base.raw'" in err


def test_raw_declared_over_qcow2_content_is_allowed_with_a_note(unrecorded, capsys):
    code, out, err = run(capsys, "xml", "-f", "raw", "--layout", "backingstore", "mid.qcow2")
    assert code == EXIT_OK
    assert "<driver name='qemu' type='raw'/>" in out and "<backingStore type" not in out
    assert "is declared raw, but its content looks like qcow2" in err


def test_xml_is_written_as_libvirt_writes_it(images, capsys):
    code, out, _ = run(capsys, "xml", "--layout", "backingstore", "top.qcow2")
    assert code == EXIT_OK
    assert '"' not in out and " />" not in out
    assert out.splitlines()[1] == "  <driver name='qemu' type='qcow2'/>"
    assert "<backingStore type='file'>" in out and "index=" not in out


def test_the_default_layout_note_is_for_a_terminal_only(images, capsys, monkeypatch):
    assert run(capsys, "xml", "top.qcow2")[2] == ""
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    err = run(capsys, "xml", "top.qcow2")[2]
    assert err.count("\n") == 1 and "libvirt reads --layout backingstore" in err
    assert "libvirt reads" not in run(capsys, "xml", "--layout", "nested", "top.qcow2")[2]


def test_a_terminal_sees_unprintable_names_as_references(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nb\u00a0sp.raw").write_bytes(b"\0" * 512)
    (tmp_path / "t.qcow2").write_bytes(overlay("nb\u00a0sp.raw".encode(), b"raw"))
    out = run(capsys, "xml", "--layout", "list", "t.qcow2")[1]
    assert "nb\u00a0sp.raw" in out
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    out = run(capsys, "xml", "--layout", "list", "t.qcow2")[1]
    assert "nb&#xa0;sp.raw" in out and "\u00a0" not in out


# -- the list layout: the seed's proof of concept -------------------------------------------------

SEED_EXAMPLES = [
    """<disk type='file' device='disk'>
  <driver name='qemu' type='raw'/>
  <source file='/var/lib/libvirt/images/demo.img'/>
  <backingFile/>
  <target dev='vda' bus='virtio'/>
</disk>
""",
    """<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2'/>
  <source file='/var/lib/libvirt/images/demo.qcow'/>
  <backingFile>
    <source file='/var/lib/libvirt/images/bar.qcow' format='qcow2'/>
  </backingFile>
  <target dev='vda' bus='virtio'/>
</disk>
""",
    """<disk type='file' device='disk'>
  <driver name='qemu' type='qcow2'/>
  <source file='/var/lib/libvirt/images/demo.qcow'/>
  <backingFile>
    <source file='/var/lib/libvirt/images/bar.qcow' format='qcow2'/>
    <source file='/var/lib/libvirt/images/foo.qcow' format='raw'/>
  </backingFile>
  <target dev='vda' bus='virtio'/>
</disk>
""",
]


def test_seed_examples_are_transcribed_faithfully():
    seed = SEED.read_text()
    for example in SEED_EXAMPLES:
        for line in example.splitlines():
            if "<target" not in line and "<disk" not in line and "</disk" not in line:
                assert line.strip() in seed, line


@pytest.fixture
def seed_images(tmp_path, monkeypatch):
    """The seed's images: demo.img (raw, alone); demo.qcow -> bar.qcow -> foo.qcow (raw)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.img").write_bytes(b"\0" * 4096)
    (tmp_path / "foo.qcow").write_bytes(b"\0" * 4096)
    (tmp_path / "bar.qcow").write_bytes(overlay(b"foo.qcow", b"raw"))
    (tmp_path / "demo.qcow").write_bytes(overlay(b"bar.qcow", b"qcow2"))
    (tmp_path / "alone.qcow").write_bytes(craft.qcow2())
    (tmp_path / "bar-alone.qcow").write_bytes(craft.qcow2())
    (tmp_path / "demo1.qcow").write_bytes(overlay(b"bar-alone.qcow", b"qcow2"))
    return tmp_path


@pytest.mark.parametrize(("example", "image"), [(0, "demo.img"), (1, "demo1.qcow"), (2, "demo.qcow")])
def test_list_layout_writes_the_seeds_examples(seed_images, capsys, example, image):
    code, out, _ = run(capsys, "xml", "--layout", "list", image)
    assert code == EXIT_OK
    expected = SEED_EXAMPLES[example].replace("/var/lib/libvirt/images/", f"{seed_images}/")
    expected = expected.replace("bar.qcow", "bar-alone.qcow") if example == 1 else expected
    expected = expected.replace("demo.qcow", "demo1.qcow") if example == 1 else expected
    assert out == expected
    # ... and --verify reads it back, every <source> with its format=.
    (seed_images / "d.xml").write_text(out)
    assert verify(capsys, seed_images / "d.xml") == (
        EXIT_OK,
        [f"{seed_images}/d.xml: disk vda: matches the disk ({example + 1} layer{'s' if example else ''} declared)"],
    )


def test_list_verify_reads_every_source_and_its_format(seed_images, capsys):
    text = SEED_EXAMPLES[2].replace("/var/lib/libvirt/images/", f"{seed_images}/")
    # The second <source> names the wrong format: today's first-source-only reader missed it.
    (seed_images / "d.xml").write_text(text.replace("format='raw'", "format='qcow2'"))
    code, lines = verify(capsys, seed_images / "d.xml")
    assert code == EXIT_FAIL
    assert lines == [f"{seed_images}/d.xml: disk vda: chain layer 2: format: the XML says qcow2, the chain has raw"]
    (seed_images / "d.xml").write_text(text.replace("foo.qcow'", "other.qcow'"))
    code, lines = verify(capsys, seed_images / "d.xml")
    assert code == EXIT_FAIL and ": chain layer 2: path: " in lines[0]


def test_list_layout_with_network_layers_and_a_mirror(seed_images, capsys):
    (seed_images / "net.qcow").write_bytes(overlay(b"nbd://example.org/export", b"raw"))
    (seed_images / "top.qcow").write_bytes(overlay(b"net.qcow", b"qcow2"))
    code, out, _ = run(capsys, "xml", "--layout", "list", "--mirror", "demo.qcow", "top.qcow")
    assert code == EXIT_OK
    root = f"{seed_images}/"
    assert out == (
        "<disk type='file' device='disk'>\n"
        "  <driver name='qemu' type='qcow2'/>\n"
        f"  <source file='{root}top.qcow'/>\n"
        "  <mirror>\n"
        "    <driver name='qemu' type='qcow2'/>\n"
        f"    <source file='{root}demo.qcow'/>\n"
        "    <backingFile>\n"
        f"      <source file='{root}bar.qcow' format='qcow2'/>\n"
        f"      <source file='{root}foo.qcow' format='raw'/>\n"
        "    </backingFile>\n"
        "  </mirror>\n"
        "  <backingFile>\n"
        f"    <source file='{root}net.qcow' format='qcow2'/>\n"
        "    <source protocol='nbd' name='export' format='raw'>\n"
        "      <host name='example.org' port='10809'/>\n"
        "    </source>\n"
        "  </backingFile>\n"
        "  <target dev='vda' bus='virtio'/>\n"
        "</disk>\n"
    )
    assert detect_layout(ET.fromstring(out)) == "list"
    (seed_images / "d.xml").write_text(out)
    assert verify(capsys, seed_images / "d.xml")[0] == EXIT_OK
    # The network layer's host differs: the message shows host and port on both sides.
    (seed_images / "d.xml").write_text(out.replace("<host name='example.org' port='10809'/>", "<host name='e'/>"))
    code, lines = verify(capsys, seed_images / "d.xml")
    assert code == EXIT_FAIL
    assert lines == [
        f"{seed_images}/d.xml: disk vda: chain layer 2: path: the XML says 'nbd://e:10809/export', "
        "the chain names 'nbd://example.org:10809/export'"
    ]


# -- --verify never says "matches" wrongly ------------------------------------------------------------


def test_verify_an_omitted_port_is_the_default_port(seed_images, capsys):
    (seed_images / "net.qcow").write_bytes(overlay(b"nbd://example.org/export", b"raw"))
    (seed_images / "d.xml").write_text(
        f"<disk type='file'><driver type='qcow2'/><source file='{seed_images}/net.qcow'/>"
        "<backingStore type='network'><format type='raw'/><source protocol='nbd' name='export'>"
        "<host name='example.org'/></source></backingStore><target dev='vda'/></disk>"
    )
    assert verify(capsys, seed_images / "d.xml") == (
        EXIT_OK,
        [f"{seed_images}/d.xml: disk vda: matches the disk (2 layers declared)"],
    )


def test_verify_checks_a_live_mirror_chain(images, capsys):
    disk = Disk(describe_chain(resolve_chain("top.qcow2")), mirror=describe_chain(resolve_chain("top.qcow2")))
    text = to_xml(disk, "backingstore")
    assert "<mirror type='file' file=" in text and "job='copy'" in text
    (images / "d.xml").write_text(text)
    assert verify(capsys, images / "d.xml")[0] == EXIT_OK
    # A wrong format in the mirror's chain, as libvirt's live XML would hold it.
    mirror = text[text.index("<mirror") :]
    wrong = text[: text.index("<mirror")] + mirror.replace("<format type='raw'/>", "<format type='qcow2'/>", 1)
    (images / "d.xml").write_text(wrong)
    code, lines = verify(capsys, images / "d.xml")
    assert code == EXIT_FAIL
    assert any(": mirror layer 2: format: the XML says qcow2, the chain has raw" in line for line in lines), lines


def test_verify_a_typeless_backing_store_hides_layers(images, capsys):
    text = to_xml(Disk(describe_chain(resolve_chain("top.qcow2"))), "backingstore")
    (images / "d.xml").write_text(text.replace("<backingStore type='file'>", "<backingStore>", 1))
    code, lines = verify(capsys, images / "d.xml")
    assert code == EXIT_FAIL
    assert [line.split(": ", 3)[2] for line in lines] == ["chain layer 1", "chain layer 1"]
    assert "ignored-layers" in lines[0] and "the 2 layers written inside it are ignored" in lines[0]
    assert "missing-layer" in lines[1] and "(and 1 more layer)" in lines[1]


def test_verify_a_backing_store_without_format_is_libvirts_refusal(images, capsys):
    text = to_xml(Disk(describe_chain(resolve_chain("top.qcow2"))), "backingstore")
    (images / "d.xml").write_text(text.replace("<format type='raw'/>", ""))
    code, lines = verify(capsys, images / "d.xml")
    assert code == EXIT_FAIL
    assert lines == [
        f"{images}/d.xml: disk vda: chain layer 2: libvirt-refuses: libvirt refuses this XML: its <backingStore> "
        "has no <format> (libvirt: 'missing disk backing store format')"
    ]


def test_verify_an_odd_disk_is_reported_alone_and_the_others_checked(images, capsys):
    good = disk_element(Disk(describe_chain(resolve_chain("top.qcow2"))), "backingstore")
    odd = ET.fromstring(f"<disk type='block'><source file='{images}/base.raw'/><target dev='vdb'/></disk>")
    drifted_disk = disk_element(drifted(images, "format"), "backingstore")
    drifted_disk.find("target").set("dev", "vdc")  # type: ignore[union-attr]
    write_domain(images / "d.xml", [good, odd, drifted_disk])
    code, lines = verify(capsys, images / "d.xml")
    assert code == EXIT_FAIL
    assert lines[0].endswith("disk vda: matches the disk (3 layers declared)")
    assert "disk vdb: cannot be checked: type='block' but <source> describes a file source" in lines[1]
    assert "missing source information" in lines[1]
    assert ": disk vdc: chain layer 2: format: " in lines[2]


def test_verify_an_undeclared_chain_says_what_libvirt_will_find(images, capsys):
    (images / "d.xml").write_text(
        f"<disk type='file'><driver name='qemu' type='qcow2'/><source file='{images}/top.qcow2'/>"
        "<target dev='vda'/></disk>"
    )
    assert verify(capsys, images / "d.xml") == (
        EXIT_OK,
        [f"{images}/d.xml: disk vda: declares no backing chain; libvirt will find 3 layers when the domain starts"],
    )


def test_verify_an_undeclared_chain_flags_what_libvirt_will_refuse_to_probe(unrecorded, capsys):
    (unrecorded / "u.xml").write_text(
        f"<disk type='file'><driver name='qemu' type='qcow2'/><source file='{unrecorded}/top.qcow2'/>"
        "<target dev='vda'/></disk>"
    )
    code, lines = verify(capsys, unrecorded / "u.xml")
    assert code == EXIT_FAIL
    assert lines == [
        f"{unrecorded}/u.xml: disk vda: chain layer 1: libvirt-refuses: format of backing image 'mid.qcow2' of "
        f"image '{unrecorded}/top.qcow2' was not specified in the image metadata: libvirt will refuse to probe it, "
        f"and the domain will not start (record it: qemu-img rebase -u -b 'mid.qcow2' -F FORMAT "
        f"'{unrecorded}/top.qcow2')"
    ]


def test_verify_a_chain_that_ends_early_is_one_line(images, capsys):
    (images / "deep.qcow2").write_bytes(overlay(b"top.qcow2", b"qcow2"))
    top = DiskLayer("file", path=str(images / "deep.qcow2"), format="qcow2")
    (images / "d.xml").write_text(to_xml(Disk(DiskChain((top,), ends=True)), "backingstore"))
    code, lines = verify(capsys, images / "d.xml")
    assert code == EXIT_FAIL
    assert lines == [
        f"{images}/d.xml: disk vda: chain layer 1: missing-layer: on disk the chain goes on to "
        f"'{images}/top.qcow2' (and 2 more layers); the XML says it ends"
    ]


def test_verify_reports_a_relative_path(images, capsys):
    (images / "d.xml").write_text(
        "<disk type='file'><driver type='qcow2'/><source file='top.qcow2'/><backingStore type='file'>"
        "<format type='qcow2'/><source file='sub/mid.qcow2'/><backingStore type='file'><format type='raw'/>"
        "<source file='sub/../base.raw'/><backingStore/></backingStore></backingStore></disk>"
    )
    code, lines = verify(capsys, images / "d.xml")
    assert code == EXIT_FAIL
    assert [line.split(": ")[3] for line in lines] == ["relative-path"] * 3
    assert "libvirt resolves it against its own working folder" in lines[0]
