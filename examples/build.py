#!/usr/bin/env python3
"""Build every image the README's examples use, hostile ones included.

    python3 examples/build.py /tmp/demo && cd /tmp/demo

Then each ``$ imgchain ...`` command in the README prints what the README
shows (tests/test_readme_examples.py checks it).  Needs qemu-img; the
images are tiny (512-byte clusters, 64 KiB disks).  The folder must not
exist yet, or be empty.

What it makes, relative to the folder:

    images/                 a small store: two VMs on one raw base, and an upload
      bases/base.raw        raw, 64 KiB
      vm1/disk.qcow2        qcow2 on ../bases/base.raw (format raw recorded)
      vm2/disk.qcow2        the same
      uploads/guest.img     HOSTILE: a qcow2 whose backing file is /etc/shadow
    store/                  a clean store of 3,000 images: 10 raw bases,
                            990 golden qcow2 on them, 2,000 VM qcow2 on those
    rfc/                    the 2012 libvirt RFC's example: base[raw] <- middle[qcow2]
                            <- top[qcow2], and mirror[qed] on base
    vm1.xml                 a domain: vda declares rfc/middle raw (it is qcow2), vdb
                            declares guest-disk.img raw, vdc declares no chain
    guest-disk.img          HOSTILE: a raw disk into which its guest wrote a qcow2
                            header naming /etc/shadow (the format-probing attack)
    overlay.qcow2           qcow2 on nbd://example.org/export (format raw recorded)
    evil.qcow2              HOSTILE: a backing name holding a newline, 'a\\nimage: fake'
    bad.qcow2               MALFORMED: cluster_bits 30
    loop.qcow2              a qcow2 that is its own backing file
    sub/mid.qcow2           a qcow2 on ../base.raw, which does not exist

Nothing here opens /etc/shadow or contacts example.org: qemu-img is always
told not to open the backing file (-u).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

#: qcow2's cluster_bits field (docs/interop/qcow2.txt): bytes 20-23, big-endian.
CLUSTER_BITS_OFFSET = 20


def qemu_img(*args: str | os.PathLike[str], cwd: pathlib.Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def qcow2(cwd: pathlib.Path, name: str, backing: str | None = None, backing_format: str | None = None) -> None:
    """A 64 KiB qcow2 with 512-byte clusters; its backing file is recorded, never opened (-u)."""
    args: list[str] = ["create", "-q", "-f", "qcow2", "-o", "cluster_size=512"]
    if backing is not None:
        args += ["-u", "-b", backing]
        if backing_format is not None:
            args += ["-F", backing_format]
    qemu_img(*args, name, "64K", cwd=cwd)


def raw(cwd: pathlib.Path, name: str) -> None:
    qemu_img("create", "-q", "-f", "raw", name, "64K", cwd=cwd)


def copies(template: pathlib.Path, old: bytes, names: dict[pathlib.Path, bytes]) -> None:
    """Write a copy of ``template`` for each name, its backing name ``old``
    replaced by one of the same length: byte for byte the image qemu-img
    makes for that name (thousands of qemu-img runs would take a minute)."""
    data = template.read_bytes()
    assert data.count(old) == 1, (template, old)
    for path, new in names.items():
        assert len(new) == len(old), (old, new)
        path.write_bytes(data.replace(old, new))


def build_images(d: pathlib.Path) -> None:
    """images/: the store the audit examples look at."""
    for sub in ("bases", "vm1", "vm2", "uploads"):
        (d / sub).mkdir(parents=True)
    raw(d, "bases/base.raw")
    qcow2(d, "vm1/disk.qcow2", "../bases/base.raw", "raw")
    qcow2(d, "vm2/disk.qcow2", "../bases/base.raw", "raw")
    # An upload that names a host file: a host that opens it reads /etc/shadow into the guest.
    qcow2(d, "uploads/guest.img", "/etc/shadow", "raw")


def build_store(d: pathlib.Path) -> None:
    """store/: 3,000 clean images, chains of three layers at most."""
    for sub in ("base", "golden", "vm"):
        (d / sub).mkdir(parents=True)
    for i in range(10):
        raw(d, f"base/b{i:02}.raw")
    qcow2(d, "golden/g000.qcow2", "../base/b00.raw", "raw")
    copies(
        d / "golden/g000.qcow2",
        b"../base/b00.raw",
        {d / f"golden/g{i:03}.qcow2": f"../base/b{i % 10:02}.raw".encode() for i in range(1, 990)},
    )
    qcow2(d, "vm/v0000.qcow2", "../golden/g000.qcow2", "qcow2")
    copies(
        d / "vm/v0000.qcow2",
        b"../golden/g000.qcow2",
        {d / f"vm/v{i:04}.qcow2": f"../golden/g{i % 990:03}.qcow2".encode() for i in range(1, 2000)},
    )


def build_rfc(d: pathlib.Path) -> None:
    """rfc/: base[raw] <- middle[qcow2] <- top[qcow2], mirror[qed] on base."""
    d.mkdir()
    raw(d, "base")
    qcow2(d, "middle", "base", "raw")
    qcow2(d, "top", "middle", "qcow2")
    qemu_img(
        "create", "-q", "-f", "qed", "-o", "cluster_size=4096,table_size=2", "-u", "-b", "base", "-F", "raw",
        "mirror", "64K", cwd=d,
    )  # fmt: skip


VM1_XML = """\
<domain type='kvm'>
  <name>vm1</name>
  <memory unit='KiB'>1048576</memory>
  <os>
    <type arch='x86_64'>hvm</type>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{d}/rfc/top'/>
      <backingStore type='file'>
        <format type='raw'/>
        <source file='{d}/rfc/middle'/>
        <backingStore type='file'>
          <format type='raw'/>
          <source file='{d}/rfc/base'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{d}/guest-disk.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{d}/rfc/top'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


def build(d: pathlib.Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    if any(d.iterdir()):
        raise SystemExit(f"build.py: {d} is not empty")
    d = d.resolve()
    build_images(d / "images")
    build_store(d / "store")
    build_rfc(d / "rfc")
    # A domain's XML that no longer tells the truth (vda), a raw disk holding a qcow2 header (vdb),
    # and libvirt's usual inactive XML (vdc).
    (d / "vm1.xml").write_text(VM1_XML.format(d=d))

    # The format-probing attack: the guest of a raw disk wrote a qcow2 header
    # naming /etc/shadow into its first sector.  Declared raw, it is harmless;
    # probed, it is a qcow2 whose backing file is the host's /etc/shadow.
    qcow2(d, "guest-disk.img", "/etc/shadow", "raw")
    with open(d / "guest-disk.img", "r+b") as f:
        f.truncate(1024 * 1024)  # a 1 MiB disk, whatever qcow2 left after its header

    qcow2(d, "overlay.qcow2", "nbd://example.org/export", "raw")
    qcow2(d, "evil.qcow2", "a\nimage: fake", "raw")  # a name that would forge a line of qemu-img info

    qcow2(d, "bad.qcow2")
    with open(d / "bad.qcow2", "r+b") as f:
        f.seek(CLUSTER_BITS_OFFSET)
        f.write((30).to_bytes(4, "big"))

    qcow2(d, "loop.qcow2")  # (qemu-img create refuses to name the image itself; rebase -u does not)
    qemu_img("rebase", "-q", "-u", "-b", "loop.qcow2", "-F", "qcow2", "loop.qcow2", cwd=d)
    (d / "sub").mkdir()
    qcow2(d, "sub/mid.qcow2", "../base.raw", "raw")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 examples/build.py DIR", file=sys.stderr)
        return 2
    build(pathlib.Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
