"""The command line: argument parsing, output and exit codes, nothing more.

Exit codes (also in the README):

* 0: done, nothing wrong;
* 1: an image or chain could not be read as asked: a malformed or refused
  header, a loop, a missing or unreadable file, a FIFO or device in a chain,
  a chain deeper than ``--max-depth``;
* 2: usage: the command line itself is wrong.

Every error is one line on stderr, ``imgchain: <file>: <reason>``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from imgchain import __version__
from imgchain.errors import ImgChainError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
FORMATS = ("qcow2", "qed", "raw")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"imgchain: usage: {message} (see '{self.prog} --help')\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imgchain", description="Offline disk image prober and backing-chain resolver.")
    parser.add_argument("--version", action="version", version=f"imgchain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = sub.add_parser(
        "info",
        help="what qemu-img info says of an image, without qemu",
        description="Print what `qemu-img info` 7.2 prints for IMAGE (and, with --backing-chain, its backing files).",
    )
    info.add_argument("-f", "--format", choices=FORMATS, help="the top image's format (default: probe it)")
    info.add_argument("--backing-chain", action="store_true", help="follow the backing chain and print every layer")
    info.add_argument(
        "--max-depth", type=_positive, default=None, metavar="N", help="most layers a chain may have (default 200)"
    )
    info.add_argument("--output", choices=("human", "json"), default="human", help="output format (default human)")
    info.add_argument("image", metavar="IMAGE")
    info.set_defaults(run=_run_info)
    return parser


def _write(text: str) -> None:
    """Write to stdout; file names that are not UTF-8 go out as their bytes."""
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.flush()


def _run_info(args: argparse.Namespace) -> int:
    from imgchain.chain import MAX_DEPTH, resolve_chain
    from imgchain.emit import qemu

    chain = resolve_chain(
        args.image,
        args.format,
        max_depth=args.max_depth or MAX_DEPTH,
        follow=args.backing_chain,
    )
    infos = [qemu.image_info(layer) for layer in chain.layers]
    if chain.remote is not None:
        # qemu-img would try to connect; offline, the walk ends here.
        print(
            f"imgchain: note: the chain goes on at {chain.remote.filename!r} ({chain.remote.protocol}), "
            "which cannot be examined offline",
            file=sys.stderr,
        )
    if args.output == "json":
        _write(qemu.dumps(infos if args.backing_chain else infos[0]) + "\n")
    else:
        _write(_printable(qemu.human(infos)))
    return EXIT_OK


def _printable(text: str) -> str:
    """Escape control characters (a backing name may hold any byte) so that
    no header can drive the terminal; newlines between lines stay."""
    if text.isprintable():
        return text
    return "\n".join(
        "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in line) for line in text.split("\n")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ImgChainError as exc:
        print(f"imgchain: {exc.describe()}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
