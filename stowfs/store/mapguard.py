"""Reading a damaged store without faulting.

LMDB hands out keys and values as pointers into its memory map, trusting the sizes it
reads from the file. One flipped byte in a node's size makes a value reach past the end
of the data file; the map goes on there (it is as large as the map size, not the file),
and the first touch of it is SIGBUS. The lmdb binding touches every page of a value as
it fetches it (to take page faults without holding the GIL), so this happens inside the
library, before any Python code sees the value, and it kills the process: `cat` of every
file, or the mount daemon.

The guard is a SIGBUS handler (`Span.guard`): a fault inside a store's map, past the end
of its file, maps zero pages over the rest of the map (so the library's touch reads zeros
instead of dying) and counts the fault; the transaction that was running then fails with
`Corrupt` (lmdbenv), and the file mapping is put back as LMDB made it (`Span.settle`). A
value that reaches past the file always faults on the way (the binding touches every
page of it), so the count is what tells. The map is kept at least 4 GiB + 1 MiB past the
file's end (lmdbenv), as far as a 32-bit node size can reach, so a damaged size never
lands outside the map. A fault anywhere else goes to the handler that was there before
(the default: the process dies, as it would have). A damaged size that stays inside the
file reads other bytes of it, which the frames' hashes catch.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading


def _mapping(dev: int, ino: int) -> tuple[int, int] | None:
    """(start, end) of this process's map of the file (dev, ino) from offset 0: the run
    of adjacent mappings of it with consecutive offsets."""
    major, minor = os.major(dev), os.minor(dev)
    start = end = None
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 5:
                continue
            lo, _, hi = parts[0].partition(b"-")
            lo, hi = int(lo, 16), int(hi, 16)
            ma, _, mi = parts[3].partition(b":")
            ours = int(parts[4]) == ino and int(ma, 16) == major and int(mi, 16) == minor
            if start is None:
                if ours and int(parts[2], 16) == 0:
                    start, end = lo, hi
            elif ours and lo == end and int(parts[2], 16) == end - start:
                end = hi
            else:
                break
    return None if start is None else (start, end)


# ------------------------------------------------------------------ the fault handler
_PAGE = os.sysconf("SC_PAGE_SIZE")
REACH = (1 << 32) + (1 << 20)     # how far past the file a damaged key/value size can reach
_PROT_READ, _MAP_SHARED, _MAP_PRIVATE, _MAP_FIXED = 1, 0x01, 0x02, 0x10
_MAP_ANONYMOUS, _MAP_NORESERVE, _MADV_RANDOM, _MADV_DONTNEED = 0x20, 0x4000, 1, 4
_SA_SIGINFO = 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value


class _SigInfo(ctypes.Structure):
    _fields_ = [("si_signo", ctypes.c_int), ("si_errno", ctypes.c_int), ("si_code", ctypes.c_int),
                ("_pad", ctypes.c_int), ("si_addr", ctypes.c_void_p)]


class _SigAction(ctypes.Structure):          # glibc's struct sigaction (Linux, 64-bit)
    _fields_ = [("sa_sigaction", ctypes.c_void_p), ("sa_mask", ctypes.c_ulong * 16),
                ("sa_flags", ctypes.c_int), ("sa_restorer", ctypes.c_void_p)]


_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(_SigInfo), ctypes.c_void_p)
_libc.sigaction.argtypes = [ctypes.c_int, ctypes.POINTER(_SigAction), ctypes.POINTER(_SigAction)]
_spans: list["Span"] = []
_installed: list = []                         # [callback, previous action] once installed
_install_lock = threading.Lock()


def _give_up() -> None:
    """Put back the handler that was there before: the fault happens again and goes to it."""
    if _installed:
        _libc.sigaction(signal.SIGBUS, ctypes.byref(_installed[1]), None)


def _on_sigbus(signo, info, context) -> None:
    try:
        addr = info.contents.si_addr or 0
        for span in list(_spans):
            if span.zero_past(addr):
                return
    except BaseException:
        pass
    _give_up()


def _install() -> None:
    with _install_lock:
        if _installed:
            return
        cb = _HANDLER(_on_sigbus)
        act, old = _SigAction(), _SigAction()
        act.sa_sigaction = ctypes.cast(cb, ctypes.c_void_p).value
        act.sa_flags = _SA_SIGINFO
        if _libc.sigaction(signal.SIGBUS, ctypes.byref(act), ctypes.byref(old)) != 0:
            return                            # no guard: a damaged size kills, as before
        _installed[:] = [cb, old]


class Span:
    """Where this process maps a store's data file, and the guard of the part of that
    map past the end of the file."""

    def __init__(self, data_file: str):
        self.data_file = data_file
        self.lo = self.hi = self.map_hi = 0
        self.fd = -1
        self.ino = None
        self.faults = 0
        self._zeroed: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def guard(self) -> None:
        """Start guarding this store's map (after the environment is open)."""
        _install()
        self.refresh()
        if self not in _spans:
            _spans.append(self)

    def close(self) -> None:
        if self in _spans:
            _spans.remove(self)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def refresh(self) -> None:
        try:
            st = os.stat(self.data_file)
        except OSError:
            self.lo = self.hi = self.map_hi = 0
            return
        if st.st_ino != self.ino:             # a new file (a compacting copy replaced it)
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            try:
                self.fd = os.open(self.data_file, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
            self.ino = st.st_ino
        m = _mapping(st.st_dev, st.st_ino)
        if m is None:
            self.lo = self.hi = self.map_hi = 0
        else:
            self.lo, self.map_hi = m
            self.hi = self.lo + st.st_size

    def drop_resident(self) -> None:
        """Take this process's resident pages of the file out of its page tables
        (MADV_DONTNEED). The map is shared and read-only, so nothing is lost: the pages
        stay in the page cache and a later touch maps them again (a minor fault). The
        caller makes sure the map does not move meanwhile (lmdbenv.Env.drop_mapped)."""
        self.refresh()
        with self._lock:
            if self._zeroed or self.hi <= self.lo:
                return
            end = min(self.map_hi, self.hi + (-self.hi) % _PAGE)
            _libc.madvise(self.lo, end - self.lo, _MADV_DONTNEED)

    def zero_past(self, addr: int) -> bool:
        """In the SIGBUS handler: a fault in this map? Map zero pages from the faulting
        page to the end of the map (past the end of the file; one page when the fault is
        inside it, an I/O error) and count it."""
        if not (self.lo <= addr < self.map_hi):
            return False
        page = addr - addr % _PAGE
        try:
            eof = self.lo + os.fstat(self.fd).st_size
        except OSError:
            eof = self.lo
        end = self.map_hi if page >= eof else page + _PAGE
        got = _libc.mmap(page, end - page, _PROT_READ, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE, -1, 0)
        if got in (None, _MAP_FAILED):
            return False
        self._zeroed.append((page, end))
        self.faults += 1
        return True

    def settle(self) -> None:
        """Put the file mapping back where zero pages were mapped (as LMDB maps it: shared,
        read-only; past the end of the file a touch is SIGBUS again). Called after every
        transaction: without a fault it only looks at a list."""
        if not self._zeroed:
            return
        with self._lock:
            while self._zeroed:
                page, end = self._zeroed.pop()
                if self.fd < 0 or _libc.mmap(page, end - page, _PROT_READ, _MAP_SHARED | _MAP_FIXED,
                                             self.fd, page - self.lo) in (None, _MAP_FAILED):
                    raise OSError(ctypes.get_errno(), "cannot restore the store's map")
                _libc.madvise(page, end - page, _MADV_RANDOM)
