"""stowfs/store/FORMAT.md checked against real stored bytes: a store of real files is
parsed here with nothing but the document (lmdb, zstandard, msgpack, hashlib), and every
file is rebuilt from the raw tables. Also: stores written in earlier formats (fixtures:
format 3 made by stowfs at 4a38c8d, format 2 by stowfs 0.1) are upgraded without loss,
and a read-only open reads a format-3 store as it is."""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import lmdb
import msgpack
import pytest
import zstandard

from realdata import corpus_dir, corpus_files
from stowfs.maintenance import compact, verify
from stowfs.store import Store, compaction

FIXTURES = Path(__file__).parent / "fixtures"


def uvarint(buf, pos):
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def frame(value: bytes, tag: int, key: int):
    assert value[0] == tag
    assert struct.unpack(">Q", value[1:9])[0] == key
    codec, level = value[9], value[10]
    raw_len, pos = uvarint(value, 11)
    n_extra, pos = uvarint(value, pos)
    extra = value[pos:pos + n_extra]
    pos += n_extra
    h = value[pos:pos + 16]
    body = value[pos + 16:]
    assert codec in (0, 1, 2)
    raw = body if codec == 0 else zstandard.ZstdDecompressor().decompress(body)
    assert len(raw) == raw_len
    # codec 2 (format 6): the hash covers the payload as stored, else as decoded
    want = hashlib.blake2b(bytes([tag]) + struct.pack(">Q", key) + extra + (body if codec == 2 else raw),
                           digest_size=16, person=b"stowfs-frame-3").digest()
    assert h == want
    return extra, raw, level, body


TAGS = {b"meta": 0x01, b"blocks": 0x02, b"groups": 0x03, b"names": 0x04, b"anchors": 0x05}


def read_tables(env, txn, fmt: int) -> dict:
    """{table: [(key, value)] in key order}: format 4 keeps every table in the named
    database `store`, each key led by its table's tag byte; format 3 a database each."""
    names = {k for k, _ in txn.cursor()}            # the main database: database names only
    if fmt == 3:
        assert set(TAGS) <= names and b"store" not in names
        return {t: list(txn.cursor(db=env.open_db(t, txn=txn, create=False))) for t in TAGS}
    assert b"store" in names and not set(TAGS) & names
    assert all(n == b"store" or n.startswith(b"aux:") for n in names)
    out = {t: [] for t in TAGS}
    by_tag = {tag: t for t, tag in TAGS.items()}
    for k, v in txn.cursor(db=env.open_db(b"store", txn=txn, create=False)):
        out[by_tag[k[0]]].append((k[1:], v))
    return out


def undelta(d, r):
    """FORMAT.md, format 5: a number stored against another."""
    if type(d) is int and type(r) is int:
        return d + r
    if type(d) is list and type(r) is list and len(d) == len(r):
        return [undelta(a, b) for a, b in zip(d, r)]
    if type(d) is list and d and type(d[-1]) is int and type(r) is int:
        return d[:-1] + [d[-1] + r]
    return d


def unzigzag(z):
    return z // 2 if z % 2 == 0 else -(z + 1) // 2


def ints(buf, n):
    """FORMAT.md, "Packed records": integers in byte planes."""
    mode, width = buf[0], buf[1]
    assert mode in (0, 1) and len(buf) == 2 + width * n
    planes = buf[2:]
    vals = [unzigzag(sum(planes[b * n + i] << (8 * b) for b in range(width))) for i in range(n)]
    return [sum(vals[:i + 1]) for i in range(n)] if mode == 1 else vals


def value_column(col, m):
    kind, data = col
    if kind == 1:
        return ints(data, m)
    if kind == 2:
        items = [ints(d, m) for d in data]
        return [[it[i] for it in items] for i in range(m)]
    assert kind == 0 and len(data) == m
    return data


