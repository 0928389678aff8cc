"""imgchain.qemu_names: what qemu 7.2 opens for a backing name.

Unit tests per driver and escape class, an oracle test that runs the real
qemu-io and qemu-img under strace in a sandbox folder, and a hypothesis
target over generated json: names."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgchain.errors import BackingNameError
from imgchain.qemu_names import DRIVERS, MAX_DEPTH, QemuName, Target, qemu_opens


def paths(result: QemuName, role: str | None = None) -> set[tuple[str, str]]:
    """(kind, path) of every target, those with the given role only if one is given."""
    return {(t.kind, t.path) for t in result.targets if role is None or t.role == role}


def js(obj: object) -> str:
    return "json:" + json.dumps(obj)


# --------------------------------------------------------------------------
# Plain names


def test_plain_path_is_one_image_relative_to_the_overlay() -> None:
    assert qemu_opens("base.qcow2") == QemuName(
        (Target("file", "base.qcow2", "", "image", False, None, "overlay", True),), (), None
    )
    assert qemu_opens("sub/a:b", "raw").targets == (
        Target("file", "sub/a:b", "", "image", False, "raw", "overlay", False),
    )


def test_file_prefix_is_stripped_once_and_is_relative_to_the_working_folder() -> None:
    r = qemu_opens("file:x.img", "qcow2")
    assert Target("file", "x.img", "", "image", False, "qcow2", "cwd", True) in r.targets
    assert paths(r, "device-probe") == {("file", "file:x.img")}
    assert ("file", "file:y") in paths(qemu_opens("file:file:y"), "image")
    assert ("file", "/dev/sda") in paths(qemu_opens("host_device:/dev/sda"), "image")


def test_unknown_protocol_is_refused() -> None:
    for name in ("sheepdog:x", "vxhs://h/x", "tftp://h/x", "JSON:{}", "quorum:x", "bogus:x"):
        with pytest.raises(BackingNameError, match="Unknown protocol"):
            qemu_opens(name)


def test_recorded_protocol_format_parses_the_name_itself() -> None:
    assert paths(qemu_opens("nbd:x", "file")) == {("file", "nbd:x")}
    assert paths(qemu_opens("nbd:unix:/s", "nbd")) == {("socket", "/s")}
    with pytest.raises(BackingNameError):
        qemu_opens("fat:/d", "nbd")
    with pytest.raises(BackingNameError, match="unknown backing format"):
        qemu_opens("x", "sheepdog")


# --------------------------------------------------------------------------
# json: the whole tree


def test_nested_and_flattened_backing_are_the_same_option() -> None:
    nested = js(
        {
            "driver": "qcow2",
            "file": {"driver": "file", "filename": "a.qcow2"},
            "backing": {"driver": "raw", "file": {"driver": "file", "filename": "/etc/hostname"}},
        }
    )
    flat = js(
        {
            "driver": "qcow2",
            "file.driver": "file",
            "file.filename": "a.qcow2",
            "backing.driver": "raw",
            "backing.file.driver": "file",
            "backing.file.filename": "/etc/hostname",
        }
    )
    for name in (nested, flat):
        r = qemu_opens(name)
        assert Target("file", "a.qcow2", "file.filename", "image", False, "qcow2", "cwd", False) in r.targets
        assert (
            Target("file", "/etc/hostname", "backing.file.filename", "backing", False, "raw", "cwd", False) in r.targets
        )
        assert r.top_driver == "qcow2"


def test_backing_without_driver_is_probed_and_follows_its_own_backing() -> None:
    r = qemu_opens(js({"driver": "qcow2", "file.filename": "a", "backing.file.filename": "/etc/hostname"}))
    (t,) = [t for t in r.targets if t.role == "backing"]
    assert (t.path, t.format, t.follows_backing) == ("/etc/hostname", None, True)
    image = next(t for t in r.targets if t.role == "image")
    assert image.follows_backing is False  # the backing option overrides the header's


def test_backing_null_means_no_backing() -> None:
    r = qemu_opens(js({"driver": "qcow2", "file": {"filename": "a"}, "backing": None}))
    assert [t.follows_backing for t in r.targets] == [False]
    with pytest.raises(BackingNameError, match="reference"):
        qemu_opens(js({"driver": "qcow2", "file": {"filename": "a"}, "backing": "node0"}))
    with pytest.raises(BackingNameError, match="reference"):
        qemu_opens(js({"driver": "qcow2", "file": "node0"}))


def test_recorded_format_wins_over_the_json_driver() -> None:
    name = js({"driver": "raw", "file": {"driver": "file", "filename": "a"}, "backing.file.filename": "/etc/passwd"})
    with pytest.raises(BackingNameError, match="no option 'backing"):
        qemu_opens(name)  # raw has no backing: qemu refuses before opening it
    r = qemu_opens(name, "qcow2")
    assert ("file", "/etc/passwd") in paths(r, "backing")
    assert r.top_driver == "qcow2"


def test_data_file_is_opened() -> None:
    r = qemu_opens(js({"driver": "qcow2", "file": {"filename": "a"}, "data-file": {"filename": "/dev/sdb"}}))
    assert Target("file", "/dev/sdb", "data-file.filename", "data-file", False, None, "cwd", False) in r.targets


def test_probed_top_and_follows_backing() -> None:
    r = qemu_opens(js({"file": {"driver": "file", "filename": "x"}}))
    assert r.targets == (Target("file", "x", "file.filename", "image", False, None, "cwd", True),)
    r = qemu_opens(js({"driver": "file", "filename": "x"}))
    assert r.targets == (Target("file", "x", "filename", "image", False, None, "cwd", False),)


def test_vvfat_directory() -> None:
    assert qemu_opens("fat:/srv").targets[-1] == Target("dir", "/srv", "", "dir", False, None, "cwd", False)
    assert qemu_opens("fat:rw:/srv").targets[-1] == Target("dir", "/srv", "", "dir", True, None, "cwd", False)
    assert qemu_opens("fat:floppy:12:rw:d").targets[-1].path == "d"
    assert qemu_opens("fat:/a:b").targets[-1].path == "b"  # the part after the last ':'
    assert qemu_opens("fat:rw:c:/x").targets[-1].path == "c:/x"  # a DOS drive letter
    r = qemu_opens(js({"driver": "vvfat", "dir": "/etc", "rw": True}))
    assert r.targets == (Target("dir", "/etc", "dir", "dir", True, None, "cwd", False),)


def test_unix_sockets_in_network_names() -> None:
    assert ("socket", "/run/s") in paths(qemu_opens("nbd+unix:///exp?socket=/run/s"))
    assert ("socket", "rel.sock") in paths(qemu_opens("nbd:unix:rel.sock:exportname=e"))
    assert ("socket", "/g") in paths(qemu_opens("gluster+unix:///vol/img?socket=/g"))
    r = qemu_opens(js({"driver": "nbd", "server": {"type": "unix", "path": "/run/nbd"}, "export": "e"}))
    assert r.targets == (Target("socket", "/run/nbd", "server.path", "socket", False, None, "cwd", False),)
    assert paths(qemu_opens(js({"driver": "nbd", "path": "/legacy"}))) == {("socket", "/legacy")}
    r = qemu_opens(js({"driver": "gluster", "volume": "v", "path": "p", "server": [{"type": "unix", "path": "/g0"}]}))
    assert paths(r) == {("socket", "/g0")}
    r = qemu_opens(js({"driver": "nbd", "server": {"type": "unix", "path": "a", "abstract": True}}))
    assert r.targets == () and r.network == ("nbd unix abstract 'a'",)


def test_network_only_names() -> None:
    for name in ("nbd://h:10809/e", "http://h/x", "ssh://h/x", "iscsi://h/t/0", "nfs://h/x", "gluster://h/v/p"):
        r = qemu_opens(name, "raw")
        assert paths(r) == {("file", name)}, name  # only the literal name's block-device probe
        assert r.network, name
    r = qemu_opens(js({"driver": "nbd", "server": {"type": "inet", "host": "h", "port": "1"}}))
    assert r.targets == () and r.network == ("nbd tcp h:1",)
    assert "***" in qemu_opens("https://user:pw@h/x").network[0]


def test_blkdebug_and_blkverify() -> None:
    r = qemu_opens("blkdebug:/etc/cfg:/img")
    assert {("file", "/etc/cfg"), ("file", "/img")} <= paths(r)
    assert ("file", "/etc/cfg") in paths(r, "config")
    assert paths(qemu_opens("blkdebug::img"), "image") == {("file", "img")}
    r = qemu_opens("blkverify:/raw:/test")
    assert ("file", "/raw") in paths(r, "image") and ("file", "/test") in paths(r, "child")
    r = qemu_opens("blkdebug:c:blkverify:r:fat:/d")  # names nest
    assert {("file", "c"), ("file", "r"), ("dir", "/d")} <= paths(r)
    r = qemu_opens(js({"driver": "blkdebug", "config": "/c", "image": {"driver": "file", "filename": "/i"}}))
    assert paths(r) == {("file", "/c"), ("file", "/i")}
    r = qemu_opens(js({"driver": "blkdebug", "x-image": 'json:{"driver":"file","filename":"/j"}'}))
    assert paths(r) == {("file", "/j")}
    r = qemu_opens(js({"driver": "blkverify", "raw": {"filename": "/r"}, "test": {"file": {"filename": "/t"}}}))
    assert paths(r) == {("file", "/r"), ("file", "/t")}
    with pytest.raises(BackingNameError):
        qemu_opens("blkdebug:noimage")


def test_quorum_children_and_wrappers() -> None:
    r = qemu_opens(
        js({"driver": "quorum", "vote-threshold": 1, "children": [{"file": {"filename": "a"}}, {"filename": "b"}]})
    )
    assert paths(r, "child") == {("file", "a"), ("file", "b")}
    assert qemu_opens(js({"driver": "quorum", "children.0.file.filename": "a"})).targets[0].follows_backing
    for driver in ("throttle", "copy-on-read", "compress", "preallocate", "snapshot-access", "raw", "replication"):
        r = qemu_opens(js({"driver": driver, "file": {"driver": "file", "filename": "/w"}}))
        assert paths(r) == {("file", "/w")}, driver
    r = qemu_opens(js({"driver": "copy-before-write", "file": {"filename": "a"}, "target": {"filename": "t"}}))
    assert Target("file", "t", "target.filename", "target", True, None, "cwd", False) in r.targets
    r = qemu_opens(js({"driver": "blklogwrites", "file": {"filename": "a"}, "log": {"filename": "l"}}))
    assert ("file", "l") in paths(r, "log")
    r = qemu_opens(js({"driver": "vmdk", "file": {"filename": "d.vmdk"}, "extents": [{"filename": "e0"}]}))
    assert paths(r, "extent") == {("file", "e0")}


def test_rbd_gluster_nvme_blkio() -> None:
    assert ("file", "/c.conf") in paths(qemu_opens("rbd:pool/img:conf=/c.conf:id=admin"), "config")
    with pytest.raises(BackingNameError, match="librados"):
        qemu_opens("rbd:pool/img:keyring=/etc/shadow")
    with pytest.raises(BackingNameError, match="Pool"):
        qemu_opens("rbd:img")
    r = qemu_opens(js({"driver": "rbd", "pool": "p", "image": "i", "conf": "/c"}))
    assert paths(r, "config") == {("file", "/c")}
    r = qemu_opens(
        js(
            {
                "driver": "gluster",
                "volume": "v",
                "path": "p",
                "server": [{"type": "inet", "host": "h"}],
                "logfile": "/l",
            }
        )
    )
    assert Target("file", "/l", "logfile", "log", True, None, "cwd", False) in r.targets
    assert paths(qemu_opens("nvme://0000:00:04.0/1")) >= {("dir", "/sys/bus/pci/devices/0000:00:04.0")}
    assert paths(qemu_opens(js({"driver": "virtio-blk-vhost-user", "path": "/vh"}))) == {("socket", "/vh")}
    assert paths(qemu_opens(js({"driver": "io_uring", "filename": "/u"}))) == {("file", "/u")}


def test_null_drivers() -> None:
    assert qemu_opens("null-co://").targets[-1].role == "device-probe"
    with pytest.raises(BackingNameError):
        qemu_opens("null-co://x")
    assert qemu_opens(js({"driver": "null-aio", "size": 1})).targets == ()


@pytest.mark.parametrize(
    "name",
    [
        js({"driver": "bogus", "filename": "x"}),
        js({"driver": "qcow2", "file": {"filename": "a"}, "x-unknown": 1}),
        js({"driver": "file", "filename": "a", "file": {"filename": "b"}}),
        js({"driver": "file", "filename": 5}),
        js({"driver": "file", "filename": ""}),
        js({"driver": "file"}) + "x",
        'json:{"driver":"file","driver":"file","filename":"a"}',
        js({"driver": "qcow2", "file": {"filename": "a"}, "file.filename": "b"}),
        js({"driver": "qcow2", "file": {}}),
        js({"driver": "quorum", "children.01.filename": "a"}),
        js({"filename": "a", "file": {"filename": "b"}}),
        js({"driver": "blkdebug", "x-image": "a", "image": {"filename": "b"}}),
        js([1]),
        "json:{'driver': 'file'}",  # qemu reads single quotes; we do not
        "json:" + "[" * 10_000,
        'json:{"' + "." * 520 + 'a":1}',
        'json:{"file":' * 40 + "{}" + "}" * 40,
        js({"driver": "nbd", "server": {"type": "unix"}}),
        "nbd+unix:///e?socket=%2Fetc",
        js({"driver": "vvfat", "dir": "/d", "rw": True, "foo": 1}),
    ],
)
def test_what_cannot_be_modelled_is_refused(name: str) -> None:
    with pytest.raises(BackingNameError):
        qemu_opens(name)


def test_deep_chains_of_nodes_are_refused_not_a_recursion_error() -> None:
    deep = {"driver": "file", "filename": "x"}
    for _ in range(MAX_DEPTH + 2):
        deep = {"driver": "raw", "file": deep}
    with pytest.raises(BackingNameError):
        qemu_opens(js({"driver": "throttle", "file." + "file." * 600 + "filename": "x"}))
    with pytest.raises(BackingNameError, match="deeper"):
        qemu_opens(js(deep))
    with pytest.raises(BackingNameError, match="deeper"):
        qemu_opens("blkdebug::" * 200 + "x")


def test_messages_mask_credentials_and_quote_the_name() -> None:
    with pytest.raises(BackingNameError) as e:
        qemu_opens(js({"driver": "bogus", "password": "hunter2"}))
    assert "hunter2" not in str(e.value) and "'json:" in str(e.value)


# --------------------------------------------------------------------------
# The oracle: the real qemu 7.2, under strace, in a sandbox folder

_TOOLS = all(shutil.which(t) for t in ("qemu-img", "qemu-io", "strace"))
_OPEN = re.compile(r'\b(?:openat|open|mkdir|stat|newfstatat|execve)\((?:AT_FDCWD, |\d+, )?"((?:[^"\\]|\\.)*)"')
_CONNECT = re.compile(r'connect\(\d+, \{sa_family=AF_UNIX, sun_path="((?:[^"\\]|\\.)*)"')


def _oracle_cases() -> list[tuple[str, str]]:
    q = "../bait/b.qcow2"
    return [
        (q, "qcow2"),
        (
            js(
                {
                    "driver": "qcow2",
                    "file": {"driver": "file", "filename": q},
                    "backing": {"driver": "raw", "file": {"driver": "file", "filename": "../bait/h"}},
                }
            ),
            "qcow2",
        ),
        (
            js({"driver": "qcow2", "file": {"driver": "file", "filename": q}, "backing.file.filename": "../bait/h"}),
            "qcow2",
        ),
        (
            js({"driver": "raw", "file": {"driver": "file", "filename": q}, "backing.file.filename": "../bait/h"}),
            "qcow2",
        ),
        (
            js({"driver": "qcow2", "file": {"filename": q}, "data-file": {"driver": "file", "filename": "../bait/h"}}),
            "qcow2",
        ),
        ("fat:../bait/dir", "raw"),
        (js({"driver": "vvfat", "dir": "../bait/dir"}), "vvfat"),
        ("blkdebug:../bait/cfg:" + q, "qcow2"),
        (
            js(
                {
                    "driver": "blkdebug",
                    "config": "../bait/cfg",
                    "image": {"driver": "file", "filename": "../bait/r.raw"},
                }
            ),
            "blkdebug",
        ),
        ("blkverify:../bait/r.raw:../bait/r2.raw", "raw"),
        (
            js(
                {
                    "driver": "quorum",
                    "vote-threshold": 1,
                    "children": [
                        {"driver": "raw", "file": {"filename": "../bait/r.raw"}},
                        {"file": {"driver": "file", "filename": q}},
                    ],
                }
            ),
            "quorum",
        ),
        ("nbd+unix:///e?socket=../bait/s", "raw"),
        ("nbd:unix:../bait/s", "raw"),
        (js({"driver": "nbd", "server": {"type": "unix", "path": "../bait/s"}}), "nbd"),
        (
            js(
                {
                    "driver": "throttle",
                    "file": {"driver": "raw", "file": {"driver": "file", "filename": "../bait/r.raw"}},
                }
            ),
            "throttle",
        ),
        (js({"driver": "copy-on-read", "file": {"driver": "file", "filename": "../bait/r.raw"}}), "copy-on-read"),
        (js({"driver": "raw", "file": {"driver": "file", "filename": "../bait/r.raw"}}), "raw"),
        (js({"file": {"driver": "file", "filename": q}}), ""),
    ]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oracle")
    bait = root / "bait"
    (bait / "dir").mkdir(parents=True)
    (bait / "dir" / "inner.txt").write_text("bait\n")
    (bait / "h").write_text("bait\n")
    (bait / "cfg").write_text("")
    for raw in ("r.raw", "r2.raw"):
        (bait / raw).write_bytes(b"\0" * 65536)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(bait / "b.qcow2"), "1M"], check=True)
    (root / "sandbox").mkdir()
    return root


def _touched(sandbox: Path, argv: list[str]) -> set[str]:
    """Paths under the oracle folder (bait or sandbox) that the command opened,
    tried to open, stat-ed, or connected to."""
    trace = sandbox / "sandbox" / "trace.txt"
    subprocess.run(
        [
            "timeout",
            "10",
            "strace",
            "-f",
            "-qq",
            "-o",
            str(trace),
            "-e",
            "trace=openat,open,connect,mkdir,stat,newfstatat",
            *argv,
        ],
        cwd=sandbox / "sandbox",
        capture_output=True,
        check=False,
    )
    out: set[str] = set()
    for line in trace.read_text(errors="replace").splitlines():
        for m in (*_OPEN.finditer(line), *_CONNECT.finditer(line)):
            raw = m.group(1).encode().decode("unicode_escape")
            if not raw:
                continue
            full = os.path.normpath(os.path.join(sandbox / "sandbox", raw))
            if full.startswith(str(sandbox) + os.sep) and not full.endswith(("top.qcow2", "trace.txt")):
                out.add(full)
    return out


def _covered(sandbox: Path, result: QemuName, touched: set[str]) -> set[str]:
    """The touched paths that no target accounts for."""
    here = sandbox / "sandbox"
    files = {os.path.normpath(os.path.join(here, t.path)) for t in result.targets}
    dirs = {os.path.normpath(os.path.join(here, t.path)) for t in result.targets if t.kind == "dir"}
    return {p for p in touched if p not in files and not any(p.startswith(d + os.sep) for d in dirs)}


@pytest.mark.qemu
@pytest.mark.skipif(not _TOOLS, reason="needs qemu-img, qemu-io and strace")
@pytest.mark.parametrize(("name", "fmt"), _oracle_cases())
def test_oracle_every_path_qemu_touches_is_a_target(sandbox: Path, name: str, fmt: str) -> None:
    here = sandbox / "sandbox"
    top = here / "top.qcow2"
    top.unlink(missing_ok=True)
    sock_path = sandbox / "bait" / "s"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))  # bound, not listening: connect() is refused at once
    try:
        create = ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", name] + (["-F", fmt] if fmt else [])
        if fmt:
            subprocess.run([*create, str(top), "1M"], check=True, cwd=here)
        else:
            # qemu-img create wants -F; write the overlay with no backing format by hand.
            from craft import qcow2

            top.write_bytes(qcow2(backing=name.encode()))
        touched = _touched(sandbox, ["qemu-io", "-r", "-c", "read 0 512", "top.qcow2"])
        touched |= _touched(sandbox, ["qemu-img", "info", "--backing-chain", "top.qcow2"])
    finally:
        sock.close()
    assert touched, "qemu touched nothing in the sandbox: the case tests nothing"
    result = qemu_opens(name, fmt or None)
    assert _covered(sandbox, result, touched) == set()


# --------------------------------------------------------------------------
# hypothesis: generated json: names

_PATH_KINDS = ("file", "dir", "socket", "name")
_KEYS = st.text(st.sampled_from('abz.-_0189:/ \\"\u00e9'), min_size=0, max_size=12)


@st.composite
def _node(draw: st.DrawFn, depth: int, planted: list[str]) -> dict[str, object]:
    driver = draw(st.sampled_from([*sorted(DRIVERS), "bogus", None]))
    node: dict[str, object] = {}
    if driver is not None:
        node["driver"] = driver
    spec = DRIVERS.get(driver or "")
    if spec is not None:
        keys = sorted(spec.keys)
        for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)) if keys else []:
            kind = spec.keys[key]
            flat = key.replace("N", "0") if key.endswith(".N") or ".N." in key else key
            if flat.endswith(".abstract") or (kind == "net" and flat.startswith("server") and flat.endswith("type")):
                continue
            if kind in _PATH_KINDS:
                value: object = f"P{len(planted)}"
                planted.append(str(value))
            else:
                value = draw(st.one_of(st.integers(0, 9), st.sampled_from(["on", "x", "unix", "inet"]), st.booleans()))
            node[flat] = value
        children = sorted(spec.children) + [f"{a}.0" for a in sorted(spec.arrays)]
        if depth < 4 and children:
            for child in draw(st.lists(st.sampled_from(children), max_size=2, unique=True)):
                sub = draw(_node(depth + 1, planted))
                if draw(st.booleans()):
                    node[child] = sub
                else:
                    node.update({f"{child}.{k}": v for k, v in sub.items()})
    elif draw(st.booleans()):
        node["filename"] = f"P{len(planted)}"
        planted.append(str(node["filename"]))
    if draw(st.integers(0, 9)) == 0:
        node[draw(_KEYS)] = draw(st.one_of(st.integers(), st.text(max_size=5), st.none()))
    return node


@settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_generated_json_names_raise_only_backing_name_error_and_list_every_planted_path(data: st.DataObject) -> None:
    planted: list[str] = []
    tree = data.draw(_node(0, planted))
    fmt = data.draw(st.sampled_from([None, None, "qcow2", "raw"]))
    name = "json:" + json.dumps(tree)
    try:
        result = qemu_opens(name, fmt)
    except BackingNameError:
        return
    found = {t.path for t in result.targets}
    hidden = {p for p in planted if p not in found and f"/sys/bus/pci/devices/{p}" not in found}
    network = " ".join(result.network)
    # A planted path may be a socket named abstract, shown as network; and a
    # top-level driver replaced by the recorded format drops nothing else.
    assert {p for p in hidden if repr(p) not in network} == set(), (name, fmt, result)
