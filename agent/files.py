"""File transfer for remote sessions: the agent's SFTP server, confined to the
policy's `file_roots`.

HQ opens the `sftp` subsystem with `FIELDLINK_SESSION` (and ticket and
engineer) in the channel's environment. The channel is served only for a
session the book admits (an active `files` session, see agent.sessions); any
other gets every request refused with the reason, and every request is
checked again, so a session that ends mid-transfer stops being served (the
book also closes the channel).

Paths: every path is resolved with realpath -- `..` applied, symlinks
followed -- and must stay inside a root (itself resolved). A path that names
something to create (a new file, a directory) is checked through its parent
directory, so a symlink inside a root pointing outside is refused for reads
and writes alike; operations on a name itself (lstat, remove, rename) resolve
the directory it is in. Files are opened by the resolved path with
O_NOFOLLOW, and only regular files are served. A relative path is taken from
the first root.

Refused with SFTP permission errors: anything outside the roots, a rename
across roots, creating symlinks or hard links, ownership changes, setuid and
setgid bits, and writes that would make a file larger than the policy's
`max_file_bytes`.

File contents are read and written in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncssh
import structlog

from agent.policy import Policy
from agent.sessions import SessionBook
from shared import protocol as p

log = structlog.get_logger(__name__)

MODE_BITS = 0o777  # permission bits a client may set (no setuid, setgid, sticky)


class Refused(asyncssh.SFTPPermissionDenied):
    """A request this machine does not allow; the reason goes to HQ."""


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


def root_of(real: str, roots: list[str]) -> str | None:
    """The (resolved) root that holds resolved path `real`, if any."""
    for root in roots:
        resolved = os.path.realpath(root)
        if _inside(real, resolved):
            return resolved
    return None


def confine(path: str, roots: list[str], *, follow: bool = True) -> str:
    """`path` resolved, if it stays inside a root; Refused otherwise.

    With `follow`, the whole path is resolved (a final symlink is followed);
    without, only the directory it is in, so the name itself may be a link."""
    if not roots:
        raise Refused("this machine's policy has no file roots")
    if "\x00" in path or not path:
        raise Refused("not a valid path")
    if not path.startswith("/"):
        path = os.path.join(roots[0], path)
    head, name = os.path.split(path.rstrip("/") or "/")
    if follow or name in ("", ".", ".."):
        real = os.path.realpath(path)
    else:
        real = os.path.join(os.path.realpath(head or "/"), name)
    if root_of(real, roots) is None:
        raise Refused(
            f"{path} is outside this machine's file roots ({', '.join(roots)}); "
            "symlinks and '..' are followed before checking"
        )
    return real


@dataclass(eq=False)
class OpenFile:
    """A file opened for HQ: its descriptor, resolved path and mode."""

    fd: int
    path: str
    writable: bool
    append: bool


class FileServer(asyncssh.SFTPServer):
    """One SFTP channel for one files session (see the module docstring)."""

    kind = "files"

    def __init__(
        self,
        chan: asyncssh.SSHServerChannel[bytes],
        policy: Callable[[], Policy],
        book: SessionBook,
    ) -> None:
        super().__init__(chan)
        self._policy = policy
        self._book = book
        env = {str(k): str(v) for k, v in chan.get_environment().items()}
        self.session_id = env.get(p.SESSION_ENV, "")
        self._env = env
        self._stopped: str | None = None
        self._files: set[OpenFile] = set()
        why = book.refusal(self.session_id, "files", env, policy().require_consent)
        self._attached = why is None
        if why is None:
            book.attach(self.session_id, self)
            log.info("files_opened", session_id=self.session_id)
        else:
            log.warning("files_refused", session_id=self.session_id, reason=why)

    # --- admission ---------------------------------------------------------------------

    def stop(self, reason: str, *, failure: bool = False) -> None:
        """The session ended: refuse from now on and close the channel."""
        self._stopped = reason
        self.channel.close()

    def _check(self) -> Policy:
        if self._stopped is not None:
            raise Refused(f"the session is over ({self._stopped})")
        policy = self._policy()
        why = self._book.refusal(self.session_id, "files", self._env, policy.require_consent)
        if why is not None:
            raise Refused(why)
        return policy

    def _path(self, path: bytes, *, follow: bool = True) -> str:
        policy = self._check()
        return confine(os.fsdecode(path), policy.file_roots, follow=follow)

    def map_path(self, path: bytes) -> bytes:
        # Every path-taking request is handled below; whatever is not never
        # reaches the file system.
        raise Refused("this request is not offered")

    # --- files ----------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        write = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND))
        flags = (
            os.O_RDWR
            if pflags & asyncssh.FXF_READ and write
            else (os.O_WRONLY if write else os.O_RDONLY)
        )
        if pflags & asyncssh.FXF_APPEND:
            flags |= os.O_APPEND
        if pflags & asyncssh.FXF_CREAT:
            flags |= os.O_CREAT
        if pflags & asyncssh.FXF_TRUNC:
            flags |= os.O_TRUNC
        if pflags & asyncssh.FXF_EXCL:
            flags |= os.O_EXCL | os.O_CREAT
        return await self._open(path, flags, attrs)

    async def open56(
        self, path: bytes, desired_access: int, flags: int, attrs: asyncssh.SFTPAttrs
    ) -> object:
        read = bool(desired_access & asyncssh.ACE4_READ_DATA)
        write = bool(desired_access & (asyncssh.ACE4_WRITE_DATA | asyncssh.ACE4_APPEND_DATA))
        oflags = os.O_RDWR if read and write else (os.O_WRONLY if write else os.O_RDONLY)
        disposition = flags & asyncssh.FXF_ACCESS_DISPOSITION
        oflags |= {
            asyncssh.FXF_CREATE_NEW: os.O_CREAT | os.O_EXCL,
            asyncssh.FXF_CREATE_TRUNCATE: os.O_CREAT | os.O_TRUNC,
            asyncssh.FXF_OPEN_OR_CREATE: os.O_CREAT,
            asyncssh.FXF_TRUNCATE_EXISTING: os.O_TRUNC,
        }.get(disposition, 0)
        if desired_access & asyncssh.ACE4_APPEND_DATA or flags & asyncssh.FXF_APPEND_DATA:
            oflags |= os.O_APPEND
        return await self._open(path, oflags, attrs)

    async def _open(self, path: bytes, flags: int, attrs: asyncssh.SFTPAttrs) -> OpenFile:
        real = self._path(path)
        writable = flags & (os.O_WRONLY | os.O_RDWR) != 0
        perms = (attrs.permissions if attrs.permissions is not None else 0o644) & MODE_BITS
        cap = self._policy().max_file_bytes

        def do_open() -> int:
            # O_NONBLOCK: a FIFO must not hang the open; only regular files are served.
            fd = os.open(real, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, perms)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise Refused(f"{real} is not a regular file")
                if writable and info.st_size > cap and not flags & os.O_TRUNC:
                    raise Refused(f"{real} is larger than max_file_bytes ({cap})")
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            return fd

        fd = await asyncio.to_thread(do_open)
        handle = OpenFile(fd, real, writable, bool(flags & os.O_APPEND))
        self._files.add(handle)
        log.info("file_opened", session_id=self.session_id, path=real, write=writable)
        return handle

    @staticmethod
    def _file(file_obj: object) -> OpenFile:
        if not isinstance(file_obj, OpenFile):
            raise asyncssh.SFTPInvalidHandle("not a file of this session")
        return file_obj

    def close(self, file_obj: object) -> None:
        handle = self._file(file_obj)
        self._files.discard(handle)
        os.close(handle.fd)

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        self._check()
        handle = self._file(file_obj)
        return await asyncio.to_thread(os.pread, handle.fd, size, offset)

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        policy = self._check()
        handle = self._file(file_obj)
        if not handle.writable:
            raise Refused("the file was not opened for writing")
        cap = policy.max_file_bytes

        def do_write() -> int:
            at = os.fstat(handle.fd).st_size if handle.append else offset
            if at + len(data) > cap:
                raise asyncssh.SFTPFailure(
                    f"writing {handle.path} past {cap} bytes is refused (max_file_bytes)"
                )
            if handle.append:
                return os.write(handle.fd, data)
            return os.pwrite(handle.fd, data, offset)

        return await asyncio.to_thread(do_write)

    def fstat(self, file_obj: object) -> os.stat_result:
        return os.fstat(self._file(file_obj).fd)

    def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        handle = self._file(file_obj)
        self._setstat(handle.fd, attrs, writable=handle.writable)

    def fsync(self, file_obj: object) -> None:
        os.fsync(self._file(file_obj).fd)

    def fstatvfs(self, file_obj: object) -> os.statvfs_result:
        return os.statvfs(self._file(file_obj).fd)

    # --- attributes ----------------------------------------------------------------------

    def stat(self, path: bytes) -> os.stat_result:
        return os.stat(self._path(path))

    def lstat(self, path: bytes) -> os.stat_result:
        return os.lstat(self._path(path, follow=False))

    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self._setstat(self._path(path), attrs, writable=True)

    def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        raise Refused("changing a link's own attributes is not offered")

    def _setstat(self, target: int | str, attrs: asyncssh.SFTPAttrs, *, writable: bool) -> None:
        policy = self._check()
        if attrs.uid is not None or attrs.gid is not None or attrs.owner or attrs.group:
            raise Refused("changing a file's owner or group is not offered")
        if attrs.permissions is not None:
            if attrs.permissions & ~(MODE_BITS | stat.S_IFMT(attrs.permissions)):
                raise Refused("setuid, setgid and sticky bits are not offered")
            os.chmod(target, attrs.permissions & MODE_BITS)
        if attrs.size is not None:
            if not writable:
                raise Refused("the file was not opened for writing")
            if attrs.size > policy.max_file_bytes:
                raise Refused(f"a file may not grow past {policy.max_file_bytes} bytes")
            os.truncate(target, attrs.size)
        if attrs.atime is not None or attrs.mtime is not None:
            current = os.stat(target)
            atime = attrs.atime if attrs.atime is not None else current.st_atime
            mtime = attrs.mtime if attrs.mtime is not None else current.st_mtime
            os.utime(target, (atime, mtime))

    def statvfs(self, path: bytes) -> os.statvfs_result:
        return os.statvfs(self._path(path))

    # --- directories and names ---------------------------------------------------------------

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        real = self._path(path)
        for name in (b".", b".."):
            yield asyncssh.SFTPName(name, attrs=asyncssh.SFTPAttrs.from_local(os.stat(real)))
        with os.scandir(real) as entries:
            for entry in entries:
                attrs = asyncssh.SFTPAttrs.from_local(entry.stat(follow_symlinks=False))
                yield asyncssh.SFTPName(os.fsencode(entry.name), attrs=attrs)

    def realpath(self, path: bytes) -> bytes:
        return os.fsencode(self._path(path))

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        mode = (attrs.permissions if attrs.permissions is not None else 0o755) & MODE_BITS
        os.mkdir(self._path(path, follow=False), mode)

    def rmdir(self, path: bytes) -> None:
        real = self._path(path, follow=False)
        if real in {os.path.realpath(r) for r in self._policy().file_roots}:
            raise Refused("a file root itself cannot be removed")
        os.rmdir(real)

    def remove(self, path: bytes) -> None:
        os.remove(self._path(path, follow=False))

    def _pair(self, oldpath: bytes, newpath: bytes) -> tuple[str, str]:
        old = self._path(oldpath, follow=False)
        new = self._path(newpath, follow=False)
        roots = self._policy().file_roots
        if root_of(old, roots) != root_of(new, roots):
            raise Refused("renaming across file roots is not offered")
        return old, new

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        old, new = self._pair(oldpath, newpath)
        if os.path.lexists(new):
            raise asyncssh.SFTPFileAlreadyExists(f"{new} already exists")
        os.rename(old, new)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        old, new = self._pair(oldpath, newpath)
        os.replace(old, new)

    def readlink(self, path: bytes) -> bytes:
        real = self._path(path, follow=False)
        target = os.readlink(real)
        if root_of(os.path.realpath(real), self._policy().file_roots) is None:
            raise Refused(f"{real} points outside this machine's file roots")
        return os.fsencode(target)

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise Refused("creating symlinks is not offered")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise Refused("creating hard links is not offered")

    # --- end ---------------------------------------------------------------------------------

    def exit(self) -> None:
        for handle in list(self._files):
            with contextlib.suppress(OSError):
                os.close(handle.fd)
        self._files.clear()
        if self._attached:
            self._attached = False
            self._book.detach(self.session_id, self)
            log.info("files_closed", session_id=self.session_id)
