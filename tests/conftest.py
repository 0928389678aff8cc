from __future__ import annotations

import os

import pytest

import imgchain.probe


def _seek_read(fd: int, length: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, length)


@pytest.fixture
def fakefs(fs, monkeypatch):
    """pyfakefs's ``fs``, with positioned reads done as seek + read (the fake
    file system has no ``os.pread``)."""
    monkeypatch.setattr(imgchain.probe, "_pread", _seek_read)
    return fs


def pytest_configure(config: pytest.Config) -> None:
    """CI sets IMGCHAIN_REQUIRE_TOOLS=1: there, a missing qemu-img,
    virt-xml-validate or Graphviz's dot must fail the run rather than quietly
    skip the tests that compare with qemu-img, validate against libvirt's
    schema and render the audit's graph."""
    import shutil

    if os.environ.get("IMGCHAIN_REQUIRE_TOOLS") == "1":
        needed = (
            "qemu-img",
            "qemu-io",
            "virt-xml-validate",
            "virsh",
            "xmllint",
            "strace",
            "genisoimage",
            "mkudffs",
            "sfdisk",
            "dot",
        )
        missing = [t for t in needed if shutil.which(t) is None]
        if missing:
            raise pytest.UsageError(f"IMGCHAIN_REQUIRE_TOOLS=1 but not on PATH: {', '.join(missing)}")


def _qemu_img_version() -> str | None:
    """The version of the qemu-img on PATH ("7.2.22"), or None without one."""
    import re
    import shutil
    import subprocess

    if shutil.which("qemu-img") is None:
        return None
    out = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    return found.group(1) if found else "unknown"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests marked ``qemu`` compare with qemu-img 7.2, the oracle: with
    another qemu-img (qemu 8 adds ``children`` to the JSON, for one) they
    are skipped, saying so, rather than failing for that reason alone."""
    version = _qemu_img_version()
    if version is None or version.startswith("7.2."):
        return
    skip = pytest.mark.skip(reason=f"qemu-img is {version}, not 7.2: these tests compare with qemu 7.2's output")
    for item in items:
        if "qemu" in item.keywords:
            item.add_marker(skip)
