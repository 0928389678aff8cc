"""The LUKS (version 1) header that a LUKS-encrypted qcow2 points at with
its full disk encryption extension.

Field names follow the LUKS1 on-disk format specification; the checks and
the algorithm names are those of qemu 7.2's ``crypto/block-luks.c``, which
parses and checks this header whenever it opens such an image, key or no
key.  Only the header is read: no key material, nothing is decrypted.
Pure: see ``formats._base`` for the window protocol.
"""

from __future__ import annotations

from typing import NamedTuple

from construct import Bytes, Int16ub, Int32ub, Struct

from imgchain.errors import FormatError, UnsupportedFeatureError

from ._base import Window, as_window, c_string, parse

NAME = "luks"
MAGIC = b"LUKS\xba\xbe"
VERSION = 1
SECTOR_SIZE = 512
NUM_KEY_SLOTS = 8
STRIPES = 4000
KEY_SLOT_ENABLED = 0x00AC71F3
KEY_SLOT_DISABLED = 0x0000DEAD
KEY_SLOT_OFFSET = 4096  # the key material starts after the first 4 KiB

KEY_SLOT = Struct(
    "active" / Int32ub,
    "password_iterations" / Int32ub,
    "password_salt" / Bytes(32),
    "key_material_offset" / Int32ub,
    "stripes" / Int32ub,
)

LUKS_PHDR = Struct(
    "magic" / Bytes(6),
    "version" / Int16ub,
    "cipher_name" / Bytes(32),
    "cipher_mode" / Bytes(32),
    "hash_spec" / Bytes(32),
    "payload_offset" / Int32ub,
    "key_bytes" / Int32ub,
    "mk_digest" / Bytes(20),
    "mk_digest_salt" / Bytes(32),
    "mk_digest_iter" / Int32ub,
    "uuid" / Bytes(40),
)
"""The LUKS1 partition header (592 bytes): these 208, then
``NUM_KEY_SLOTS`` times :data:`KEY_SLOT`."""
_PHDR_SIZE = LUKS_PHDR.sizeof()
_SLOT_SIZE = KEY_SLOT.sizeof()

_CIPHERS = {
    "aes": {16: "aes-128", 24: "aes-192", 32: "aes-256"},
    "cast5": {16: "cast5-128"},
    "serpent": {16: "serpent-128", 24: "serpent-192", 32: "serpent-256"},
    "twofish": {16: "twofish-128", 24: "twofish-192", 32: "twofish-256"},
}
_MODES = ("ecb", "cbc", "xts", "ctr")
_HASHES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")
_IVGENS = ("plain", "plain64", "essiv")


class KeySlot(NamedTuple):
    active: bool
    iterations: int
    key_offset: int  #: bytes
    stripes: int


class LuksHeader(NamedTuple):
    """A checked LUKS1 header, with qemu's names for its algorithms."""

    cipher_alg: str
    cipher_mode: str
    ivgen_alg: str
    ivgen_hash_alg: str | None  #: only for the essiv IV generator
    hash_alg: str
    payload_offset: int  #: bytes
    master_key_iters: int
    uuid: str
    slots: tuple[KeySlot, ...]


def _bad(reason: str, field: str, offset: int, value: object = None) -> FormatError:
    return FormatError(NAME, reason, field=field, offset=offset, value=value)


def _lookup(value: str, known: tuple[str, ...], what: str, field: str, offset: int) -> str:
    if value not in known:
        raise UnsupportedFeatureError(NAME, f"{what} {value!r} unsupported", field=field, offset=offset, value=value)
    return value


def _nul_terminated(raw: bytes, field: str, offset: int) -> str:
    if b"\0" not in raw:
        raise _bad(f"{field} is not NUL terminated", field, offset)
    return c_string(raw)


