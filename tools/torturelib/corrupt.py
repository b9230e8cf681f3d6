"""Single-byte flips and zeroed pages in the store's LMDB file, at random offsets and
aimed at every named database the file holds (found by walking its pages, lmdbpages.py).

Each trial starts from a pristine copy of the store, damages one place, then reads every
file with `stowfs cat`, lists with `stowfs ls` and runs `stowfs verify`; a targeted trial
then mounts the damaged store and reads every file through it with `cat`; when something
was found, a writable open (`stowfs ingest` of an empty directory) and `verify` again:
  wrong   - a cat that exited 0 with bytes other than the original's;
  crashed - a traceback, an abort or other signal, or a hang, in any of them;
  lost    - a file that no longer reads (or is no longer listed) while verify does not
            report it: verify exits 0, or its output does not name the file; or verify
            says OK after the writable open of a store it found damaged.
Targeted trials pick a database in turn, a page of it (leaf, branch or overflow), and
flip a byte of one entry's key, of its value, of one field of its value when that is a
frame (FIELD_MODE), anywhere in the page, or zero the page.
A database that holds several tables as key ranges (stowfs's `store`, each key led by its
table's byte) is aimed at table by table: its leaf and overflow pages by the leading
byte of their keys, its branch pages as the database itself.
"Metadata" is every target but the one holding most of the file's pages (the content).
"""
from __future__ import annotations

import random
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from .common import Mount, Tally, check_files, is_mounted, list_names, log_crashes, stowfs
from .lmdbpages import by_lead_byte, walk_checked

# A frame (the value of stowfs's blocks, groups, names and anchors: stowfs/store/FORMAT.md)
# is a few header bytes, an `extra` of up to a few hundred bytes and a payload of up to
# MBs: a flip at a random offset of the value all but never lands in the header or in
# `extra`. A flip of a block fragment's range gap once shifted files onto other bytes
# with success, which 1,000 such flips never found. So a flip aimed at a frame's fields
# picks the field first, each as often as the others, then a byte in it.
FRAME_TAGS = {0x20: "block", 0x21: "record group", 0x22: "name page", 0x23: "anchor run"}
PAYLOAD_HEAD = 64        # the payload's first bytes: its zstd frame header
FIELD_SHARE = 0.3        # of targeted flips in a table of frames


def _uvarint(data, i: int, end: int) -> tuple[int, int]:
    """(value, index after it) of the LEB128 at data[i]; ValueError past end."""
    x = shift = 0
    while i < end:
        b = data[i]
        x |= (b & 0x7F) << shift
        shift += 7
        i += 1
        if b < 0x80:
            return x, i
    raise ValueError("truncated uvarint")


def frame_fields(data, start: int, n: int) -> dict[str, tuple[int, int]]:
    """The fields of the frame at data[start:start+n] as {name: (file offset, length)},
    {} when it is not one. A block's `extra` is split into its ranges and its piece
    hashes."""
    end = start + n
    if n < 12 + 16 or data[start] not in FRAME_TAGS:
        return {}
    try:
        f = {"tag": (start, 1), "key": (start + 1, 8), "codec": (start + 9, 1), "level": (start + 10, 1)}
        _, i = _uvarint(data, start + 11, end)
        f["raw_len"] = (start + 11, i - start - 11)
        extra_len, j = _uvarint(data, i, end)
        f["extra_len"] = (i, j - i)
        if j + extra_len + 16 > end:
            return {}
        if extra_len:
            if data[start] == 0x20:
                count, k = _uvarint(data, j, j + extra_len)
                for _ in range(2 * count):
                    _, k = _uvarint(data, k, j + extra_len)
                f["ranges"] = (j, k - j)
                if j + extra_len > k:
                    f["piece hashes"] = (k, j + extra_len - k)
            else:
                f["extra"] = (j, extra_len)
        h = j + extra_len
        f["hash"] = (h, 16)
        if end > h + 16:
            f["payload"] = (h + 16, min(PAYLOAD_HEAD, end - h - 16))
        return f
    except ValueError:
        return {}


