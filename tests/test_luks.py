"""The LUKS1 header behind a LUKS-encrypted qcow2."""

from __future__ import annotations

import struct

import pytest

from imgchain.errors import FormatError, UnsupportedFeatureError
from imgchain.formats import luks


def header(**overrides: object) -> bytes:
    f: dict[str, object] = {
        "cipher_name": b"aes",
        "cipher_mode": b"xts-plain64",
        "hash_spec": b"sha256",
        "payload_offset": 4040,
        "key_bytes": 64,
        "mk_digest_iter": 1000,
        "uuid": b"f626809c-2fee-4fc1-acd5-38194df0642e",
        "version": 1,
        "magic": luks.MAGIC,
    }
    f |= overrides
    out = struct.pack(
        ">6sH32s32s32sII20s32sI40s",
        f["magic"],
        f["version"],
        f["cipher_name"],
        f["cipher_mode"],
        f["hash_spec"],
        f["payload_offset"],
        f["key_bytes"],
        b"",
        b"",
        f["mk_digest_iter"],
        f["uuid"],
    )
    slots = overrides.get("slots")
    for i in range(8):
        active, iters, offset, stripes = (
            luks.KEY_SLOT_ENABLED if i == 0 else luks.KEY_SLOT_DISABLED,
            5000,
            8 + 504 * i,
            4000,
        )
        if slots and i in slots:  # type: ignore[operator]
            active, iters, offset, stripes = slots[i]  # type: ignore[index]
        out += struct.pack(">II32sII", active, iters, b"", offset, stripes)
    return out


def test_decodes_as_qemu_names_it():
    h = luks.decode(header())
    assert (h.cipher_alg, h.cipher_mode, h.ivgen_alg, h.ivgen_hash_alg, h.hash_alg) == (
        "aes-256",
        "xts",
        "plain64",
        None,
        "sha256",
    )
    assert h.payload_offset == 4040 * 512
    assert h.uuid == "f626809c-2fee-4fc1-acd5-38194df0642e"
    assert h.slots[0] == luks.KeySlot(True, 5000, 4096, 4000)
    assert not h.slots[1].active and h.slots[1].key_offset == 512 * 512


def test_essiv_keeps_its_hash():
    h = luks.decode(header(cipher_mode=b"cbc-essiv:sha256", key_bytes=32))
    assert (h.cipher_alg, h.ivgen_alg, h.ivgen_hash_alg) == ("aes-256", "essiv", "sha256")


@pytest.mark.parametrize(
    ("overrides", "exc", "match"),
    [
        ({"magic": b"LUKX\xba\xbe"}, FormatError, "not a LUKS header"),
        ({"version": 2}, UnsupportedFeatureError, "version 2"),
        ({"payload_offset": 4}, FormatError, "overlaps the header"),
        ({"mk_digest_iter": 0}, FormatError, "iteration count is zero"),
        ({"cipher_name": b"rot13"}, UnsupportedFeatureError, "cipher 'rot13'"),
        ({"cipher_mode": b"xts"}, FormatError, "is not <mode>-<ivgen>"),
        ({"cipher_mode": b"cbc-essiv", "key_bytes": 32}, FormatError, "needs a hash"),
        ({"hash_spec": b"crc32"}, UnsupportedFeatureError, "hash 'crc32'"),
        ({"cipher_name": b"a" * 32}, FormatError, "not NUL terminated"),
        ({"slots": {1: (luks.KEY_SLOT_DISABLED, 0, 8, 4000)}}, FormatError, "key slots 0 and 1 overlap"),
        ({"slots": {2: (7, 0, 1016, 4000)}}, FormatError, "state 0x7 is corrupt"),
        ({"slots": {3: (luks.KEY_SLOT_DISABLED, 0, 1520, 3)}}, FormatError, "stripes 3"),
        ({"slots": {0: (luks.KEY_SLOT_ENABLED, 0, 8, 4000)}}, FormatError, "iteration count is zero"),
    ],
)
def test_refusals(overrides, exc, match):
    with pytest.raises(exc, match=match):
        luks.decode(header(**overrides))


def test_truncated_header():
    with pytest.raises(FormatError):
        luks.decode(header()[:500])
