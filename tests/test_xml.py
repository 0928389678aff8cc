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
SEED = ROOT.parent / "shared" / "seed" / "libvirt-rfc-backing-chain-xml-2012.txt"

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
    if not SEED.exists():
        pytest.skip("shared/seed is not beside the checkout")
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
NFS = NetworkSource("nfs", "export/disk.img", (Host("nfs.example.org", None, "tcp"),))


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
    path.write_text(domain_with(disk_element(Disk(SHAPES[name], mirror), "backingstore")))
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
