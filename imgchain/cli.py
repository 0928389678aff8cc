"""The command line: argument parsing, output and exit codes, nothing more.

Exit codes (also in the README), the same for every command:

* 0: done, nothing wrong;
* 1: an image or chain could not be read as asked: a malformed or refused
  header, a loop, a missing or unreadable file, a FIFO or device in a chain,
  a chain deeper than ``--max-depth``; for ``audit``, a finding at
  ``--fail-on`` or worse, a named PATH that cannot be read among them (it is
  an ``image-unreadable`` finding, and the other paths are still audited);
  for ``xml --verify``, a difference; and the output could not be written
  (standard output closed, a full disk, a closed pipe);
* 2: usage: the command line itself is wrong (an unknown option or an
  extra argument, a value that is not allowed, an empty path or ``--target``,
  a ``--root`` that is not a directory, ``audit --graph`` with JSON output),
  and nothing was read.  The one line names the problem and the
  subcommand's ``--help``.

Every error is one line on stderr, ``imgchain: <file>: <reason>``; no name
in it, or in any line of human output, can break the line or drive the
terminal (every character that is not printable is escaped).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from imgchain import __version__, _deferred
from imgchain.errors import ImgChainError, PathError, plain, quoted, shown

_deferred.defer("pdb", "inspect")  # (before construct imports them: see imgchain._deferred)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
#: Every format qemu 7.2 can open an image file as (imgchain decodes them all).
FORMATS = ("raw", "qcow2", "qed", "qcow", "vmdk", "vpc", "vhdx", "vdi", "luks", "parallels", "bochs", "cloop", "dmg")
#: The most of a domain XML file that --verify reads.
_MAX_XML = 16 * 1024 * 1024


class _UsageError(Exception):
    """A usage error found after argparse: exit status 2."""


class _OutputError(Exception):
    """Standard output could not be written: exit status 1."""

    def __init__(self, reason: str, *, quiet: bool = False) -> None:
        super().__init__(reason)
        #: Whether to say nothing (a closed pipe: the reader has left).
        self.quiet = quiet


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` gives it (COLUMNS,
    then the terminal of standard output, else 80), without importing
    shutil (and the compression modules it imports) on every run."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help layout (see :func:`_columns`)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"imgchain: usage: {_line(message)} (see '{self.prog} --help')\n")


class _CommandParser(_Parser):
    """A subcommand's parser: arguments it does not take (``imgchain info a
    b``) are its usage error, pointing to its own help (argparse would leave
    them to the top-level parser, whose help does not describe them)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


def _nonempty(what: str) -> Any:
    """An argument type: the text as it is, but the empty string (``''``,
    an unset shell variable) is a usage error that names what is missing."""

    def check(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"an empty {what}")
        return text

    check.__name__ = what  # (argparse names the type in some messages)
    return check


_PATH = _nonempty("path")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


#: The formats --formats may list.
KNOWN_FORMATS = FORMATS