def packed_group(cols):
    """Format 7's packed group -> the columns of the layout before (file ids as deltas,
    extents one item a record, as format 6 wrote them)."""
    n = len(cols[4])
    for c in (0, 1, 2, 3, 10, 11):
        cols[c] = value_column(cols[c], n)
    ids = cols[0]
    cols[0] = ids[:1] + [b - a for a, b in zip(ids, ids[1:])]
    cols[7] = [([m] if m is not None else []) if type(x) is int and x == 0 else x for x, m in zip(cols[7], cols[6])]
    if type(cols[13]) is bytes:
        assert len(cols[13]) == 4 * n
        cols[13] = [cols[13][4 * i:4 * i + 4] for i in range(n)]
    paths, values, presence = cols[12][:3]
    full, absent = [], []
    for col, bits in zip(values, presence):
        has = list(range(n)) if bits is None else [j for j in range(n) if bits[j >> 3] >> (j & 7) & 1]
        vals = value_column(col, len(has))
        row = [None] * n
        for j, v in zip(has, vals):
            row[j] = v
        full.append(row)
        absent.append([j for j in range(n) if j not in has])
    cols[12] = [paths, full, absent] + cols[12][3:]
    ext, p, out = cols[14], 0, []
    for size in cols[1]:
        c, p = uvarint(ext, p)
        count, left = c >> 1, size
        mine = encode_uvarint(count)     # as format 6 has it: the same chain of positions
        for i in range(count):
            z, p = uvarint(ext, p)
            if c & 1 or i < count - 1:
                length, p = uvarint(ext, p)
                left -= length
            else:
                length = left
            mine += encode_uvarint(z) + encode_uvarint(length)
        out.append(mine)
    assert p == len(ext)
    cols[14] = out
    return cols


