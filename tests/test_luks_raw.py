"""Raw LUKS1 images, against qemu-img 7.2 (which makes them with a secret)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qemu_info import QEMU, info, needs_qemu, only_our_errors, probed, qemu_img

from imgchain.errors import FormatError, TruncatedError, UnsupportedFeatureError
from imgchain.formats import luks_raw


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    if QEMU is None:
        pytest.skip("qemu-img is not installed")
    tmp = tmp_path_factory.mktemp("luks")
    r = qemu_img(
        "create", "-q", "-f", "luks", "--object", "secret,id=s0,data=abc",
        "-o", "key-secret=s0,iter-time=10", "x.luks", "1M", cwd=tmp,
    )  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"qemu-img cannot make LUKS images here: {r.stderr.strip()}")
    return tmp, (tmp / "x.luks").read_bytes()


def _expected_specific(image: luks_raw.LuksImage) -> dict:
    h = image.luks
    data = {"cipher-alg": h.cipher_alg, "cipher-mode": h.cipher_mode, "ivgen-alg": h.ivgen_alg}
    if h.ivgen_hash_alg is not None:
        data["ivgen-hash-alg"] = h.ivgen_hash_alg
    data.update({"hash-alg": h.hash_alg, "payload-offset": h.payload_offset, "master-key-iters": h.master_key_iters})
    data["uuid"] = h.uuid
    data["slots"] = [
        {"active": True, "iters": s.iterations, "stripes": s.stripes, "key-offset": s.key_offset}
        if s.active
        else {"active": False, "key-offset": s.key_offset}
        for s in h.slots
    ]
    return data


@needs_qemu
def test_qemu_made_image(made):
    tmp, data = made
    image = luks_raw.decode(data)
    got = info(tmp / "x.luks")
    assert isinstance(got, dict) and got["format"] == "luks"
    assert image.virtual_size == got["virtual-size"] == 1 << 20
    assert got["encrypted"] is image.encrypted is True
    assert got["dirty-flag"] is image.info_dirty_flag is False and "cluster-size" not in got
    assert got["format-specific"]["type"] == image.format_specific_type
    assert got["format-specific"]["data"] == _expected_specific(image)
    assert luks_raw.probe(data[:512]) == 100


@needs_qemu
def test_sizes_follow_the_file_length(made):
    tmp, data = made
    payload = luks_raw.decode(data).luks.payload_offset
    for n, size in ((payload, 0), (payload + 100, 512), (payload - 1, 0)):
        (tmp / "t.luks").write_bytes(data[:n])
        got = info(tmp / "t.luks")
        assert isinstance(got, dict) and got["virtual-size"] == size == luks_raw.decode(data[:n]).virtual_size
    (tmp / "t.luks").write_bytes(data[:600])
    assert isinstance(info(tmp / "t.luks"), str)
    with pytest.raises(TruncatedError):
        luks_raw.decode(data[:600])


@needs_qemu
def test_luks2_is_raw_to_qemu_7_2(made):
    tmp, data = made
    v2 = bytearray(data)
    v2[7] = 2
    assert luks_raw.probe(bytes(v2)) == 0 and probed(tmp, bytes(v2)) == "raw"
    with pytest.raises(UnsupportedFeatureError):
        luks_raw.decode(bytes(v2))
    (tmp / "v2.luks").write_bytes(v2)
    assert "version 2" in str(info(tmp / "v2.luks", "luks"))


@needs_qemu
def test_refusals_match_qemu(made):
    tmp, data = made
    for name, at, value in (("stripes", 208 + 44, b"\0\0\0\1"), ("cipher", 8, b"nope\0"), ("mode", 40, b"xts\0")):
        bad = bytearray(data)
        bad[at : at + len(value)] = value
        with pytest.raises(FormatError):
            luks_raw.decode(bytes(bad))
        (tmp / "bad.luks").write_bytes(bad)
        assert isinstance(info(tmp / "bad.luks"), str), name


@needs_qemu
def test_truncation_raises_only_our_errors(made):
    _, data = made
    for n in range(0, 700):
        only_our_errors(luks_raw.decode, data[:n])


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_only_our_errors(junk):
    only_our_errors(luks_raw.decode, b"LUKS\xba\xbe\0\1" + junk)