def _format_list(text: str) -> frozenset[str]:
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names.difference(KNOWN_FORMATS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(map(repr, unknown)) or 'no format'}: give formats among {','.join(KNOWN_FORMATS)}"
        )
    return frozenset(names)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``command``, only that subcommand's
    options are built (the others are listed, empty): what :func:`main`
    needs to run one command, in a fraction of the time."""
    parser = _Parser(prog="imgchain", description="Offline disk image prober and backing-chain resolver.")
    parser.add_argument("--version", action="version", version=f"imgchain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    for name, add in _COMMANDS.items():
        add(sub, command in (None, name))
    return parser


def _add_info(sub: Any, full: bool) -> None:
    info = sub.add_parser(
        "info",
        help="what qemu-img info says of an image, without qemu",
        description="Print what `qemu-img info` 7.2 prints for IMAGE (and, with --backing-chain, its backing files).",
    )
    if not full:
        return
    info.add_argument("-f", "--format", choices=FORMATS, help="the top image's format (default: probe it)")
    info.add_argument(
        "--backing-chain",
        action="store_true",
        help="follow the backing chain and print every layer (default: the top image only)",
    )
    info.add_argument(
        "--max-depth", type=_positive, default=None, metavar="N", help="most layers a chain may have (default 200)"
    )
    info.add_argument("--output", choices=("human", "json"), default="human", help="output format (default human)")
    info.add_argument("image", metavar="IMAGE", type=_PATH)
    info.set_defaults(run=_run_info)


def _add_xml(sub: Any, full: bool) -> None:
    xml = sub.add_parser(
        "xml",
        help="libvirt-style XML for a disk and its backing chain, or check a domain's XML against the disks",
        description="Print one <disk> element for IMAGE and its resolved backing chain, or with --verify, "
        "check each <disk> of a domain XML against the images on disk (exit 1 on any difference).",
    )
    if not full:
        return
    xml.add_argument("-f", "--format", choices=FORMATS, help="the top image's format (default: probe it)")
    xml.add_argument(
        "--layout",
        choices=("nested", "flat", "list", "backingstore"),
        default=None,
        help="nested <backingFile> (the RFC's first layout), flat <backing> (its second), "
        "list (the proof of concept in the RFC's thread), or <backingStore>, the one libvirt reads "
        "(default nested)",
    )
    xml.add_argument(
        "--allow-probed",
        action="store_true",
        help="write a backing format that was probed, not recorded, where libvirt would refuse to probe it "
        "(with a warning; default: such a chain is refused)",
    )
    xml.add_argument(
        "--mirror", metavar="IMAGE", type=_PATH, help="a mirror of the disk, with its own chain (default: none)"
    )
    xml.add_argument("--mirror-format", choices=FORMATS, help="the mirror's format (default: probe it)")
    xml.add_argument(
        "--target", default="vda", metavar="DEV", type=_nonempty("target device"), help="target device (default vda)"
    )
    xml.add_argument("--bus", default="virtio", type=_nonempty("bus"), help="target bus (default virtio)")
    xml.add_argument(
        "--max-depth", type=_positive, default=None, metavar="N", help="most layers a chain may have (default 200)"
    )
    xml.add_argument(
        "--verify",
        metavar="DOMAIN.xml",
        type=_PATH,
        help="check a domain's (or a <disk>'s) XML against the disks (default: print the XML of IMAGE)",
    )
    xml.add_argument("image", metavar="IMAGE", nargs="?", type=_PATH)
    xml.set_defaults(run=_run_xml)


def _add_audit(sub: Any, full: bool) -> None:
    aud = sub.add_parser(
        "audit",
        help="find hostile or broken images and chains (format-probing attacks, escapes, loops ...)",
        description="Audit images and directories of images: each image and its backing chain, for the "
        "format-probing attack, host files named as backing or data files, loops, missing bases and more. "
        "Exit 0 when no finding reaches --fail-on, 1 when one does (a PATH that cannot be read is an "
        "image-unreadable finding), 2 for usage.",
    )
    if not full:
        return
    aud.add_argument(
        "-f", "--format", choices=FORMATS, help="declare the format of the named images (default: probe each)"
    )
    aud.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        type=_PATH,
        help="a directory images, backing files and data files may live in (repeatable); nothing outside is "
        "opened (default: the folders named, and the folder of each file named)",
    )
    aud.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        type=_nonempty("pattern"),
        help="leave files, and folders (not walked), out of the walk of a named folder when their path "
        "relative to it, or (for a GLOB without /) their name, matches GLOB (fnmatch), e.g. '*.iso' "
        "(repeatable); a chain that names an excluded file still follows it (default: none)",
    )
    aud.add_argument(
        "-j",
        "--jobs",
        type=_positive,
        default=None,
        metavar="N",
        help="processes that read a large store's files (at least 1,500 of them) in parallel; 1 reads them in "
        "this process only (default: the number of CPUs this process may use)",
    )
    aud.add_argument(
        "--standalone",
        action="store_true",
        help="the upload policy: each image must stand alone; a backing file, data file or any other file an "
        "image names is an error (and is not followed) (default: backing chains are followed)",
    )
    aud.add_argument(
        "--formats",
        type=_format_list,
        default=None,
        metavar="FMT,...",
        help=f"the formats allowed; any other is an error (default: all; known: {','.join(KNOWN_FORMATS)})",
    )
    aud.add_argument(
        "--max-depth", type=_positive, default=None, metavar="N", help="most layers a chain may have (default 200)"
    )
    aud.add_argument(
        "--fail-on",
        choices=("warning", "error"),
        default="warning",
        help="the least severity that makes the exit status 1 (default warning)",
    )
    aud.add_argument(
        "--output",
        choices=("human", "json", "jsonl"),
        default="human",
        help="human: findings and a short summary; json: one JSON document; jsonl: JSON lines, one object per "
        "image (default human; the JSON is described by imgchain/schema/*.schema.json)",
    )
    aud.add_argument(
        "--graph",
        choices=("tree", "dot"),
        default=None,
        help="the backing graph: tree draws it in the human output, before the summary; dot prints it in "
        "Graphviz's DOT instead of the report (pipe it to 'dot -Tsvg'); human output only (default: none)",
    )
    aud.add_argument(
        "paths", metavar="PATH", nargs="+", type=_PATH, help="an image, or a folder of images (walked recursively)"
    )
    aud.set_defaults(run=_run_audit)


#: Each subcommand, and what adds its parser.
_COMMANDS = {"info": _add_info, "xml": _add_xml, "audit": _add_audit}


def _write(text: str) -> None:
    """Write to stdout; file names that are not UTF-8 go out as their bytes."""
    _write_all((text,))


def _write_all(pieces: Iterable[str]) -> None:
    """Write a long output piece by piece (never one string in memory).
    Raises _OutputError when stdout is closed or a write fails."""
    if sys.stdout is None:  # (Python's stdout when the process started without one)
        raise _OutputError("standard output is closed")
    out = sys.stdout.buffer
    for piece in pieces:  # (only the writes are in the try: the pieces are made by pure emitters)
        data = piece.encode("utf-8", "surrogateescape")
        try:
            out.write(data)
        except OSError as exc:
            raise _output_error(exc) from None
    try:
        sys.stdout.flush()
    except OSError as exc:
        raise _output_error(exc) from None


def _output_error(exc: OSError) -> _OutputError:
    if isinstance(exc, BrokenPipeError):
        return _OutputError("standard output: the reader has gone", quiet=True)
    return _OutputError(f"cannot write to standard output: {exc.strerror or exc}")


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
            _line(
                f"imgchain: note: the chain goes on at {quoted(chain.remote.filename)} ({chain.remote.protocol}), "
                "which cannot be examined offline"
            ),
            file=sys.stderr,
        )
    if args.output == "json":
        _write(qemu.dumps(infos if args.backing_chain else infos[0]) + "\n")
    else:
        _write(_lines(qemu.human(infos)))
    return EXIT_OK


def _run_xml(args: argparse.Namespace) -> int:
    from imgchain.chain import MAX_DEPTH, resolve_chain
    from imgchain.disk import Disk, describe_chain
    from imgchain.emit.xml import render, terminal_text

    depth = args.max_depth or MAX_DEPTH
    if args.verify is not None:
        if args.image is not None or args.mirror is not None:
            raise _UsageError("--verify takes a domain XML file, not IMAGE or --mirror")
        return _verify(args.verify, depth)
    if args.image is None:
        raise _UsageError("give IMAGE, or --verify DOMAIN.xml")
    if args.mirror_format is not None and args.mirror is None:
        raise _UsageError("--mirror-format goes with --mirror")
    chain = describe_chain(resolve_chain(args.image, args.format, max_depth=depth, tables=False))
    mirror = None
    if args.mirror is not None:
        mirror = describe_chain(resolve_chain(args.mirror, args.mirror_format, max_depth=depth, tables=False))
    disk = Disk(chain=chain, mirror=mirror, target=args.target, bus=args.bus)
    layout = args.layout or "nested"
    try:
        rendering = render(disk, layout, allow_probed=args.allow_probed)
    except ImgChainError as exc:
        exc.path = exc.path or args.image
        raise
    notes = list(rendering.notes)
    if args.layout is None and sys.stderr is not None and sys.stderr.isatty():
        notes.append(
            "note: this is the 2012 RFC's nested layout, which libvirt ignores; libvirt reads --layout backingstore"
        )
    for note in notes:
        print(_line(f"imgchain: {note}"), file=sys.stderr)
    text = rendering.text
    if sys.stdout is not None and sys.stdout.isatty():
        text = terminal_text(text)  # the same XML, with every unprintable character as a reference
    _write(text)
    return EXIT_OK


def _verify(path: str, max_depth: int) -> int:
    from imgchain.errors import XmlError
    from imgchain.verify import verify
    from imgchain.xmlread import read_disks

    text = _read_xml(path)
    try:
        disks = read_disks(text)
    except XmlError as exc:
        exc.path = path
        raise
    if not disks:
        raise PathError(path, "no <disk> with a source in it")
    differences = 0
    lines = []
    where = shown(path)
    for element, disk in disks:
        target = element.find("target")
        name = shown((target.get("dev") if target is not None else None) or "?")
        if disk is None:
            lines.append(f"{where}: disk {name}: no local source to check")
            continue
        if isinstance(disk, XmlError):
            differences += 1
            lines.append(f"{where}: disk {name}: cannot be checked: {disk}")
            continue
        verdict = verify(disk, max_depth=max_depth)
        found = verdict.differences
        differences += len(found)
        for d in found:
            lines.append(f"{where}: disk {name}: {d.chain} layer {d.layer}: {d.kind}: {d.message}")
        if found:
            continue
        if verdict.libvirt_finds is not None:
            n = verdict.libvirt_finds
            lines.append(
                f"{where}: disk {name}: declares no backing chain; libvirt will find "
                f"{n} layer{'s' if n != 1 else ''} when the domain starts"
            )
        else:
            n = len(disk.chain.layers)
            lines.append(f"{where}: disk {name}: matches the disk ({n} layer{'s' if n != 1 else ''} declared)")
    _write("".join(_line(line) + "\n" for line in lines))
    return EXIT_FAIL if differences else EXIT_OK


def _run_audit(args: argparse.Namespace) -> int:
    from imgchain.audit import audit
    from imgchain.chain import MAX_DEPTH
    from imgchain.emit import audit as out
    from imgchain.parallel import usable_cpus
    from imgchain.policy import Severity

    if args.graph is not None and args.output != "human":
        raise _UsageError(
            f"--graph is for the human output, not --output {args.output} (the JSON has the graph as each "
            "image's dependents)"
        )
    for root in args.root:
        if not os.path.isdir(root):
            raise _UsageError(f"--root {root!r} is not a directory")
    progress = _progress()
    try:  # (a named PATH that cannot be read is an image-unreadable finding: exit 1, never 2)
        report = audit(
            args.paths,
            args.format,
            roots=args.root,
            max_depth=args.max_depth or MAX_DEPTH,
            standalone=args.standalone,
            formats=args.formats,
            exclude=args.exclude,
            on_image=progress,
            jobs=args.jobs or usable_cpus(),
        )
    finally:
        if progress is not None:
            progress.close()
    if args.output == "jsonl":
        _write_all(line + "\n" for line in out.json_lines(report))
    elif args.output == "json":
        _write_all(out.json_chunks(report))
    elif args.graph == "dot":
        _write_all(_line(line) + "\n" for line in out.dot_lines(report))
    else:
        _write_all(_line(line) + "\n" for line in out.human_lines(report, args.graph))
    worst = report.worst()
    failed = worst is not None and worst >= Severity[args.fail_on.upper()]
    if failed and args.graph == "dot":  # (the picture colours the images; say why the exit status is 1)
        counts = [f.severity for f in report.findings]
        errors, warnings = counts.count(Severity.ERROR), counts.count(Severity.WARNING)
        print(
            f"imgchain: audit: {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)} "
            "(coloured in the graph; run without --graph dot for the findings)",
            file=sys.stderr,
        )
    return EXIT_FAIL if failed else EXIT_OK


class _Progress:
    """A progress display (count, rate, ETA) on stderr, by tqdm."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if total < _PROGRESS_FROM:
                return
            from tqdm import tqdm  # only when it is shown

            # (no monitor thread: the audit's helper processes are forked only where no other thread runs)
            tqdm.monitor_interval = 0
            self.bar = tqdm(total=total, unit="image", file=sys.stderr, leave=False, mininterval=0.2)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: Audits of fewer images finish too soon to need a progress display.
