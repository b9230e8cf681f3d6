"""The floor of a pyfuse3 + trio filesystem, for tools/readbench: the tree of a directory
(same names, same sizes) served by a filesystem that does no work at all. Contents are
zeros; files are opened with keep_cache and FLUSH answers ENOSYS, as stowfs does, so a
warm `cat` costs exactly the OPEN and RELEASE round trips through pyfuse3 and trio.
Whatever stowfs spends above this row is its own; what this row spends above squashfuse
is the binding's.

    python -m benchlib.nullfs SOURCE_DIR MOUNTPOINT      (foreground; fusermount3 -u ends it)
"""
from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio


class NullFS(pyfuse3.Operations):
    def __init__(self, src: str):
        super().__init__()
        self.nodes = {pyfuse3.ROOT_INODE: (True, src, 0)}    # ino -> (is_dir, path, size)
        self.kids: dict[int, list[tuple[bytes, int]]] = {}
        self.next_ino = pyfuse3.ROOT_INODE + 1

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        is_dir, _, size = self.nodes[ino]
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = (stat.S_IFDIR | 0o755) if is_dir else (stat.S_IFREG | 0o644)
        a.st_size = size
        a.st_nlink = 1
        a.attr_timeout = a.entry_timeout = 3600
        return a

    def _list(self, ino: int) -> list[tuple[bytes, int]]:
        if ino not in self.kids:
            out = []
            for name in sorted(os.listdir(self.nodes[ino][1])):
                p = os.path.join(self.nodes[ino][1], name)
                st = os.stat(p)
                self.nodes[self.next_ino] = (stat.S_ISDIR(st.st_mode), p, st.st_size)
                out.append((os.fsencode(name), self.next_ino))
                self.next_ino += 1
            self.kids[ino] = out
        return self.kids[ino]

    async def getattr(self, ino, ctx=None):
        return self._attr(ino)

    async def lookup(self, parent, name, ctx=None):
        for n, ino in self._list(parent):
            if n == name:
                return self._attr(ino)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def opendir(self, ino, ctx):
        return ino

    async def readdir(self, fh, start, token):
        for i, (n, ino) in enumerate(self._list(fh)[start:], start):
            if not pyfuse3.readdir_reply(token, n, self._attr(ino), i + 1):
                break

    async def releasedir(self, fh):
        pass

    async def open(self, ino, flags, ctx):
        return pyfuse3.FileInfo(fh=ino, keep_cache=True)

    async def read(self, fh, off, size):
        return bytes(max(0, min(size, self.nodes[fh][2] - off)))

    async def flush(self, fh):
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh):
        pass


def main(src: str, mountpoint: str) -> None:
    opts = set(pyfuse3.default_options)
    opts.add("fsname=stowfs-nullfs")
    pyfuse3.init(NullFS(src), mountpoint, opts)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m benchlib.nullfs SOURCE_DIR MOUNTPOINT")
    main(sys.argv[1], sys.argv[2])
