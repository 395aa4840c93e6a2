"""The supervisor of one local instance: `python -I _supervise.py <instance_dir> <ready_fd>`.

Started by `LocalProcessExecutor.start`. It detaches (forks, so that it is nobody's child and
outlives the server), sets up the instance's namespaces, runs the command in a process group of
its own and waits for it. When the command ends it kills whatever is left of the tree, reaps
every process (it is a child subreaper, so orphans come back to it: no zombies), and writes the
exit code atomically to `<instance_dir>/exit_code`. SIGTERM, SIGINT and SIGHUP sent to the
supervisor are forwarded to the command's process group.

It reads `<instance_dir>/spec.json`, writes `<instance_dir>/instance.json` (pids and start
times) and then one JSON line to `ready_fd`: `{"ok": true, "opt_ml_mounted": ...}` or
`{"ok": false, "isolation": true, "message": ...}` when network isolation was asked for and
could not be arranged (then nothing runs).

Standard library only, and run by file path with `-I`, so it does not depend on how Salvia is
installed. Namespaces use ctypes `unshare(2)`/`mount(2)` (Python 3.11 has no `os.unshare`): as
root directly; otherwise inside a new user namespace that maps the caller's own uid and gid.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

OPT_ML_UNAVAILABLE = "literal /opt/ml paths are unavailable on this host; use the SM_* variables"

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _umount(target: str) -> None:
    _libc.umount2(target.encode(), MNT_DETACH)


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): guards against pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


# ---- namespaces -------------------------------------------------------------------------------


def _unshare(flags: int) -> None:
    """Unshare `flags`; without the privilege, inside a new user namespace mapping our ids."""
    if _libc.unshare(ctypes.c_int(flags)) == 0:
        return
    first = ctypes.get_errno()
    if first != errno.EPERM:
        raise OSError(first, f"unshare: {os.strerror(first)}")
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(ctypes.c_int(flags | CLONE_NEWUSER)), "unshare (user namespace)")
    # We keep full capabilities inside the new namespace until exec; the command, run with our
    # own (non-zero) uid, gets none, so it behaves as the same unprivileged user as before.
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def _mount_opt_ml(workdir: str) -> None:
    """Make `workdir` appear at /opt/ml in our (already private) mount namespace.

    When /opt/ml does not exist on the host, a tmpfs goes over /opt and every entry of the real
    /opt is bound back (reached through a descriptor opened before the tmpfs hid it), so a
    Python or a toolchain installed under /opt stays usable. The host is never modified.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount may propagate to the host
    work_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        work = f"/proc/self/fd/{work_fd}"
        if os.path.isdir("/opt/ml"):
            _mount(work, "/opt/ml", None, MS_BIND | MS_REC)
            return
        if os.path.lexists("/opt/ml") or not os.path.isdir("/opt"):
            raise OSError(errno.ENOTDIR, "/opt/ml cannot be a directory on this host")
        opt_fd = os.open("/opt", os.O_RDONLY | os.O_DIRECTORY)
        try:
            _overlay_opt(opt_fd, work)
        finally:
            os.close(opt_fd)
    finally:
        os.close(work_fd)


def _overlay_opt(opt_fd: int, work: str) -> None:
    original = f"/proc/self/fd/{opt_fd}"
    mode = os.stat(opt_fd).st_mode & 0o7777
    _mount("tmpfs", "/opt", "tmpfs", 0, f"mode={mode:o}")
    try:
        for entry in os.scandir(original):
            target = f"/opt/{entry.name}"
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
                continue
            if entry.is_dir():
                os.mkdir(target)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
            _mount(entry.path, target, None, MS_BIND | MS_REC)
        os.mkdir("/opt/ml", 0o755)
        _mount(work, "/opt/ml", None, MS_BIND | MS_REC)
    except OSError:
        _umount("/opt")  # detaches the binds with it: /opt looks as it did
        raise