def decode(data: bytes | Window, offset: int = 0) -> LuksHeader:
    """Decode and check the LUKS1 header found at ``offset``."""
    raw = as_window(data).get(offset, _PHDR_SIZE + NUM_KEY_SLOTS * _SLOT_SIZE, NAME, "LUKS header", offset)
    h = parse(LUKS_PHDR, raw[:_PHDR_SIZE], NAME, "LUKS header", offset)
    key_slots = [
        parse(KEY_SLOT, raw[at : at + _SLOT_SIZE], NAME, "key slot", offset + at)
        for at in range(_PHDR_SIZE, _PHDR_SIZE + NUM_KEY_SLOTS * _SLOT_SIZE, _SLOT_SIZE)
    ]
    if h.magic != MAGIC:
        raise _bad(f"bad magic {h.magic!r}: not a LUKS header", "magic", offset, h.magic)
    if h.version != VERSION:
        raise UnsupportedFeatureError(
            NAME, f"LUKS version {h.version} unsupported", field="version", offset=offset + 6, value=h.version
        )
    cipher_name = _nul_terminated(h.cipher_name, "cipher_name", offset + 8)
    mode_spec = _nul_terminated(h.cipher_mode, "cipher_mode", offset + 40)
    hash_spec = _nul_terminated(h.hash_spec, "hash_spec", offset + 72)
    header_sectors = KEY_SLOT_OFFSET // SECTOR_SIZE
    if h.payload_offset < header_sectors:
        raise _bad("the payload overlaps the header", "payload_offset", offset + 104, h.payload_offset)
    if h.mk_digest_iter == 0:
        raise _bad("master key iteration count is zero", "mk_digest_iter", offset + 164, 0)

    key_bytes: int = h.key_bytes

    def key_sectors(stripes: int) -> int:
        sectors = -(-(key_bytes * stripes) // SECTOR_SIZE)
        return -(-sectors // header_sectors) * header_sectors

    slots = []
    for i, s in enumerate(key_slots):
        at = offset + 208 + 48 * i
        if s.stripes != STRIPES:
            raise _bad(f"key slot {i} is corrupt (stripes {s.stripes}, not {STRIPES})", "stripes", at + 44, s.stripes)
        if s.active not in (KEY_SLOT_ENABLED, KEY_SLOT_DISABLED):
            raise _bad(f"key slot {i} state {s.active:#x} is corrupt", "active", at, s.active)
        if s.active == KEY_SLOT_ENABLED and s.password_iterations == 0:
            raise _bad(f"key slot {i} iteration count is zero", "password_iterations", at + 4, 0)
        start, length = s.key_material_offset, key_sectors(s.stripes)
        if start < header_sectors:
            raise _bad(f"key slot {i} overlaps the LUKS header", "key_material_offset", at + 40, start)
        if start + length > h.payload_offset:
            raise _bad(f"key slot {i} overlaps the encrypted payload", "key_material_offset", at + 40, start)
        for j in range(i + 1, NUM_KEY_SLOTS):
            other = key_slots[j]
            o_start, o_len = other.key_material_offset, key_sectors(other.stripes)
            if start + length > o_start and o_start + o_len > start:
                raise _bad(f"key slots {i} and {j} overlap", "key_material_offset", at + 40, start)
        slots.append(
            KeySlot(
                active=s.active == KEY_SLOT_ENABLED,
                iterations=s.password_iterations,
                key_offset=s.key_material_offset * SECTOR_SIZE,
                stripes=s.stripes,
            )
        )

    mode, dash, ivgen_spec = mode_spec.partition("-")
    if not dash:
        raise _bad(f"cipher_mode {mode_spec!r} is not <mode>-<ivgen>", "cipher_mode", offset + 40, mode_spec)
    ivgen, colon, ivhash = ivgen_spec.partition(":")
    ivgen_hash = _lookup(ivhash, _HASHES, "IV generator hash", "cipher_mode", offset + 40) if colon else None
    mode = _lookup(mode, _MODES, "cipher mode", "cipher_mode", offset + 40)
    key_bytes = h.key_bytes // 2 if mode == "xts" else h.key_bytes
    cipher = _CIPHERS.get(cipher_name, {}).get(key_bytes)
    if cipher is None:
        raise UnsupportedFeatureError(
            NAME,
            f"cipher {cipher_name!r} with a {key_bytes}-byte key unsupported",
            field="cipher_name",
            offset=offset + 8,
            value=cipher_name,
        )
    hash_alg = _lookup(hash_spec, _HASHES, "hash", "hash_spec", offset + 72)
    ivgen = _lookup(ivgen, _IVGENS, "IV generator", "cipher_mode", offset + 40)
    if ivgen == "essiv" and ivgen_hash is None:
        raise _bad("the essiv IV generator needs a hash (essiv:<hash>)", "cipher_mode", offset + 40, mode_spec)
    return LuksHeader(
        cipher_alg=cipher,
        cipher_mode=mode,
        ivgen_alg=ivgen,
        ivgen_hash_alg=ivgen_hash if ivgen == "essiv" else None,
        hash_alg=hash_alg,
        payload_offset=h.payload_offset * SECTOR_SIZE,
        master_key_iters=h.mk_digest_iter,
        uuid=c_string(h.uuid),
        slots=tuple(slots),
    )