def _data_file(store: Path) -> Path:
    found = sorted(store.rglob("data.mdb"))
    if len(found) != 1:
        raise RuntimeError(f"expected one LMDB data.mdb under {store}, found {len(found)}")
    return found[0]


def build(work: Path, files: list[Path], compact: bool) -> tuple[Path, dict[str, bytes]]:
    store = work / ("pristine-compacted" if compact else "pristine")
    r = stowfs("ingest", store, *files, "--prefix", "c", "-q")
    if r.rc != 0:
        raise RuntimeError(f"building the corruption store failed: {r.text.strip()}")
    if compact:
        r = stowfs("compact", store, "--json")
        if r.rc != 0:
            raise RuntimeError(f"compact failed: {r.text.strip()}")
    names, _ = list_names(store)
    expected = {f"c/{p.name}": p.read_bytes() for p in files}
    assert names is not None and sorted(names) == sorted(expected), "store lists other names than ingested"
    return store, expected


class Target:
    def __init__(self, store: Path, rng: random.Random):
        self.rng = rng
        self.lay = walk_checked(str(_data_file(store)))
        self.size = len(self.lay.data)
        self.psize = self.lay.psize
        dbs = {n: d for n, d in self.lay.databases.items() if d.pages}
        if "store" in dbs:                  # stowfs's tables, one key range each
            whole = dbs.pop("store")
            dbs.update({p.name: p for p in by_lead_byte(whole).values()})
            branches = [p for p in whole.pages if p.kind == "branch"]
            if branches:
                dbs["store"] = type(whole)("store", whole.flags, whole.entries, branches)
        self.targets = dbs
        self.content = max(dbs, key=lambda n: dbs[n].data_bytes())
        self.dbs = sorted(dbs)
        self._frames: dict[str, list] = {}

    def random_flip(self) -> tuple[str, list[tuple[int, bytes]]]:
        off = self.rng.randrange(self.size)
        return f"random flip at {off}", [(off, bytes([self.lay.data[off] ^ self._mask()]))]

    def random_zero_page(self) -> tuple[str, list[tuple[int, bytes]]]:
        pg = self.rng.randrange(self.size // self.psize)
        return f"random zeroed page {pg}", [(pg * self.psize, bytes(self.psize))]

    def _framed(self, db: str) -> list[tuple[int, dict]]:
        """(file offset, frame_fields) of every entry of db whose value is a frame (a
        block's sits in overflow pages: its leaf node says where)."""
        got = self._frames.get(db)
        if got is None:
            got = []
            for page in self.targets[db].pages:
                for node in page.nodes if page.kind == "leaf" else ():
                    start, n = node.big if node.overflow >= 0 and node.big[1] else node.value
                    fields = frame_fields(self.lay.data, start, n)
                    if fields:
                        got.append((start, fields))
            self._frames[db] = got
        return got

    def _mask(self) -> int:
        return 1 << self.rng.randrange(8) if self.rng.random() < 0.7 else self.rng.randrange(1, 256)

    def targeted(self, db: str) -> tuple[str, list[tuple[int, bytes]]]:
        d = self.targets[db]
        page = self.rng.choice(d.pages)
        base = page.pgno * self.psize
        framed = self._framed(db)
        if framed and self.rng.random() < FIELD_SHARE:
            start, fields = self.rng.choice(framed)
            name = self.rng.choice(sorted(fields))
            a, k = fields[name]
            off = a + self.rng.randrange(k)
            return (f"{db}: flip in a {FRAME_TAGS[self.lay.data[start]]} frame's {name} at {off}",
                    [(off, bytes([self.lay.data[off] ^ self._mask()]))])
        mode = self.rng.choice(["key", "value", "page", "zero"] if page.nodes else ["page", "zero"])
        if page.kind == "overflow" and mode in ("key", "value"):
            mode = "page"
        if mode == "zero":
            return f"{db}: zeroed {page.kind} page {page.pgno}", [(base, bytes(self.psize))]
        if mode == "page":
            off = base + self.rng.randrange(self.psize * page.npages)
        else:
            node = self.rng.choice(page.nodes)
            start, n = node.key if mode == "key" else (node.big if node.overflow >= 0 and node.big[1] else node.value)
            if n == 0:
                start, n = node.key
            if n == 0:
                off = base + self.rng.randrange(self.psize)
                mode = "page"
            else:
                off = start + self.rng.randrange(n)
        return (f"{db}: flip in a {page.kind} page's {mode} at {off}",
                [(off, bytes([self.lay.data[off] ^ self._mask()]))])


def through_mount(trial_dir: Path, expected: dict[str, bytes], tally: Tally, label: str,
                  reported, outcomes: Counter) -> None:
    """The damaged store read through a real mount with `cat`: never other bytes with
    success; a file that does not read must be one verify reported (reported(name)); a
    store that does not mount must be one verify found damaged; the daemon's log holds no
    traceback. The CLI alone never saw a writable open make an empty store over a
    damaged one (the mount's open is writable)."""
    mp = trial_dir.parent / "mp"
    m = Mount(trial_dir, mp, log=trial_dir.parent / "damaged.mount.log")
    try:
        m.log.unlink()
    except FileNotFoundError:
        pass
    r = m.start()
    if r.crash():
        tally.add("crashed", f"{label}: mount: {r.crash()}")
        return
    if r.rc != 0:
        if reported(None):
            outcomes["mount: the store does not open, verify said so"] += 1
        else:
            tally.add("lost", f"{label}: the mount fails ({r.text.strip()[:200]}) while verify says OK")
            outcomes["mount: the store does not open, verify said OK"] += 1
        return
    failed = []
    try:
        for name, data in expected.items():
            try:
                c = subprocess.run(["cat", "--", str(mp / "conversations" / name)],
                                   capture_output=True, timeout=120)
            except subprocess.TimeoutExpired:
                tally.add("crashed", f"{label}: mount: cat {name} hung")
                return
            if c.returncode == 0 and c.stdout != data:
                tally.add("wrong", f"{label}: mount: {name}: exit 0 with {len(c.stdout)} bytes that "
                          f"differ from the original's {len(data)}")
            elif c.returncode != 0:
                failed.append(name)
    finally:
        m.umount()
        if is_mounted(str(mp)):
            tally.add("crashed", f"{label}: the damaged store's mount did not unmount")
    for problem in log_crashes(m.log.read_text(errors="replace") if m.log.exists() else ""):
        tally.add("crashed", f"{label}: mount: {problem}")
    unreported = [n for n in failed if not reported(n)]
    if unreported:
        tally.add("lost", f"{label}: mount: {unreported[0]} does not read and verify did not report it "
                  f"({len(unreported)} of {len(failed)})", n=len(unreported))
        outcomes["mount: a file fails that verify did not report"] += 1
    elif failed:
        outcomes["mount: files fail, verify reported them"] += 1


def trial(pristine: Path, trial_dir: Path, expected: dict[str, bytes], damage, tally: Tally,
          label: str, outcomes: Counter, mount: bool = False) -> str:
    """One damaged copy, checked; returns its outcome ("ok" when nothing went wrong)."""
    if trial_dir.exists():
        shutil.rmtree(trial_dir)
    shutil.copytree(pristine, trial_dir)
    data_file = _data_file(trial_dir)
    with open(data_file, "r+b") as f:
        for off, b in damage:
            f.seek(off)
            f.write(b)
    tally.tried += 1
    affected: dict[str, str] = {}
    crashed_before = tally.crashed
    names, lr = list_names(trial_dir)
    if lr.crash():
        tally.add("crashed", f"{label}: {lr.crash()}")
    elif names is not None:
        for n in expected:
            if n not in names:
                affected[n] = "not listed"
    affected.update(check_files(trial_dir, expected, tally, what=f"{label}: ", missing_is=None))
    v = stowfs("verify", trial_dir, timeout=300)
    vtext = v.out.decode("utf-8", "replace") + v.text
    if v.crash():
        tally.add("crashed", f"{label}: verify: {v.crash()}")
        outcomes["verify crashed"] += 1
    elif affected and names is None and v.rc != 0:
        # the store does not open, so no name can be listed: a loud verify is all there is
        outcomes["store does not open; verify fails loudly"] += 1
    elif affected:
        unreported = [n for n in affected if v.rc == 0 or n not in vtext]
        if unreported:
            n = unreported[0]
            tally.add("lost", f"{label}: {n} {affected[n]}; verify exit {v.rc} "
                      f"{'says OK' if v.rc == 0 else 'does not name it'} "
                      f"({len(unreported)} of {len(affected)} affected files unreported)",
                      n=len(unreported))
            outcomes["damage not reported by verify"] += 1
        else:
            outcomes["damage found and named by verify"] += 1
    elif v.rc != 0:
        outcomes["verify found damage no read saw"] += 1
    else:
        outcomes["no effect"] += 1
    if mount:
        def reported(name) -> bool:
            # loud, and naming the file, or the store as a whole failed (nothing listed)
            return v.rc != 0 and (name is None or names is None or name in vtext)
        through_mount(trial_dir, expected, tally, label, reported, outcomes)
    # a writable open (here `ingest` of nothing) must not hide the damage: one took a
    # damaged name of the store's database for a new store and made an empty, sound one
    if v.rc != 0 or affected:
        empty = trial_dir.parent / "empty"
        empty.mkdir(exist_ok=True)
        w = stowfs("ingest", trial_dir, empty)
        v2 = stowfs("verify", trial_dir, timeout=300)
        if w.crash() or v2.crash():
            tally.add("crashed", f"{label}: ingest of nothing, then verify: {w.crash() or v2.crash()}")
        elif v2.rc == 0:
            tally.add("lost", f"{label}: verify said OK after a writable open (ingest of nothing, "
                      f"exit {w.rc}) of a store it had found damaged", n=max(1, len(affected)))
            outcomes["a writable open hid the damage"] += 1
    if tally.crashed > crashed_before:
        outcomes["a command crashed"] += 1
    return ("crashed" if tally.crashed > crashed_before else
            "wrong" if any(v == "wrong" for v in affected.values()) else
            "unreported" if affected and names is not None and (v.rc == 0 or any(n not in vtext for n in affected)) else
            "ok")


def run(work: Path, quick: bool, rng: random.Random, tally: Tally, files: list[Path], scale: dict) -> None:
    # a spread of sizes and formats; small enough that a trial takes a few seconds
    files = sorted(rng.sample(files, min(scale["corrupt_files"], len(files))))
    stores = [build(work, files, compact=False), build(work, files, compact=True)]
    targets = [Target(s, rng) for s, _ in stores]
    outcomes: Counter = Counter()
    per_db: Counter = Counter()
    bad_db: dict[str, Counter] = {}
    meta_trials = 0
    n_random, n_targeted = scale["random_flips"], scale["targeted_flips"]
    trial_dir = work / "damaged"
    t0 = time.monotonic()
    for i in range(n_random + n_targeted):
        k = i % 2
        (pristine, expected), tg = stores[k], targets[k]
        if i < n_random:
            label, damage = tg.random_zero_page() if rng.random() < 0.2 else tg.random_flip()
        else:
            db = tg.dbs[(i - n_random) // 2 % len(tg.dbs)]
            label, damage = tg.targeted(db)
            per_db[db] += 1
            if db != tg.content:
                meta_trials += 1
        label = ("compacted store, " if k else "") + label
        result = trial(pristine, trial_dir, expected, damage, tally, label, outcomes,
                       mount=i >= n_random)
        if i >= n_random and result != "ok":
            bad_db.setdefault(db, Counter())[result] += 1
    tally.note(f"{n_random} random (a fifth zeroed pages), {n_targeted} targeted, {meta_trials} of them "
               f"at metadata (content database: {targets[0].content!r}) in {time.monotonic() - t0:.0f} s")
    tally.note("targeted per database: " + ", ".join(f"{d} {c}" for d, c in sorted(per_db.items())))
    tally.note("outcomes: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    tally.note("targeted trials that went wrong, by database: " + ("; ".join(
        f"{d}: " + ", ".join(f"{k} {v}" for k, v in c.most_common()) for d, c in sorted(bad_db.items())) or "none"))
