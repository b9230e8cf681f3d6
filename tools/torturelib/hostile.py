"""Hostile inputs, through `stowfs ingest` and through a mounted inbox/.

Made from real files (truncated, mutated, re-encoded) and from documented edge shapes:
deep nesting, huge lines, binary, every common encoding, odd and over-long names, deep
trees, FIFOs, sockets and symlinks inside source trees, files that change while read.

Every regular input must be stored byte for byte or refused with a clear error:
  CLI   - refused = named in the ingest's --json "failures"; an input neither stored nor
          named is lost; a stored one that reads back other bytes is wrong;
  inbox - close() returned 0: it must read back from conversations/; an error is clear
          when its errno says why (ENAMETOOLONG, EINVAL, EFBIG, ENOSPC, EILSEQ), lost when
          it is EIO. A traceback in the daemon's log or a dead daemon is a crash.
Special files (FIFO, socket, symlinks) must not hang the ingest nor be followed out of
the tree; they are counted as tried.
"""
from __future__ import annotations

import errno
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

from .common import (CLEANUP, CORPUS, Mount, Tally, check_files, list_names, log_crashes,
                     sharegpt_records, stowfs)

CLEAR_ERRNOS = {"ENAMETOOLONG", "EINVAL", "EFBIG", "ENOSPC", "EILSEQ", "EPERM", "EACCES"}

COUNTS = {
    "quick": {"truncated": 14, "mutated": 16, "binary": 5, "encodings": 14, "names": 24,
              "nesting": 4, "huge": 1, "huge_mb": 3, "long_paths": 4, "deep": (1000,),
              "changing": 2},
    "full": {"truncated": 240, "mutated": 330, "binary": 40, "encodings": 42, "names": 60,
             "nesting": 12, "huge": 3, "huge_mb": 80, "long_paths": 12, "deep": (1000, 1500),
             "changing": 16},
}

ODD_NAMES = [
    "with space.json", "tab\there.json", "new\nline.json", "ünïcödé.json", "e\u0301-nfd.json",
    "é-nfc.json", "emoji 🤖.jsonl", "-leading-dash.json", "--help", "%2F.json", "100%.json",
    "back\\slash.json", ".hidden.json", "trailing.", "..dots.json", "a:b*c?.json",
    "quote\"'.json", "CAPS.JSON", "caps.json", "x" * 255, "€" * 85, "日本語の会話.jsonl",
    "\u202eright-to-left.json", "zero\u200bwidth.json", "~tilde", "#hash", "semi;colon",
    "$dollar", "bell\x07.json", "del\x7f.json", "esc\x1b[31m.json", "a" * 200 + ".jsonl",
]
ODD_BYTES = [b"bad\xff\xfe.json", b"latin1-caf\xe9.json", b"overlong-\xc0\xaf.json", b"surrogate-\xed\xa0\x80.json"]
ENCODINGS = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig", "latin-1", "cp1252",
             "shift_jis", "gb18030", "koi8-r", "big5", "euc-kr", "utf-7", "cp437", "mac_roman",
             "euc-jp", "iso2022_jp", "cp1251", "utf-32-be", "hz"]


