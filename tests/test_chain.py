"""Chain shapes, on pyfakefs where a real disk is awkward and on a real
disk where the kernel's behaviour matters (FIFOs, sparse files)."""

from __future__ import annotations

import os
import stat

import craft
import pytest
from conftest import _seek_read
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyfakefs.fake_filesystem_unittest import Patcher

import imgchain.probe
from imgchain import (
    BackingLoopError,
    BackingMissingError,
    ChainTooDeepError,
    FormatError,
    FormatSource,
    ImgChainError,
    NotRegularFileError,
    resolve_chain,
)
from imgchain.formats import polyglot, qcow2


def qcow2_over(name: str, fmt: str | None = None) -> bytes:
    exts = [craft.ext(qcow2.EXT_BACKING_FORMAT, fmt.encode())] if fmt else []
    return craft.qcow2(backing=name.encode(), extensions=exts)


def test_relative_names_resolve_against_the_overlay_name(fakefs):
    fakefs.create_file("/a/top.qcow2", contents=qcow2_over("../b/mid.qcow2", "qcow2"))
    fakefs.create_file("/b/mid.qcow2", contents=qcow2_over("base.raw", "raw"))
    fakefs.create_file("/b/base.raw", contents=b"\0" * 4096)
    chain = resolve_chain("/a/top.qcow2")
    assert [layer.filename for layer in chain.layers] == ["/a/top.qcow2", "/a/../b/mid.qcow2", "/a/../b/base.raw"]
    assert [layer.format for layer in chain.layers] == ["qcow2", "qcow2", "raw"]
    assert [layer.image.format_source for layer in chain.layers] == [
        FormatSource.PROBED,
        FormatSource.RECORDED,
        FormatSource.RECORDED,
    ]
    assert chain.complete


def test_absolute_names_are_taken_as_they_are(fakefs):
    fakefs.create_file("/a/top.qcow2", contents=qcow2_over("/elsewhere/base.raw"))
    fakefs.create_file("/elsewhere/base.raw", contents=b"x")
    chain = resolve_chain("/a/top.qcow2")
    assert chain.layers[1].filename == "/elsewhere/base.raw"
    assert chain.layers[1].image.format_source is FormatSource.PROBED


def test_given_format_is_used_even_where_content_disagrees(fakefs):
    fakefs.create_file("/d/disk.raw", contents=qcow2_over("/etc/shadow"))
    chain = resolve_chain("/d/disk.raw", "raw")
    assert chain.top.format == "raw"
    assert chain.top.image.format_source is FormatSource.GIVEN
    assert chain.top.image.probed_format == "qcow2"
    assert len(chain.layers) == 1  # raw has no backing file: /etc/shadow is not looked at


def test_recorded_format_that_does_not_fit_is_refused(fakefs):
    fakefs.create_file("/d/top.qcow2", contents=qcow2_over("base.raw", "qcow2"))
    fakefs.create_file("/d/base.raw", contents=b"\0" * 512)
    with pytest.raises(FormatError, match="bad magic") as e:
        resolve_chain("/d/top.qcow2")
    assert e.value.path == "/d/base.raw"
    assert e.value.referrer == "/d/top.qcow2"
    assert "(backing file of '/d/top.qcow2')" in e.value.describe()


@pytest.mark.parametrize("name", ["self.qcow2", "./self.qcow2", ".//./self.qcow2", "/d/self.qcow2"])
def test_self_loop_in_any_spelling(fakefs, name):
    fakefs.create_file("/d/self.qcow2", contents=qcow2_over(name, "qcow2"))
    with pytest.raises(BackingLoopError, match="the chain loops"):
        resolve_chain("/d/self.qcow2")


def test_loop_through_a_symlink(fakefs):
    fakefs.create_file("/d/a.qcow2", contents=qcow2_over("b.qcow2", "qcow2"))
    fakefs.create_file("/d/b.qcow2", contents=qcow2_over("link-to-a", "qcow2"))
    fakefs.create_symlink("/d/link-to-a", "/d/a.qcow2")
    with pytest.raises(BackingLoopError) as e:
        resolve_chain("/d/a.qcow2")
    assert e.value.path == "/d/link-to-a"


def test_missing_backing_file_names_its_overlay(fakefs):
    fakefs.create_file("/d/top.qcow2", contents=qcow2_over("gone.raw", "raw"))
    with pytest.raises(BackingMissingError) as e:
        resolve_chain("/d/top.qcow2")
    assert e.value.describe() == "/d/gone.raw: No such file or directory (backing file of '/d/top.qcow2')"


def _chain_of(fakefs, n: int) -> str:
    fakefs.create_file("/c/0.raw", contents=b"\0")
    for i in range(1, n):
        fakefs.create_file(f"/c/{i}.qcow2", contents=qcow2_over(f"{i - 1}.{'raw' if i == 1 else 'qcow2'}"))
    return f"/c/{n - 1}.qcow2"


def test_depth_limit(fakefs):
    top = _chain_of(fakefs, 5)
    assert len(resolve_chain(top, max_depth=5).layers) == 5
    with pytest.raises(ChainTooDeepError, match="more than 4 layers"):
        resolve_chain(top, max_depth=4)


def test_default_depth_limit_is_200(fakefs):
    assert len(resolve_chain(_chain_of(fakefs, 200)).layers) == 200
    fakefs.create_file("/c/200.qcow2", contents=qcow2_over("199.qcow2"))
    with pytest.raises(ChainTooDeepError, match="more than 200"):
        resolve_chain("/c/200.qcow2")


