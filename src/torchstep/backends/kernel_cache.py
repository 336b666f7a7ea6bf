"""The on-disk cache of compiled kernels, which trusts nothing it finds.

Loading a shared library runs its code, so a cached ``.so`` is loaded only when

* the cache directory is private: created with mode 0700, owned by the current user and not
  writable by group or others (a directory that is not gets one warning, and this process uses a
  fresh private temporary directory instead);
* the file is a regular file owned by the current user, not group/world-writable, and its
  SHA-256 equals the hash recorded beside it (``<name>.sha256``) when it was built -- so a
  truncated, corrupted or planted file is never loaded (a truncated one would kill the process
  with SIGBUS);
* it is loaded from the very file descriptor whose bytes were hashed (``/proc/self/fd/N`` on
  Linux; the descriptor then stays open), so it cannot be swapped between the check and the load.

Writes are atomic (a temporary file, then ``os.replace``), so concurrent processes never see half
a file. Location: ``$TORCHSTEP_CACHE``, else ``$XDG_CACHE_HOME/torchstep``, else
``~/.cache/torchstep``; kernels live in its ``kernels`` folder.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path

_private: dict = {"dir": None, "warned": False}  # this process's private fallback cache, once made
# descriptors of loaded libraries stay open: the dynamic loader knows a library by the name it was
# opened under, and a closed descriptor's number (so its /proc/self/fd name) would be reused
_kept_open: list[int] = []


def default_root() -> Path:
    """Where the cache lives (see the module docstring)."""
    explicit = os.environ.get("TORCHSTEP_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path(os.path.expanduser("~")) / ".cache"
    return base / "torchstep"


def _unsafe(st: os.stat_result, is_dir: bool) -> str | None:
    """Why a file or directory with this status must not be trusted, or None."""
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"owned by uid {st.st_uid}, not the current user ({os.getuid()})"
    if is_dir and not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if not is_dir and not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _private_temp() -> Path:
    if _private["dir"] is None:
        _private["dir"] = Path(tempfile.mkdtemp(prefix="torchstep-kernels-"))  # mode 0700
    return _private["dir"]


class KernelCache:
    """A verified kernel directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def open(cls) -> "KernelCache":
        """The cache at :func:`default_root`, made private; a private temporary directory (with
        one warning) when that one cannot be made or is not safe."""
        root = default_root() / "kernels"
        try:
            root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            root.mkdir(mode=0o700, exist_ok=True)
            problem = _unsafe(os.lstat(root), is_dir=True)
            if problem and "writable" in problem:  # ours, but too open: close it
                os.chmod(root, 0o700)
                problem = _unsafe(os.lstat(root), is_dir=True)
        except OSError as exc:
            problem = f"cannot be created ({exc.strerror or exc})"
        if problem is None and _private["dir"] is None:
            return cls(root)
        return cls.private(f"{root} is {problem}" if problem else "")

    @classmethod
    def private(cls, why: str) -> "KernelCache":
        """This process's private temporary cache (mode 0700), with one warning saying ``why``."""
        fallback = _private_temp()
        if why and not _private["warned"]:
            _private["warned"] = True
            warnings.warn(f"torchstep kernel cache {why}; using the private directory {fallback} for this "
                          "process instead", stacklevel=3)
        return cls(fallback)

    def load(self, name: str) -> ctypes.CDLL | None:
        """The library ``name`` if it is present and passes every check; None otherwise."""
        path, digest_path = self.root / f"{name}.so", self.root / f"{name}.sha256"
        try:
            recorded = self._read_small(digest_path)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            if _unsafe(os.fstat(fd), is_dir=False):
                return None
            h = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                h.update(chunk)
            if h.hexdigest() != recorded:
                return None
            by_fd = sys.platform.startswith("linux") and os.path.exists(f"/proc/self/fd/{fd}")
            try:
                lib = ctypes.CDLL(f"/proc/self/fd/{fd}" if by_fd else str(path))
            except OSError:
                return None
            if by_fd:
                _kept_open.append(fd)
                fd = -1
            return lib
        finally:
            if fd >= 0:
                os.close(fd)

    def store(self, name: str, built: Path) -> None:
        """Install the library at ``built`` (in this cache's directory) under ``name``, with its hash."""
        digest = hashlib.sha256(built.read_bytes()).hexdigest()
        os.chmod(built, 0o700)
        os.replace(built, self.root / f"{name}.so")
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".hash-")
        with os.fdopen(fd, "w") as f:
            f.write(digest)
        os.replace(tmp, self.root / f"{name}.sha256")

    @staticmethod
    def _read_small(path: Path) -> str:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            if _unsafe(os.fstat(fd), is_dir=False):
                raise OSError("untrusted hash file")
            return os.read(fd, 128).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