def mkdirs(path) -> None:
    """os.makedirs without its recursion (a tree 1,000 directories deep)."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for p in reversed(missing):
        os.mkdir(p)


class Inputs:
    """The generated input tree: src/<category>/<rel> -> bytes (regular files)."""

    def __init__(self, root: Path):
        self.root = root
        self.files: dict[Path, bytes] = {}
        self.special: list[Path] = []

    def add(self, cat: str, rel, data: bytes) -> None:
        path = self.root / cat / rel if isinstance(rel, str) else Path(os.fsdecode(os.path.join(
            os.fsencode(str(self.root / cat)), rel)))
        mkdirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(data)
        self.files[path] = data

    def categories(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir())


def _real(files: list[Path], rng: random.Random) -> tuple[str, bytes]:
    p = rng.choice(files)
    return p.name, p.read_bytes()


def _mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not b:
            b += b"{"
        op = rng.randrange(7)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 2:
            del b[i:i + rng.randint(1, 64)]
        elif op == 3:
            b[i] = rng.choice(b'{}[]",:\\\n\x00')
        elif op == 4:            # a line repeated
            s = b.rfind(b"\n", 0, i) + 1
            e = b.find(b"\n", i)
            e = len(b) if e < 0 else e + 1
            b[e:e] = b[s:e]
        elif op == 5:
            b[i:i] = b"\xc3"     # a cut UTF-8 sequence
        else:
            b[i:i] = b'\\u' + rng.choice([b"d800", b"dfff", b"0000", b"zzzz"])
    return bytes(b)


def generate(root: Path, files: list[Path], rng: random.Random, tier: str) -> Inputs:
    c = COUNTS[tier]
    inp = Inputs(root)
    for i in range(c["truncated"]):
        name, data = _real(files, rng)
        cut = rng.randrange(len(data)) if data else 0
        if rng.random() < 0.3:           # inside a multi-byte character, when there is one
            mb = [j for j in range(len(data)) if data[j] >= 0xC0][:500]
            if mb:
                cut = rng.choice(mb) + 1
        inp.add("truncated", f"{i}-{name}", data[:cut])
    for i in range(c["mutated"]):
        name, data = _real(files, rng)
        inp.add("mutated", f"{i}-{name}", _mutate(data, rng))
    for i in range(c["binary"]):
        kind = i % 5
        if kind == 0:
            data = rng.randbytes(rng.choice([1, 100, 4096, 70000, 1 << 20]))
        elif kind == 1:
            data = bytes(rng.choice([1, 65536, 1 << 20]))
        elif kind == 2:
            data = zlib.compress(_real(files, rng)[1])
        elif kind == 3:
            data = b"\xff" * rng.randint(1, 100000)
        else:
            data = _real(files, rng)[1][:2000] + rng.randbytes(3000) + b"\n" + _real(files, rng)[1][:2000]
        inp.add("binary", f"{i}.bin", data)
    texts = [json.loads(r) for r in sharegpt_records(8, rng)]
    for i in range(c["encodings"]):
        enc = ENCODINGS[i % len(ENCODINGS)]
        text = json.dumps(texts[i % len(texts)], ensure_ascii=False, indent=2)
        mode = (i // len(ENCODINGS)) % 3
        if mode == 1:
            text = text.replace("\n", "\r\n")
        elif mode == 2:
            text = text.replace("\n", "\r")
        inp.add("encodings", f"{i}-{enc}.json", text.encode(enc, errors="replace"))
    inp.add("encodings", "mixed-lines.jsonl", b"".join(
        (json.dumps(t, ensure_ascii=False) + "\n").encode(e, errors="replace")
        for t, e in zip(texts, ["utf-8", "latin-1", "utf-16-le", "shift_jis", "utf-8", "cp1252", "utf-8", "gb18030"])))
    inp.add("encodings", "cesu-surrogates.json", '{"content": "'.encode() + b"\xed\xa0\xbd\xed\xb8\x80" * 30 + b'"}')
    small = [p for p in files if p.stat().st_size < 20000]
    for i, name in enumerate(ODD_NAMES[:c["names"]]):
        inp.add("names", name, rng.choice(small).read_bytes())
    for i, raw in enumerate(ODD_BYTES):
        inp.add("names", raw, rng.choice(small).read_bytes())
    inp.add("names", "empty.json", b"")
    inp.add("names", "one-byte", b"{")
    inp.add("names", "newline-only", b"\n")
    for i in range(c["nesting"]):
        n = [1000, 10000, 100000, 400000][i % 4]
        kind = i // 4 % 3
        if kind == 0:
            data = b"[" * n + b"]" * n
        elif kind == 1:
            data = b'{"a":' * n + b"1" + b"}" * n
        else:
            conv = texts[i % len(texts)]
            data = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}).encode()
            data = data.replace(b'"x"', b'[' * n + json.dumps(conv).encode() + b']' * n)
        inp.add("nesting", f"{i}-depth{n}.json", data)
    line = _real(files, rng)[1][:4000]
    for i in range(c["huge"]):
        mb = c["huge_mb"] if i == 0 else max(1, c["huge_mb"] // 8)
        body = (line.replace(b"\n", b" ") * ((mb << 20) // max(1, len(line)) + 1))[:mb << 20]
        if i % 2 == 0:     # one JSON string of mb MiB on a single line, between real lines
            data = (b'{"type":"user","message":{"role":"user","content":"'
                    + body.replace(b"\\", b"/").replace(b'"', b"'") + b'"}}\n')
            data = line + b"\n" + data + line + b"\n"
        else:
            data = body      # no newline at all
        inp.add("huge", f"{i}-{mb}MiB-line.jsonl", data)
    for i in range(c["long_paths"]):
        total = [300, 600, 1000, 2000, 3000, 3900][i % 6]
        comp = 200 if i % 2 == 0 else 50
        parts, size = [], 0
        while size + comp + 1 < total:
            parts.append(("p%d" % len(parts)).ljust(comp, "x"))
            size += comp + 1
        inp.add("long_paths", "/".join(parts) + f"/{i}.json", rng.choice(small).read_bytes())
    for depth in c["deep"]:
        inp.add(f"deep{depth}", "/".join(["d"] * depth) + "/leaf.json", rng.choice(small).read_bytes())
        inp.add(f"deep{depth}", "top.json", rng.choice(small).read_bytes())
    # special files inside a source tree, next to regular ones
    sp = root / "special"
    sp.mkdir()
    inp.add("special", "regular.json", rng.choice(small).read_bytes())
    os.mkfifo(sp / "fifo")
    os.symlink("regular.json", sp / "link-inside")
    os.symlink("/etc/passwd", sp / "link-outside")
    os.symlink("missing-target", sp / "dangling")
    os.symlink("..", sp / "loop")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sp / "socket"))
    s.close()
    inp.special += [sp / n for n in ("fifo", "link-inside", "link-outside", "dangling", "loop", "socket")]
    return inp


def _name(inp: Inputs, path: Path) -> str:
    return os.path.relpath(path, inp.root).replace(os.sep, "/")


# ====================================================================== CLI
def via_cli(work: Path, inp: Inputs, tally: Tally) -> None:
    store = work / "cli-store"
    refused: dict[str, str] = {}
    died: set[str] = set()
    for cat in inp.categories():
        r = stowfs("ingest", store, inp.root / cat, "--json", timeout=600)
        crash = r.crash()
        if crash:
            tally.add("crashed", f"ingest of {cat}/: {crash}")
            died.add(cat)
            continue
        try:
            summary = json.loads(r.out)
        except ValueError:
            if r.rc == 2:      # refused as a whole, with one line
                summary = {"failures": [{"path": str(p), "error": r.text.strip()}
                                        for p in inp.files if _name(inp, p).split("/")[0] == cat]}
            else:
                tally.add("failed", f"ingest of {cat}/: exit {r.rc}, no JSON summary: {r.text[-200:]}")
                continue
        for f in summary.get("failures", []):
            refused[_name(inp, Path(f["path"]))] = f["error"]
    names, lr = list_names(store)
    if names is None:
        tally.add("crashed" if lr.crash() else "lost", f"ls after the hostile ingests: {lr.crash() or lr.text}")
        return
    listed = set(names)
    expected = {}
    for path, data in inp.files.items():
        tally.tried += 1
        nm = _name(inp, path)
        if nm in listed:
            expected[nm] = data
        elif nm in refused:
            continue
        else:
            cat = nm.split("/")[0]
            why = "its ingest died" if cat in died else "neither stored nor reported"
            tally.add("lost", f"CLI: {nm[:120]!r}: {why}")
    tally.tried += len(inp.special)
    for nm in listed:
        if nm.startswith("special/") and nm != "special/regular.json":
            tally.add("failed", f"CLI: special file stored as {nm!r} (followed a symlink or read a FIFO)")
    check_files(store, expected, tally, what="CLI: ", missing_is="lost")
    v = stowfs("verify", store)
    if v.crash():
        tally.add("crashed", v.crash())
    elif v.rc != 0:
        tally.add("failed", f"verify after hostile inputs: exit {v.rc}: {v.out.decode()[-300:]}")
    examples = sorted(set(e[:70] for e in refused.values()))[:4]
    tally.note(f"CLI: {len(inp.files)} inputs + {len(inp.special)} special files; {len(expected)} stored and "
               f"checked, {len(refused)} refused with a message (e.g. {'; '.join(examples)})")


# ====================================================================== inbox
INBOX_WRITER = r"""
import os, sys, errno
dst = sys.argv[1]
for line in sys.stdin:
    src, rel = (bytes.fromhex(x) for x in line.split())
    path = os.path.join(os.fsencode(dst), rel)
    try:
        d, missing = os.path.dirname(path), []
        while not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            os.mkdir(d)
        with open(src, "rb") as f:
            data = f.read()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for i in range(0, len(data), 1 << 17):
                os.write(fd, data[i:i + (1 << 17)])
        finally:
            os.close(fd)
        print("ok", rel.hex(), flush=True)
    except OSError as e:
        print("err", rel.hex(), errno.errorcode.get(e.errno, str(e.errno)), flush=True)
