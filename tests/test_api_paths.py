"""Every public function of the API takes a ``str`` or an ``os.PathLike``."""

from __future__ import annotations

import pathlib

import craft
import pytest

from imgchain import read_image, resolve_chain, stat_image
from imgchain.audit import audit
from imgchain.formats import qcow2


class OwnPath:
    """An os.PathLike that is not a pathlib.Path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return self.path


@pytest.fixture
def chain_dir(tmp_path):
    (tmp_path / "base.raw").write_bytes(b"\0" * 4096)
    (tmp_path / "top.qcow2").write_bytes(
        craft.qcow2(backing=b"base.raw", extensions=[craft.ext(qcow2.EXT_BACKING_FORMAT, b"raw")])
    )
    return tmp_path


def kinds(path: pathlib.Path) -> list[object]:
    return [path, OwnPath(str(path)), str(path)]


def test_resolve_chain(chain_dir):
    for top in kinds(chain_dir / "top.qcow2"):
        chain = resolve_chain(top)
        assert [layer.filename for layer in chain.layers] == [str(chain_dir / "top.qcow2"), str(chain_dir / "base.raw")]
        assert [layer.format for layer in chain.layers] == ["qcow2", "raw"]


def test_read_image(chain_dir):
    for top in kinds(chain_dir / "top.qcow2"):
        image = read_image(top)
        assert image.format == "qcow2"
        assert image.file.path == str(chain_dir / "top.qcow2")
        assert image.decoded.backing_filename == "base.raw"


def test_stat_image(chain_dir):
    for base in kinds(chain_dir / "base.raw"):
        info = stat_image(base)
        assert (info.path, info.kind, info.size) == (str(chain_dir / "base.raw"), "file", 4096)


def test_audit(chain_dir):
    for folder in kinds(chain_dir):
        report = audit([folder], roots=[folder])
        assert sorted(e.path for e in report.images) == [str(chain_dir / "base.raw"), str(chain_dir / "top.qcow2")]
        assert report.findings == []
