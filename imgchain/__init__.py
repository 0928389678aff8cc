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

from imgchain.chain import MAX_DEPTH, Chain, Layer, RemoteBacking, resolve_chain
from imgchain.errors import (
    BackingLoopError,
    BackingMissingError,
    ChainError,
    ChainTooDeepError,
    FormatError,
    ImageAccessError,
    ImgChainError,
    NotRegularFileError,
    TruncatedError,
    UnsupportedFeatureError,
)
from imgchain.probe import FileInfo, FormatSource, Image, read_image, stat_image

__all__ = [
    "MAX_DEPTH",
    "BackingLoopError",
    "BackingMissingError",
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
    "RemoteBacking",
    "TruncatedError",
    "UnsupportedFeatureError",
    "read_image",
    "resolve_chain",
    "stat_image",
]