"""


def via_inbox(work: Path, inp: Inputs, tally: Tally) -> None:
    store, mp = work / "inbox-store", work / "mnt-hostile"
    m = Mount(store, mp)
    r = m.start()
    if r.rc != 0:
        tally.add("crashed", f"mount: {r.crash() or r.text}")
        return
    try:
        rels = {os.fsencode(_name(inp, p)): p for p in inp.files}
        w = CLEANUP.proc(subprocess.Popen([sys.executable, "-c", INBOX_WRITER, str(mp / "inbox")],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        try:
            out, _ = w.communicate("".join(f"{os.fsencode(str(p)).hex()} {rel.hex()}\n"
                                           for rel, p in rels.items()), timeout=900)
        except subprocess.TimeoutExpired:
            w.kill()
            out, _ = w.communicate()
            tally.add("crashed", "inbox: the writer hung")
        CLEANUP.done(w)
        results = {}
        for line in out.splitlines():
            parts = line.split()
            results[bytes.fromhex(parts[1])] = "ok" if parts[0] == "ok" else parts[2]
        stored = refused = 0
        errnos: dict[str, int] = {}
        for rel, p in rels.items():
            tally.tried += 1
            shown = os.fsdecode(rel)[:100]
            res = results.get(rel)
            if res is None:
                tally.add("lost", f"inbox: {shown!r}: the writer never got to it")
            elif res == "ok":
                try:
                    with open(os.path.join(os.fsencode(str(mp / "conversations")), rel), "rb") as f:
                        got = f.read()
                except OSError as e:
                    tally.add("lost", f"inbox: {shown!r}: close() returned 0, conversations/ says "
                              f"{errno.errorcode.get(e.errno)}")
                    continue
                if got != inp.files[p]:
                    tally.add("wrong", f"inbox: {shown!r}: {len(got)} bytes read back, {len(inp.files[p])} written")
                else:
                    stored += 1
            else:
                errnos[res] = errnos.get(res, 0) + 1
                if res in CLEAR_ERRNOS:
                    refused += 1
                else:
                    tally.add("lost", f"inbox: {shown!r} ({len(rel)}-byte path): refused with {res}, "
                              "which says nothing of why")
        # special files through the mount: mkfifo and symlink in inbox/ must fail cleanly
        for what, fn in (("mkfifo", lambda: os.mkfifo(mp / "inbox" / "fifo")),
                         ("symlink", lambda: os.symlink("/etc/passwd", mp / "inbox" / "link"))):
            tally.tried += 1
            try:
                fn()
            except OSError as e:
                if e.errno == errno.EIO:
                    tally.add("failed", f"inbox: {what} gave EIO")
        if not m.alive():
            tally.add("crashed", "inbox: the daemon died")
        tally.note(f"inbox: {len(rels)} inputs; {stored} stored and read back byte for byte, {refused} refused "
                   f"with a clear errno; errnos seen: {errnos or 'none'}")
    finally:
        u = m.umount()
        if u.rc != 0:
            tally.add("failed", f"umount: {u.text.strip()}")
    for c in log_crashes(m.log_since(0))[:5]:
        tally.add("crashed", f"daemon log: {c}")


# ====================================================================== changing while read
def changing(work: Path, tally: Tally, rng: random.Random, n: int) -> None:
    """A session file appended to (or cut short) while `stowfs ingest` reads it: what is
    stored must be a prefix of what the file held, at least what it held at the start,
    and read back as stored (cat exit 0, verify clean)."""
    big = CORPUS / "claude-code-spotter" / "transcripts" / "4d5611e5-241a-462a-8d15-5122611a9569.jsonl"
    if not big.exists():
        big = max((p for p in CORPUS.rglob("*.jsonl")), key=lambda p: p.stat().st_size)
    full = big.read_bytes()
    store = work / "changing-store"
    for i in range(n):
        grow = i % 2 == 0
        src = work / f"changing-{i}.jsonl"
        start_len = rng.randrange(len(full) // 4, len(full) // 2) if grow else len(full)
        src.write_bytes(full[:start_len])
        stop = threading.Event()

        def change():
            pos = start_len
            with open(src, "r+b") as f:
                while not stop.is_set():
                    if grow and pos < len(full):
                        f.seek(pos)
                        step = rng.randint(1000, 200000)
                        f.write(full[pos:pos + step])
                        f.flush()
                        pos += step
                    elif not grow:
                        size = os.fstat(f.fileno()).st_size
                        f.truncate(max(0, size - rng.randint(1000, 200000)))
                    time.sleep(0.002)
        t = threading.Thread(target=change, daemon=True)
        t.start()
        r = stowfs("ingest", store, src, "-q", "--prefix", f"c{i}")
        stop.set()
        t.join()
        tally.tried += 1
        if r.crash():
            tally.add("crashed", f"changing file: {r.crash()}")
            continue
        if r.rc != 0:
            continue                 # refused with a message: acceptable for a file in flux
        got = stowfs("cat", store, f"c{i}/{src.name}")
        if got.crash():
            tally.add("crashed", got.crash())
        elif got.rc != 0:
            tally.add("lost", f"changing file {i}: ingest exit 0 but cat fails: {got.text.strip()}")
        elif got.out != full[:len(got.out)] or (grow and len(got.out) < start_len):
            tally.add("wrong", f"changing file {i} ({'growing' if grow else 'shrinking'}): stored {len(got.out)} "
                      f"bytes that are not a prefix of what the file held (started with {start_len})")
    v = stowfs("verify", store)
    if v.crash():
        tally.add("crashed", v.crash())
    elif v.rc not in (0,):
        tally.add("failed", f"verify after changing files: exit {v.rc}: {v.out.decode()[-200:]}")


def run(work: Path, quick: bool, rng: random.Random, tally: Tally, files: list[Path], scale: dict) -> None:
    inp = generate(work / "src", files, rng, scale["hostile"])
    via_cli(work, inp, tally)
    via_inbox(work, inp, tally)
    changing(work, tally, rng, COUNTS[scale["hostile"]]["changing"])