_PROGRESS_FROM = 1000


def _progress() -> _Progress | None:
    """A progress display when both the output and stderr are a terminal."""
    if sys.stdout is not None and sys.stderr is not None and sys.stderr.isatty() and sys.stdout.isatty():
        return _Progress()
    return None


def _read_xml(path: str) -> bytes:
    """A domain XML file: a regular file (a FIFO is never opened), read up
    to ``_MAX_XML`` bytes."""
    import stat

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise PathError(path, "not a regular file; not opened")
        if st.st_size > _MAX_XML:
            raise PathError(path, f"larger than {_MAX_XML} bytes; not read")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            return os.read(fd, _MAX_XML)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PathError(path, exc.strerror or str(exc)) from None


def _line(text: str) -> str:
    """One line of output as it goes out: every character that is not plain
    printable text (a newline, a CR, a tab, an escape, a byte that is not
    UTF-8 ...) escaped.  The emitters escape the names they interpolate
    (``errors.shown``, ``errors.name_text``); this is the last guard, so that
    line structure only ever comes from the emitters."""
    if plain(text):
        return text
    return "".join(c if plain(c) else quoted(c)[1:-1] for c in text)


def _lines(text: str) -> str:
    """A text of whole lines (an emitter's), each line through :func:`_line`."""
    return "\n".join(_line(line) for line in text.split("\n"))


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    # (the command is the first word, unless an option such as --help or --version comes first)
    args = build_parser(words[0] if words and words[0] in _COMMANDS else None).parse_args(words)
    if sys.stdout is None:  # started with stdout closed: say so before any work whose output would be lost
        print("imgchain: standard output is closed; nothing done", file=sys.stderr)
        return EXIT_FAIL
    try:
        return int(args.run(args))
    except _UsageError as exc:
        print(_line(f"imgchain: usage: {exc} (see 'imgchain {args.command} --help')"), file=sys.stderr)
        return EXIT_USAGE
    except ImgChainError as exc:
        print(_line(f"imgchain: {exc.describe()}"), file=sys.stderr)
        return EXIT_FAIL
    except _OutputError as exc:
        if not exc.quiet:
            print(f"imgchain: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:  # (stderr's reader has gone)
        return EXIT_FAIL
    except OSError as exc:  # the system failed us where no image was concerned (a vanished working folder ...)
        print(_line(f"imgchain: {exc.strerror or exc}"), file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