def encode_uvarint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def parse_store(path: Path, fmt: int = 7) -> dict:
    env = lmdb.open(str(path / "lmdb"), readonly=True, max_dbs=32, lock=False)
    out = {}
    refs_seen, planes_seen, codecs_seen, layouts_seen = [], [], [], []
    with env.begin() as txn:
        dbs = read_tables(env, txn, fmt)
        meta = dict(dbs[b"meta"])
        assert struct.unpack(">Q", meta[b"format"])[0] == fmt
        body, check = meta[b"config"][:-8], meta[b"config"][-8:]
        assert hashlib.blake2b(b"config\0" + body, digest_size=8).digest() == check
        config = msgpack.unpackb(body)
        B = config["block_size"]
        stream = {}
        for k, v in dbs[b"blocks"]:
            key = struct.unpack(">Q", k)[0]
            extra, raw, _, body = frame(v, 0x20, key)
            n, pos = uvarint(extra, 0)
            prev, acc = 0, 0
            for _ in range(n):
                gap, pos = uvarint(extra, pos)
                length, pos = uvarint(extra, pos)
                start = (key >> 16) * B + prev + gap
                stream[start] = raw[acc:acc + length]
                acc += length
                prev += gap + length
            pieces = extra[pos:]
            # of the stored payload, 64 KiB each (codec 2), else of the decoded, 256 KiB each
            step, of = (64 << 10, body) if v[9] == 2 else (256 << 10, raw)
            assert pieces == b"".join(hashlib.blake2b(of[i:i + step], digest_size=8).digest()
                                      for i in range(0, len(of), step))
            assert fmt >= 6 or v[9] != 2
            codecs_seen.append(v[9])
        records = {}
        for k, v in dbs[b"groups"]:
            gid = struct.unpack(">Q", k)[0]
            extra, raw, _, _ = frame(v, 0x21, gid)
            cols = msgpack.unpackb(raw, strict_map_key=False)
            assert len(cols) == 15
            if extra == b"\x01":
                assert fmt >= 7
                layouts_seen.append(len(cols[4]))
                cols = packed_group(cols)
            else:
                assert extra == b""
            paths, values, absent = cols[12][:3]
            refs = cols[12][3] if len(cols[12]) == 4 else [None] * len(paths)
            assert fmt >= 5 or len(cols[12]) == 3
            for i, j in enumerate(refs):           # format 5: stored against another column
                if j is not None:
                    assert -1 <= j < i
                    values[i] = [undelta(d, r) for d, r in zip(values[i], cols[1] if j == -1 else values[j])]
                    refs_seen.append(paths[i])
            facts = [{} for _ in cols[0]]
            for path, vals, gone in zip(paths, values, absent):
                for i, v in enumerate(vals):
                    if i in gone:
                        continue
                    d = facts[i]
                    keys = path.split("\x00")
                    for k in keys[:-1]:
                        d = d.setdefault(k, {})
                    d[keys[-1]] = v
            cols[12] = facts
            assert all(f["views"]["text"][1] >= 0 for f, e in zip(facts, cols[9]) if e is None)
            ids, acc = [], 0
            for i, d in enumerate(cols[0]):
                acc = d if i == 0 else acc + d
                ids.append(acc)
            prev = 0
            for row in zip(ids, *cols[1:]):
                assert row[0] >> 9 == gid
                ext = row[14]
                n, p = uvarint(ext, 0)
                extents = []
                for _ in range(n):
                    z, p = uvarint(ext, p)
                    length, p = uvarint(ext, p)
                    pos = prev + (z >> 1 if not z & 1 else -((z + 1) >> 1))
                    extents.append((pos, length))
                    prev = pos + length
                records[row[0]] = row[:14] + (extents,)
        names = {}
        for k, v in dbs[b"names"]:
            fk = int.from_bytes(hashlib.blake2b(k, digest_size=8).digest(), "big")
            _, raw, _, _ = frame(v, 0x22, fk)
            ns, deltas = msgpack.unpackb(raw)
            assert ns == sorted(ns) and ns[0].encode()[:480] == k
            acc = 0
            for i, (n, d) in enumerate(zip(ns, deltas)):
                acc = d if i == 0 else acc + d
                names[n] = acc
        anchors = 0
        for k, v in dbs[b"anchors"]:
            extra, raw, _, _ = frame(v, 0x23, struct.unpack(">Q", k)[0])
            assert len(raw) % 9 == 0
            n = len(raw) // 9
            if extra == b"\x01":                   # format 5: key deltas in byte planes
                assert fmt >= 5
                deltas = [sum(raw[b * n + i] << (8 * b) for b in range(4)) for i in range(n)]
                keys = [sum(deltas[:i + 1]) for i in range(n)]
                planes_seen.append(n)
            else:
                assert extra == b""
                keys = list(struct.unpack(f"<{n}I", raw[:4 * n]))
            assert keys == sorted(keys) and all(k < 1 << 32 for k in keys)
            anchors += len(keys)
    env.close()

    def read(pos, n):
        outb = b""
        for start in sorted(stream):
            data = stream[start]
            if start <= pos < start + len(data):
                take = min(n, start + len(data) - pos)
                outb += data[pos - start:pos - start + take]
                pos += take
                n -= take
                if n == 0:
                    return outb
        assert n == 0, "a record points at bytes no fragment holds"
        return outb

    files = {}
    for name, fid in names.items():
        row = records[fid]
        data = b"".join(read(pos, length) for pos, length in row[14])
        assert len(data) == row[1]
        assert hashlib.blake2b(data, digest_size=4).digest() == row[13]
        files[name] = data
    out.update(files=files, anchors=anchors, config=config, refs=refs_seen, planes=planes_seen,
               block_codecs=codecs_seen, packed_groups=layouts_seen)
    return out


def test_the_format_document_reads_a_real_store(tmp_path):
    root = corpus_dir()
    files = [p for p in corpus_files() if p.stat().st_size < 1 << 20][:40]
    path = tmp_path / "s"
    with Store(path, block_size=1 << 20) as s:
        for p in files:
            s.put_file(str(p.relative_to(root)), p)        # fragments, one a put
    got = parse_store(path)
    assert got["files"] == {str(p.relative_to(root)): p.read_bytes() for p in files}
    assert got["anchors"] > 0
    compact(path)                                          # one frame a block, level 19
    after = parse_store(path)
    assert after["files"] == got["files"]
    # compaction wrote format 5's layouts: facts stored against others, anchors in planes
    assert "views\x00lean" in after["refs"] and after["planes"] and not got["refs"]
    # format 6's: every block checked as stored (ingest's fragments too); and format
    # 7's: every record group packed, as written by a put and by compaction
    assert got["packed_groups"] == after["packed_groups"] == [len(files)]
    assert set(got["block_codecs"]) == set(after["block_codecs"]) == {2}


