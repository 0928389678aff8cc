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
    """CI sets IMGCHAIN_REQUIRE_TOOLS=1: there, a missing qemu-img or
    virt-xml-validate must fail the run rather than quietly skip the tests
    that compare with qemu-img and validate against libvirt's schema."""
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
        )
        missing = [t for t in needed if shutil.which(t) is None]
        if missing:
            raise pytest.UsageError(f"IMGCHAIN_REQUIRE_TOOLS=1 but not on PATH: {', '.join(missing)}")
