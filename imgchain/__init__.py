"""imgchain: an offline disk image prober and backing-chain resolver.

The typed API (the CLI is a thin layer over it)::

    from imgchain import read_image, resolve_chain

    image = read_image("disk.qcow2")             # probe and decode one file
    chain = resolve_chain("top.qcow2")           # walk its backing chain
    for layer in chain.layers:
        print(layer.filename, layer.format, layer.image.format_source)
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

#: Where each name of the API lives.  They are imported when first used, so
#: that ``imgchain.formats`` (or the CLI) does not pay for the rest.
_API = {
    "MAX_DEPTH": "imgchain.chain",
    "Chain": "imgchain.chain",
    "Layer": "imgchain.chain",
    "RemoteBacking": "imgchain.chain",
    "resolve_chain": "imgchain.chain",
    "FileInfo": "imgchain.probe",
    "FormatSource": "imgchain.probe",
    "Image": "imgchain.probe",
    "read_image": "imgchain.probe",
    "stat_image": "imgchain.probe",
    **dict.fromkeys(
        (
            "BackingLoopError",
            "BackingMissingError",
            "BackingNameError",
            "ChainError",
            "ChainTooDeepError",
            "FormatError",
            "ImageAccessError",
            "ImgChainError",
            "NotRegularFileError",
            "OutsideRootError",
            "PathError",
            "TruncatedError",
            "UnsupportedFeatureError",
            "XmlEmitError",
            "XmlError",
        ),
        "imgchain.errors",
    ),
}

__all__ = [
    "MAX_DEPTH",
    "BackingLoopError",
    "BackingMissingError",
    "BackingNameError",
    "Chain",
    "ChainError",
    "ChainTooDeepError",
    "FileInfo",
    "FormatError",
    "FormatSource",
    "Image",
    "ImageAccessError",
    "ImgChainError",
    "Layer",
    "NotRegularFileError",
    "OutsideRootError",
    "PathError",
    "RemoteBacking",
    "TruncatedError",
    "UnsupportedFeatureError",
    "XmlEmitError",
    "XmlError",
    "read_image",
    "resolve_chain",
    "stat_image",
]

if TYPE_CHECKING:
    from imgchain.chain import MAX_DEPTH, Chain, Layer, RemoteBacking, resolve_chain
    from imgchain.errors import (
        BackingLoopError,
        BackingMissingError,
        BackingNameError,
        ChainError,
        ChainTooDeepError,
        FormatError,
        ImageAccessError,
        ImgChainError,
        NotRegularFileError,
        OutsideRootError,
        PathError,
        TruncatedError,
        UnsupportedFeatureError,
        XmlEmitError,
        XmlError,
    )
    from imgchain.probe import FileInfo, FormatSource, Image, read_image, stat_image


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'imgchain' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