def _put_while_another_has_it_open(path: Path, fmt: int, files: list, then) -> None:
    """A writable open while another process holds the store's shared lock: the store
    stays in format fmt; each file is put under more/, then then(store) must be true."""
    import fcntl
    root = corpus_dir()
    with open(path / "stowfs.lock", "a+b") as other:
        fcntl.flock(other, fcntl.LOCK_SH)
        with Store(path) as s:
            assert s.stored_format == fmt
            for p in files:
                s.put_file("more/" + str(p.relative_to(root)), p)
            assert then(s)


def _fixture4(tmp_path) -> tuple[Path, dict]:
    path = tmp_path / "old4"
    shutil.copytree(FIXTURES / "format4-store", path)
    return path, json.loads((FIXTURES / "format4-store.json").read_text())


def test_a_format_4_store_becomes_format_7_and_reads_the_same(tmp_path):
    path, expected = _fixture4(tmp_path)
    assert hashlib.sha256((path / "lmdb" / "data.mdb").read_bytes()).hexdigest() == expected["made"]["data_mdb_sha256"]
    old = parse_store(path, fmt=4)                       # the fixture is what FORMAT.md says format 4 is
    assert old["files"].keys() == expected["files"].keys() and not old["refs"] and not old["planes"]
    with Store(path, readonly=True) as s:                 # read-only: read as it is
        assert s.stored_format == 4
        _reads_back(s, expected["files"])
    assert hashlib.sha256((path / "lmdb" / "data.mdb").read_bytes()).hexdigest() == expected["made"]["data_mdb_sha256"]
    with Store(path) as s:
        assert s.stored_format == 7
        _reads_back(s, expected["files"])
        before = {i.name: s.info(i.name) for i in s.iter_files()}
        assert verify(s)["ok"]
    assert parse_store(path)["files"] == old["files"]   # only the number changed
    compact(path)
    new = parse_store(path)
    assert new["files"] == old["files"] and new["planes"] and set(new["block_codecs"]) == {2}
    with Store(path, readonly=True) as s:
        _reads_back(s, expected["files"])
        for name, info in before.items():                 # the facts read back the same
            now, was = s.info(name).facts, info.facts
            if was.get("pending"):                        # (compaction counted its tokens)
                now, was = {k: v for k, v in now.items() if k != "tokens"}, \
                    {k: v for k, v in was.items() if k != "pending"}
            assert now == was, name
        assert verify(s)["ok"]


def test_a_format_4_store_another_process_has_open_stays_format_4(tmp_path):
    """Format 5's and 6's layouts are unknown to the code that wrote format 4: while
    another process has the store open, a writable open reads and writes format 4 (no
    facts stored against others, no anchor planes, blocks checked as decoded), and the
    first open alone converts it."""
    path, expected = _fixture4(tmp_path)
    root = corpus_dir()
    extra = [p for p in corpus_files() if p.stat().st_size < 1 << 20][:12]
    _put_while_another_has_it_open(path, 4, extra, lambda s: (compaction.compact(s), verify(s)["ok"])[1])
    got = parse_store(path, fmt=4)
    assert not got["refs"] and not got["planes"] and 2 not in got["block_codecs"]
    assert got["files"]["more/" + str(extra[0].relative_to(root))] == extra[0].read_bytes()
    with Store(path) as s:
        assert s.stored_format == 7
        assert len(list(s.iter_files())) == len(expected["files"]) + len(extra)
    compact(path)
    assert parse_store(path)["files"] == got["files"]