def _setup_namespaces(spec: dict[str, Any]) -> tuple[bool, str | None]:
    """Returns (opt_ml_mounted, isolation_error)."""
    want_net = bool(spec["network_isolation"])
    want_mount = bool(spec["mount_opt_ml"])
    flags = (CLONE_NEWNET if want_net else 0) | (CLONE_NEWNS if want_mount else 0)
    if not flags:
        return False, None
    try:
        _unshare(flags)
    except OSError as error:
        if want_net:
            return False, f"cannot create a network namespace ({error})"
        return False, None
    if want_net:
        try:
            _loopback_up()
        except OSError as error:
            return False, f"cannot bring up loopback in the network namespace ({error})"
    if not want_mount:
        return False, None
    try:
        _mount_opt_ml(spec["workdir"])
    except OSError:
        return False, None
    return True, None


# ---- the command ------------------------------------------------------------------------------


def _child_setup(cpus: list[int] | None, memory_mib: int | None) -> None:
    """Runs in the forked child before exec (the supervisor is single-threaded, so it is safe)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if memory_mib:
        limit = memory_mib * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[1] == me:
            found.append(int(name))
    return found


def _kill_and_reap_rest(pgid: int) -> None:
    """Kill what remains of the tree (orphans come back to us as subreaper) and reap it all."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)
    while True:
        for pid in _children():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _run(instance_dir: Path, spec: dict[str, Any], ready: int) -> int:
    pending: list[int] = []
    child: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if not child:
            pending.append(signum)
            return
        with contextlib.suppress(OSError):
            os.killpg(child[0], signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    opt_ml_mounted, isolation_error = _setup_namespaces(spec)
    if isolation_error is not None:
        os.write(ready, (json.dumps({"ok": False, "isolation": True, "message": isolation_error})
                         + "\n").encode())  # fmt: skip
        return 1
    if spec["mount_opt_ml"] and not opt_ml_mounted:
        os.write(1, (OPT_ML_UNAVAILABLE + "\n").encode())

    record: dict[str, Any] = {
        "supervisor_pid": os.getpid(),
        "supervisor_start": start_time(os.getpid()),
        "child_pid": None,
        "child_start": None,
        "opt_ml_mounted": opt_ml_mounted,
    }
    exit_code: int | None = None
    try:
        proc = subprocess.Popen(
            spec["command"],
            cwd=spec["workdir"],
            env=spec["env"],
            stdin=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=lambda: _child_setup(spec["cpus"], spec["memory_mib"]),
        )
    except (OSError, subprocess.SubprocessError) as error:
        os.write(2, f"salvia: cannot run {spec['command'][:1]}: {error}\n".encode())
        exit_code = 127 if isinstance(error, FileNotFoundError) else 126
    else:
        child.append(proc.pid)
        record.update(child_pid=proc.pid, child_start=start_time(proc.pid))
    _write_atomic(instance_dir / "instance.json", json.dumps(record))
    os.write(ready, (json.dumps({"ok": True, "opt_ml_mounted": opt_ml_mounted}) + "\n").encode())
    os.close(ready)

    if exit_code is None:
        for waiting in pending:
            forward(waiting, None)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == proc.pid:
                exit_code = os.waitstatus_to_exitcode(status)
                proc.returncode = exit_code
                break
        _kill_and_reap_rest(proc.pid)
    _write_atomic(instance_dir / "exit_code", str(exit_code))
    return 0


def main(argv: list[str]) -> int:
    instance_dir, ready = Path(argv[1]), int(argv[2])
    spec = json.loads((instance_dir / "spec.json").read_text())
    if os.fork() != 0:
        os._exit(0)  # the executor reaps this parent at once; the supervisor lives on detached
    try:
        return _run(instance_dir, spec, ready)
    except BaseException as error:  # the log is the only place anyone will see this
        os.write(2, f"salvia: instance supervisor failed: {error!r}\n".encode())
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv))
