"""What libvirt's own parser keeps of ``imgchain xml --layout backingstore``.

libvirt's test driver runs without a daemon: ``virsh -c test:///default
"define D.xml; dumpxml --inactive NAME"`` (one virsh call: each starts
empty) parses a domain as libvirt parses it and writes back what it kept.
Each case builds a chain with qemu-img, writes its XML, and checks:

* libvirt writes back the disk exactly as imgchain wrote it (same text:
  every layer, attribute, quote and indent);
* the layers are qemu-img's (``qemu-img info --backing-chain``): the same
  files, in the same order, with the same formats; for network layers, the
  name qemu-img reads from the overlay, parsed as libvirt parses it;
* ``imgchain xml --verify`` of what libvirt wrote back says it matches.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import textwrap
import xml.etree.ElementTree as ET

import craft
import pytest

from imgchain.backing_name import parse_backing_name
from imgchain.chain import resolve_chain
from imgchain.cli import EXIT_FAIL, EXIT_OK, main
from imgchain.disk import Disk, describe_chain
from imgchain.emit.xml import render
from imgchain.formats import qcow2
from imgchain.probe import same_file

pytestmark = [
    pytest.mark.virsh,
    pytest.mark.skipif(shutil.which("virsh") is None, reason="virsh (libvirt-clients) is not installed"),
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed"),
]

#: A folder and file names with every character XML and shells make awkward.
AWKWARD_DIR = "vm 'one' & \"two\" é漢"
AWKWARD_FILE = 'layer {i} it\'s & "q" ü.{fmt}'


def virsh_roundtrip(tmp: pathlib.Path, disks: list[str]) -> list[str]:
    """Define a test-driver domain holding ``disks`` (XML text of <disk>
    elements); the <disk> blocks of ``dumpxml --inactive``, dedented, in order."""
    body = textwrap.indent("".join(disks), "    ")
    domain = (
        "<domain type='test'>\n  <name>imgchain</name>\n  <memory>131072</memory>\n"
        f"  <os>\n    <type>hvm</type>\n  </os>\n  <devices>\n{body}  </devices>\n</domain>\n"
    )
    path = tmp / "domain.xml"
    path.write_text(domain, encoding="utf-8")
    assert "'" not in str(path) and " " not in str(path)
    proc = subprocess.run(
        ["virsh", "-q", "-c", "test:///default", f"define {path}; dumpxml --inactive imgchain"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    blocks = re.findall(r"^    <disk .*?^    </disk>\n", proc.stdout, re.S | re.M)
    return [textwrap.dedent(b) for b in blocks]


def qemu_chain(top: pathlib.Path) -> list[dict[str, object]]:
    out = subprocess.run(
        ["qemu-img", "info", "--backing-chain", "--output=json", str(top)], capture_output=True, check=True
    ).stdout
    return json.loads(out)


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], capture_output=True, check=True)


def build_chain(folder: pathlib.Path, formats: list[str], awkward: bool) -> pathlib.Path:
    """A chain bottom first, each overlay naming its base by a relative name
    with the base's format recorded; the top's path."""
    folder.mkdir(parents=True, exist_ok=True)
    previous: pathlib.Path | None = None
    for i, fmt in enumerate(formats):
        name = AWKWARD_FILE.format(i=i, fmt=fmt) if awkward else f"layer{i}.{fmt}"
        path = folder / name
        args = ["create", "-f", fmt]
        if previous is not None:
            args += ["-b", previous.name, "-F", formats[i - 1]]
        qemu_img(*args, str(path), "1M")
        previous = path
    assert previous is not None
    return previous


def chain_formats(depth: int, base: str) -> list[str]:
    """``depth`` layers over ``base``, bottom first: a qed overlay on a raw
    base (raw is the only format qed records), qcow2 elsewhere, so that
    every backing format is recorded."""
    formats = [base]
    for _ in range(depth - 1):
        formats.append("qed" if formats[-1] == "raw" else "qcow2")
    return formats


CASES = [(d, base) for d in range(1, 6) for base in ("raw", "qcow2", "qed")]


def check_against_qemu(top: pathlib.Path, disk: Disk) -> None:
    qemu = qemu_chain(top)
    layers = disk.chain.layers
    assert len(layers) == len(qemu)
    for ours, theirs in zip(layers, qemu, strict=True):
        assert ours.format == theirs["format"]
        assert ours.path is not None and same_file(ours.path, str(theirs["filename"]))


def check_verify(tmp: pathlib.Path, text: str, capsys: pytest.CaptureFixture[str], matches: str) -> None:
    path = tmp / "dumped.xml"
    path.write_text(f"<domain type='test'><devices>{text}</devices></domain>", encoding="utf-8")
    assert main(["xml", "--verify", str(path)]) == EXIT_OK
    assert capsys.readouterr().out.endswith(matches + "\n")


@pytest.mark.parametrize(("depth", "base"), CASES)
@pytest.mark.parametrize("awkward", [False, True], ids=["plain", "awkward-names"])
def test_libvirt_keeps_every_layer_of_a_qemu_img_chain(tmp_path, capsys, depth, base, awkward):
    formats = chain_formats(depth, base)
    top = build_chain(tmp_path / (AWKWARD_DIR if awkward else "images"), formats, awkward)
    disk = Disk(describe_chain(resolve_chain(str(top))))
    assert [x.format for x in disk.chain.layers] == formats[::-1]
    check_against_qemu(top, disk)
    rendering = render(disk, "backingstore")
    assert rendering.notes == ()
    [kept] = virsh_roundtrip(tmp_path, [rendering.text])
    assert kept == rendering.text
    check_verify(tmp_path, kept, capsys, f"matches the disk ({depth} layer{'s' if depth > 1 else ''} declared)")


def test_libvirt_keeps_a_chain_through_a_symlinked_folder(tmp_path, capsys):
    real = tmp_path / "real"
    build_chain(real / "sub", ["raw"], awkward=False)
    qemu_img("create", "-f", "qcow2", "-b", "sub/layer0.raw", "-F", "raw", str(real / "mid.qcow2"), "1M")
    os.symlink(real, tmp_path / "link")
    top = tmp_path / "link" / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", str(top), "1M")
    disk = Disk(describe_chain(resolve_chain(str(top))))
    # Paths as libvirt builds them: through the link, nothing resolved.
    assert [x.path for x in disk.chain.layers] == [
        f"{tmp_path}/link/top.qcow2",
        f"{tmp_path}/link/mid.qcow2",
        f"{tmp_path}/link/sub/layer0.raw",
    ]
    check_against_qemu(top, disk)
    text = render(disk, "backingstore").text
    [kept] = virsh_roundtrip(tmp_path, [text])
    assert kept == text
    check_verify(tmp_path, kept, capsys, "matches the disk (3 layers declared)")


#: Every protocol libvirt has, with no port (the default port is libvirt's,
#: filled in by its parser and by ours), as a backing name qemu-img reads.
NETWORK_NAMES = {
    "nbd": "nbd://example.org/export",
    "rbd": "rbd:pool/image",
    "sheepdog": "sheepdog://example.org/vdi",
    "gluster": "gluster://example.org/volume/dir/image",
    "iscsi": "iscsi://example.org/iqn.2013-07.com.example:disk/1",
    "http": "http://example.org/dir/image.raw",
    "https": "https://example.org/dir/image.raw?token=abc",
    "ftp": "ftp://example.org/dir/image.raw",
    "ftps": "ftps://example.org/dir/image.raw",
    "tftp": "tftp://example.org/image.raw",
    "ssh": "ssh://example.org/srv/image.raw",
    "vxhs": 'json:{"driver":"vxhs","vdisk-id":"c6718f6b-0401-441d-a8c3-1f0064d75ee0","server":{"host":"example.org"}}',
    "nfs": "nfs://example.org/export/image.raw",
}


@pytest.mark.parametrize("protocol", list(NETWORK_NAMES))
def test_libvirt_keeps_every_network_protocol_with_its_default_port(tmp_path, capsys, protocol):
    name = NETWORK_NAMES[protocol]
    top = tmp_path / "top.qcow2"
    top.write_bytes(craft.qcow2(backing=name.encode(), extensions=[craft.ext(qcow2.EXT_BACKING_FORMAT, b"raw")]))
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", str(top)], capture_output=True, check=True).stdout
    )
    assert info["backing-filename"] == name and info["backing-filename-format"] == "raw"
    disk = Disk(describe_chain(resolve_chain(str(top))))
    net = disk.chain.layers[1].network
    assert net is not None and net == parse_backing_name(name).source
    assert net.protocol == protocol
    rendering = render(disk, "backingstore")
    assert all("virt-xml-validate will refuse" in n for n in rendering.notes)
    assert bool(rendering.notes) == (protocol in ("ssh", "nfs"))
    [kept] = virsh_roundtrip(tmp_path, [rendering.text])
    assert kept == rendering.text
    for host in ET.fromstring(kept).iter("host"):
        default = {"rbd": None, "nfs": None}.get(protocol, "absent")
        if default == "absent":
            assert host.get("port") is not None  # libvirt's default port, and ours
    check_verify(tmp_path, kept, capsys, "matches the disk (2 layers declared)")


def test_libvirt_keeps_several_disks_and_options_as_written(tmp_path):
    """https options, a raw slice, nfs identity, a LUKS layer: as libvirt keeps them."""
    names = [
        'json:{"driver":"https","url":"https://example.org/x.img","sslverify":false,"readahead":65536,"timeout":10}',
        'json:{"driver":"raw","offset":512,"size":1048576,"file":{"driver":"nbd","host":"example.org"}}',
        'json:{"driver":"nfs","user":107,"group":107,"path":"/export/x","server":{"type":"inet","host":"nfs1"}}',
    ]
    texts = []
    for i, name in enumerate(names):
        top = tmp_path / f"top{i}.qcow2"
        top.write_bytes(craft.qcow2(backing=name.encode(), extensions=[craft.ext(qcow2.EXT_BACKING_FORMAT, b"raw")]))
        disk = Disk(describe_chain(resolve_chain(str(top))), target=f"vd{'abc'[i]}")
        texts.append(render(disk, "backingstore").text)
    kept = virsh_roundtrip(tmp_path, texts)
    assert kept == texts
    assert "<ssl verify='no'/>" in kept[0] and "<readahead size='65536'/>" in kept[0]
    assert "<timeout seconds='10'/>" in kept[0]
    assert "<slice type='storage' offset='512' size='1048576'/>" in kept[1]
    assert "<identity user='+107' group='+107'/>" in kept[2]


def test_libvirt_keeps_a_luks_layer(tmp_path):
    base = tmp_path / "base.qcow2"
    for _ in range(30):  # (qemu-img's LUKS create is flaky on a slow thread clock)
        proc = subprocess.run(
            [
                "qemu-img",
                "create",
                "-f",
                "qcow2",
                "--object",
                "secret,id=s0,data=pw",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
                str(base),
                "1M",
            ],
            capture_output=True,
            check=False,
        )
        if proc.returncode == 0:
            break
    else:
        pytest.skip("qemu-img could not make a LUKS image")
    qemu_img("create", "-f", "qcow2", "-u", "-b", "base.qcow2", "-F", "qcow2", str(tmp_path / "top.qcow2"), "1M")
    disk = Disk(describe_chain(resolve_chain(str(tmp_path / "top.qcow2"))))
    assert disk.chain.layers[1].encryption == "luks"
    text = render(disk, "backingstore").text
    assert "<encryption format='luks'>" in text
    [kept] = virsh_roundtrip(tmp_path, [text])
    assert kept == text


def test_what_libvirt_drops_is_what_the_notes_say(tmp_path):
    """libvirt 9.0 drops <dataStore>; a <mirror> it takes only from a live domain."""
    data = tmp_path / "data.raw"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data}", str(tmp_path / "top.qcow2"), "1M")
    qemu_img("create", "-f", "qcow2", str(tmp_path / "m.qcow2"), "1M")
    disk = Disk(
        describe_chain(resolve_chain(str(tmp_path / "top.qcow2"))),
        mirror=describe_chain(resolve_chain(str(tmp_path / "m.qcow2"))),
    )
    rendering = render(disk, "backingstore")
    assert f"<source file='{data}'/>" in rendering.text
    assert any("<dataStore>" in n for n in rendering.notes)
    [kept] = virsh_roundtrip(tmp_path, [rendering.text])
    assert "dataStore" not in kept and "mirror" not in kept
    assert "<mirror type='file' file=" in rendering.text and "job='copy'" in rendering.text


def test_libvirt_reads_no_chain_from_the_nested_default(tmp_path, capsys):
    """Why the note: libvirt ignores <backingFile>; pasted into a domain, the chain is gone."""
    top = build_chain(tmp_path / "images", ["raw", "qcow2"], awkward=False)
    disk = Disk(describe_chain(resolve_chain(str(top))))
    [kept] = virsh_roundtrip(tmp_path, [render(disk, "nested").text])
    assert "backingFile" not in kept and "backingStore" not in kept
    # --verify reads libvirt's XML as libvirt will: no chain declared, found at start.
    check_verify(tmp_path, kept, capsys, "declares no backing chain; libvirt will find 2 layers when the domain starts")


def test_verify_reads_a_typeless_backing_store_as_libvirt_does(tmp_path, capsys):
    top = build_chain(tmp_path / "images", ["raw", "qcow2", "qcow2"], awkward=False)
    disk = Disk(describe_chain(resolve_chain(str(top))))
    text = render(disk, "backingstore").text.replace("<backingStore type='file'>", "<backingStore>", 1)
    [kept] = virsh_roundtrip(tmp_path, [text])
    assert "<backingStore/>" in kept and str(top.parent / "layer1.qcow2") not in kept  # libvirt dropped them
    path = tmp_path / "ours.xml"
    path.write_text(f"<domain><devices>{text}</devices></domain>")
    assert main(["xml", "--verify", str(path)]) == EXIT_FAIL
    out = capsys.readouterr().out
    assert "ignored-layers: the <backingStore> below layer 0 has no type=" in out
    assert "the 2 layers written inside it are ignored" in out
    assert out.count("missing-layer") == 1 and "(and 1 more layer)" in out


def test_libvirt_refuses_a_backing_store_without_format_and_so_does_verify(tmp_path, capsys):
    top = build_chain(tmp_path / "images", ["raw", "qcow2"], awkward=False)
    disk = Disk(describe_chain(resolve_chain(str(top))))
    text = render(disk, "backingstore").text.replace("    <format type='raw'/>\n", "")
    path = tmp_path / "domain.xml"
    path.write_text(
        f"<domain type='test'><name>x</name><memory>1024</memory><os><type>hvm</type></os>"
        f"<devices>{text}</devices></domain>"
    )
    proc = subprocess.run(["virsh", "-c", "test:///default", f"define {path}"], capture_output=True, text=True)
    assert proc.returncode != 0 and "missing disk backing store format" in proc.stderr
    assert main(["xml", "--verify", str(path)]) == EXIT_FAIL
    out = capsys.readouterr().out
    assert "libvirt-refuses: libvirt refuses this XML: its <backingStore> has no <format>" in out