def test_a_format_5_store_becomes_format_7_and_its_blocks_are_checked_as_stored(tmp_path):
    """The fixture made by the code before format 6: read as it is (read-only, and by a
    writable open while another process has it open, which writes blocks checked as
    decoded); a writable open alone makes it the newest format, reading every old block
    as it is; compaction rewrites them checked as stored. Every file reads back the same."""
    path = tmp_path / "old5"
    shutil.copytree(FIXTURES / "format5-store", path)
    expected = json.loads((FIXTURES / "format5-store.json").read_text())
    assert hashlib.sha256((path / "lmdb" / "data.mdb").read_bytes()).hexdigest() == expected["made"]["data_mdb_sha256"]
    old = parse_store(path, fmt=5)
    assert old["files"].keys() == expected["files"].keys() and set(old["block_codecs"]) == {1}
    with Store(path, readonly=True) as s:
        assert s.stored_format == 5
        _reads_back(s, expected["files"])
    assert hashlib.sha256((path / "lmdb" / "data.mdb").read_bytes()).hexdigest() == expected["made"]["data_mdb_sha256"]
    more = [p for p in corpus_files() if p.stat().st_size < 1 << 20][:6]
    root = corpus_dir()
    _put_while_another_has_it_open(path, 5, more, lambda s: s.seal() or True)
    assert set(parse_store(path, fmt=5)["block_codecs"]) == {1}
    with Store(path) as s:
        assert s.stored_format == 7
        _reads_back(s, expected["files"], more=True)
        assert verify(s)["ok"]
        st = s.stats()                                     # what compaction will rewrite
        assert st["store_format"] == 7 and st["uncompacted_fragments"] == st["block_fragments"] > 1
    mixed = parse_store(path)
    assert set(mixed["block_codecs"]) == {1}                # nothing rewritten yet
    compact(path)
    new = parse_store(path)
    assert new["files"] == mixed["files"] and set(new["block_codecs"]) == {2}
    assert {n: new["files"][n] for n in expected["files"]} == old["files"]
    for p in more:
        assert new["files"]["more/" + str(p.relative_to(root))] == p.read_bytes()
    with Store(path, readonly=True) as s:
        _reads_back(s, expected["files"], more=True)
        assert verify(s)["ok"] and s.stats()["uncompacted_fragments"] == 0


def test_a_format_6_store_becomes_format_7_and_its_groups_are_packed(tmp_path):
    """The fixture made by the code before format 7 (record groups as msgpack lists):
    read as it is read-only and by a writable open while another process has it open
    (which writes groups in the old layout); a writable open alone makes it format 7,
    reading every old group as it is; compaction rewrites every group packed. Every
    file, and every record's facts, read back the same."""
    path = tmp_path / "old6"
    shutil.copytree(FIXTURES / "format6-store", path)
    expected = json.loads((FIXTURES / "format6-store.json").read_text())
    digest = expected["made"]["data_mdb_sha256"]
    assert hashlib.sha256((path / "lmdb" / "data.mdb").read_bytes()).hexdigest() == digest
    old = parse_store(path, fmt=6)
    assert old["files"].keys() == expected["files"].keys() and not old["packed_groups"]
    with Store(path, readonly=True) as s:
        assert s.stored_format == 6
        _reads_back(s, expected["files"])
    assert hashlib.sha256((path / "lmdb" / "data.mdb").read_bytes()).hexdigest() == digest
    more = [p for p in corpus_files() if p.stat().st_size < 1 << 20][:6]
    root = corpus_dir()
    _put_while_another_has_it_open(path, 6, more, lambda s: (compaction.compact(s), verify(s)["ok"])[1])
    shared = parse_store(path, fmt=6)
    assert not shared["packed_groups"]                  # compaction kept the old layout
    with Store(path) as s:
        assert s.stored_format == 7
        _reads_back(s, expected["files"], more=True)
        before = {i.name: s.info(i.name).facts for i in s.iter_files()}
        assert verify(s)["ok"]
    assert parse_store(path)["files"] == shared["files"]  # only the number changed
    compact(path)
    new = parse_store(path)
    assert new["files"] == shared["files"] and new["packed_groups"] == [len(before)]
    for p in more:
        assert new["files"]["more/" + str(p.relative_to(root))] == p.read_bytes()
    with Store(path, readonly=True) as s:
        _reads_back(s, expected["files"], more=True)
        assert {i.name: s.info(i.name).facts for i in s.iter_files()} == before
        assert verify(s)["ok"]