@pytest.mark.parametrize(
    ("mode", "what"),
    [(stat.S_IFIFO, "a FIFO"), (stat.S_IFSOCK, "a socket"), (stat.S_IFCHR, "a character device")],
)
def test_special_files_are_refused(fakefs, mode, what):
    fakefs.create_file("/d/top.qcow2", contents=qcow2_over("special"))
    fakefs.create_file("/d/special", st_mode=mode | 0o644)
    with pytest.raises(NotRegularFileError, match=what):
        resolve_chain("/d/top.qcow2")


def test_directory_is_refused(fakefs):
    fakefs.create_file("/d/top.qcow2", contents=qcow2_over("sub"))
    fakefs.create_dir("/d/sub")
    with pytest.raises(NotRegularFileError, match="a directory"):
        resolve_chain("/d/top.qcow2")


def test_real_fifo_is_never_opened(tmp_path, monkeypatch):
    """On a real disk: opening this FIFO for reading would block forever."""
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "top.qcow2").write_bytes(qcow2_over("pipe"))
    opened = []
    real_open = os.open

    def spy(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(imgchain.probe.os, "open", spy)
    with pytest.raises(NotRegularFileError, match="a FIFO"):
        resolve_chain(str(tmp_path / "top.qcow2"))
    assert opened == [str(tmp_path / "top.qcow2")]


def test_protocol_names_end_the_walk_unopened(fakefs):
    fakefs.create_file("/d/top.qcow2", contents=qcow2_over("nbd://example.org:10809/disk", "raw"))
    chain = resolve_chain("/d/top.qcow2")
    assert len(chain.layers) == 1
    assert chain.remote is not None
    assert (chain.remote.protocol, chain.remote.filename, chain.remote.format) == (
        "nbd",
        "nbd://example.org:10809/disk",
        "raw",
    )
    assert not chain.complete


def test_colon_after_a_slash_is_a_path(fakefs):
    fakefs.create_file("/d/top.qcow2", contents=qcow2_over("./odd:name.raw"))
    fakefs.create_file("/d/odd:name.raw", contents=b"\0")
    assert resolve_chain("/d/top.qcow2").layers[1].filename == "/d/./odd:name.raw"


def test_lenient_walk_keeps_what_it_read(fakefs):
    fakefs.create_file("/d/top.qcow2", contents=qcow2_over("gone.raw"))
    chain = resolve_chain("/d/top.qcow2", strict=False)
    assert [layer.filename for layer in chain.layers] == ["/d/top.qcow2"]
    assert isinstance(chain.error, BackingMissingError)


def test_without_follow_the_backing_file_is_not_opened(fakefs):
    fakefs.create_file("/d/top.qcow2", contents=qcow2_over("gone.raw"))
    chain = resolve_chain("/d/top.qcow2", follow=False)
    assert chain.top.full_backing_filename == "/d/gone.raw"
    assert chain.error is None


def test_reads_do_not_grow_with_image_size(tmp_path):
    qcow = tmp_path / "huge.qcow2"
    qcow.write_bytes(craft.qcow2(size=1 << 40, cluster_bits=16, backing=b"huge.raw"))
    raw = tmp_path / "huge.raw"
    with open(raw, "wb") as f:
        f.truncate(1 << 40)  # sparse: 1 TiB of nothing
    chain = resolve_chain(str(qcow))
    assert chain.layers[1].image.decoded.virtual_size == 1 << 40
    assert [layer.image.bytes_read for layer in chain.layers] == [4096, 4096]
    # scanned for other formats' signatures (as the audit does): the first 4 KiB, a GPT header's 8 bytes at
    # 4096 and sectors 16 to 31 of the 64 KiB header cluster
    assert imgchain.probe.read_image(str(qcow), scan=True).bytes_read == 4096 + 8 + 0x8000


def test_a_far_backing_name_costs_one_bounded_read(tmp_path):
    # QED allows the name anywhere in its header clusters (here 16 x 64 KiB).
    data = bytearray(craft.qed(cluster_size=65536, table_size=2, header_size=16, l1_table_offset=16 * 65536))
    data += bytes(18 * 65536 - len(data))  # header clusters, then the L1 table
    name = b"base.raw"
    at = 15 * 65536 + 100
    data[at : at + len(name)] = name
    data = craft.patch(
        bytes(data), craft.QED_FIELDS, features=1, backing_filename_offset=at, backing_filename_size=len(name)
    )
    (tmp_path / "top.qed").write_bytes(data)
    (tmp_path / "base.raw").write_bytes(b"\0" * 512)
    chain = resolve_chain(str(tmp_path / "top.qed"))
    assert chain.top.backing_filename == "base.raw"
    # the first read, one read ahead for the name, and the header area's sectors where other formats' readers look
    scan = polyglot.SCAN_END - polyglot.FIRST_READ
    assert chain.top.image.bytes_read <= imgchain.probe.INITIAL_READ + imgchain.probe.READ_AHEAD + scan


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), min_size=1, max_size=6),
    name=st.sampled_from(["mid.qcow2", "base.raw", "top.qcow2", "../x", "/etc/passwd", "nbd:h:1", "json:{}"]),
)
def test_walk_on_mutated_chains_raises_only_our_errors(edits, name):
    top = bytearray(qcow2_over(name, "qcow2"))
    for pos, value in edits:
        top[pos] = value
    with Patcher() as patcher:
        imgchain.probe._pread, saved = _seek_read, imgchain.probe._pread
        try:
            patcher.fs.create_file("/d/top.qcow2", contents=bytes(top))
            patcher.fs.create_file("/d/mid.qcow2", contents=qcow2_over("base.raw"))
            patcher.fs.create_file("/d/base.raw", contents=b"\0" * 100)
            try:
                chain = resolve_chain("/d/top.qcow2", max_depth=10)
                assert 1 <= len(chain.layers) <= 10
            except ImgChainError as exc:
                assert exc.describe()
        finally:
            imgchain.probe._pread = saved