def test_a_format_2_store_is_upgraded_without_loss(tmp_path):
    path = tmp_path / "old"
    shutil.copytree(FIXTURES / "format2-store", path)
    expected = json.loads((FIXTURES / "format2-store.json").read_text())
    with Store(path) as s:
        infos = {i.name: i for i in s.iter_files()}
        assert sorted(infos) == sorted(expected)
        for name, e in expected.items():
            data = s.get(name)
            assert hashlib.sha256(data).hexdigest() == e["sha256"], name
            assert infos[name].format == e["format"]
            assert abs(infos[name].mtime - e["mtime"]) < 1e-3
        assert verify(s)["ok"]
    assert not (path / "lmdb.format2").exists() and not (path / "lmdb.upgrading").exists()
    assert parse_store(path)["files"].keys() == expected.keys()


def test_an_upgrade_cut_short_starts_again(tmp_path, monkeypatch):
    path = tmp_path / "old"
    shutil.copytree(FIXTURES / "format2-store", path)
    from stowfs.store import upgrade

    def broken(path_, new):
        (new).mkdir()
        (new / "data.mdb").write_bytes(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(upgrade, "_copy", broken)
    with pytest.raises(KeyboardInterrupt):
        Store(path)
    monkeypatch.undo()
    with Store(path) as s:
        assert len(list(s.iter_files())) == len(json.loads((FIXTURES / "format2-store.json").read_text()))


def _fixture3(tmp_path) -> tuple[Path, dict]:
    path = tmp_path / "old3"
    shutil.copytree(FIXTURES / "format3-store", path)
    return path, json.loads((FIXTURES / "format3-store.json").read_text())


def _reads_back(s: Store, files: dict, more: bool = False) -> None:
    """files read back as the fixture's JSON says (more: other files may be there too)."""
    infos = {i.name: i for i in s.iter_files()}
    assert set(files) <= set(infos) if more else sorted(infos) == sorted(files)
    for name, e in files.items():
        data = s.get(name)
        assert len(data) == e["size"] and hashlib.sha256(data).hexdigest() == e["sha256"], name
        assert infos[name].format == e["format"] and infos[name].mtime_ns == e["mtime_ns"]


def test_a_format_3_store_is_converted_to_format_4_in_place(tmp_path):
    path, expected = _fixture3(tmp_path)
    files = expected["files"]
    assert hashlib.sha256((path / "lmdb" / "data.mdb").read_bytes()).hexdigest() == expected["made"]["data_mdb_sha256"]
    old = parse_store(path, fmt=3)                       # the fixture is what FORMAT.md says format 3 was
    with Store(path) as s:
        assert s.stored_format == 7                     # 3 -> 4 -> 7
        _reads_back(s, files)
        assert verify(s)["ok"]
        assert s.stats()["block_fragments"] == 5          # the open block's fragments, as they were
    new = parse_store(path)
    assert new["files"] == old["files"] and new["anchors"] == old["anchors"]
    env = lmdb.open(str(path / "lmdb"), readonly=True, max_dbs=32, lock=False)
    with env.begin() as txn:
        assert {k for k, _ in txn.cursor()} == {b"store", b"aux:search"}   # the search index kept
    env.close()
    from stowfs.analytics import search_index
    with Store(path) as s:                              # the next open finds format 7: nothing to do
        assert s.stored_format == 7
        assert search_index.exists(s)                     # the derived index kept its database
        s.put("corpus/new.json", b'{"messages": []}')
        assert verify(s)["ok"]
    assert compact(path)["blocks_after"] >= 3
    with Store(path, readonly=True) as s:
        _reads_back(s, {**files, "corpus/new.json": {"size": 16, "sha256": hashlib.sha256(b'{"messages": []}').hexdigest(),
                                                     "format": s.info("corpus/new.json").format,
                                                     "mtime_ns": s.info("corpus/new.json").mtime_ns}})


def test_a_read_only_open_reads_a_format_3_store_as_it_is(tmp_path):
    path, expected = _fixture3(tmp_path)
    data = path / "lmdb" / "data.mdb"
    with Store(path, readonly=True) as s:
        assert s.stored_format == 3
        _reads_back(s, expected["files"])
        assert [n for n, _ in s.listdir("corpus")] == sorted({n.split("/")[1] for n in expected["files"]})
        assert s.stats()["files"] == len(expected["files"])
        assert verify(s)["ok"]                            # (its walk opens the store read-only too)
    assert hashlib.sha256(data.read_bytes()).hexdigest() == expected["made"]["data_mdb_sha256"]


def test_a_format_3_store_another_process_has_open_is_used_as_format_3(tmp_path):
    """The conversion needs the store alone (another process maps format 3's databases):
    while a process holds it open (its shared lock), a writable open reads and writes
    format 3; the first open that finds it alone converts it."""
    import fcntl
    path, expected = _fixture3(tmp_path)
    with open(path / "stowfs.lock", "a+b") as other:
        fcntl.flock(other, fcntl.LOCK_SH)                 # another process's open store
        with Store(path) as s:
            assert s.stored_format == 3
            s.put("corpus/added.json", b'{"messages": []}')
            s.remove("corpus/aider-chat-history/examples/pong.md")
            got = compaction.compact(s)
            assert got["blocks_rewritten"] >= 1 and not got["free_pages_returned"]   # not alone
            assert verify(s)["ok"]
        assert parse_store(path, fmt=3)["files"]["corpus/added.json"] == b'{"messages": []}'
        fcntl.flock(other, fcntl.LOCK_UN)
    with Store(path) as s:
        assert s.stored_format == 7
        assert s.get("corpus/added.json") == b'{"messages": []}'
        assert len(list(s.iter_files())) == len(expected["files"])
        assert verify(s)["ok"]


def test_a_conversion_killed_midway_leaves_format_3(tmp_path):
    """kill -9 inside the conversion's transaction, after the old databases are dropped
    and before the commit: the store is format 3 as it was, and the next open converts."""
    import subprocess
    import sys
    path, expected = _fixture3(tmp_path)
    child = (
        "import os, signal, sys\n"
        "from stowfs.store import Store, lmdbenv\n"
        "real = lmdbenv.u64\n"
        "def u64(n):\n"
        "    if n == 4:\n"                     # the last step of the transaction: format = 4
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(n)\n"
        "lmdbenv.u64 = u64\n"
        "Store(sys.argv[1])\n")
    p = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True)
    assert p.returncode == -9, p.stderr.decode()
    assert parse_store(path, fmt=3)["files"].keys() == expected["files"].keys()
    with Store(path) as s:
        assert s.stored_format == 7
        _reads_back(s, expected["files"])


def _failing_u64(monkeypatch, errors: list):
    """lmdbenv.u64 raising the next of errors when the conversion writes format = 4 (the
    last step of its transaction)."""
    from stowfs.store import lmdbenv
    real = lmdbenv.u64

    def u64(n):
        if n == 4 and errors:
            raise errors.pop(0)
        return real(n)
    monkeypatch.setattr(lmdbenv, "u64", u64)


def test_a_conversion_that_fills_the_map_grows_it_and_tries_again(tmp_path, monkeypatch):
    path, expected = _fixture3(tmp_path)
    _failing_u64(monkeypatch, [lmdb.MapFullError("mdb_put: MDB_MAP_FULL"), lmdb.MapFullError("mdb_put: MDB_MAP_FULL")])
    with Store(path) as s:
        assert s.stored_format == 7
        _reads_back(s, expected["files"])
        assert verify(s)["ok"]


def test_a_conversion_without_disk_space_leaves_format_3_in_use(tmp_path, monkeypatch):
    path, expected = _fixture3(tmp_path)
    _failing_u64(monkeypatch, [lmdb.Error("mdb_txn_commit: No space left on device")])
    with Store(path) as s:
        assert s.stored_format == 3                       # the old databases' handles again
        _reads_back(s, expected["files"])
        s.put("corpus/after.json", b"{}")
        assert s.get("corpus/after.json") == b"{}"
    with Store(path) as s:                                # room again: converted
        assert s.stored_format == 7 and s.get("corpus/after.json") == b"{}"
        assert verify(s)["ok"]
