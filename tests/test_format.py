"""stowfs/store/FORMAT.md checked against real stored bytes: a store of real files is
parsed here with nothing but the document (lmdb, zstandard, msgpack, hashlib), and every
file is rebuilt from the raw tables. Also: a store written by the previous format (a
fixture made by stowfs 0.1) is upgraded without loss."""
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
from stowfs.store import Store

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
    raw = body if codec == 0 else zstandard.ZstdDecompressor().decompress(body)
    assert len(raw) == raw_len
    want = hashlib.blake2b(bytes([tag]) + struct.pack(">Q", key) + extra + raw, digest_size=16,
                           person=b"stowfs-frame-3").digest()
    assert h == want
    return extra, raw, level


def parse_store(path: Path) -> dict:
    env = lmdb.open(str(path / "lmdb"), readonly=True, max_dbs=32, lock=False)
    out = {}
    with env.begin() as txn:
        dbs = {n: env.open_db(n, txn=txn, create=False) for n in (b"meta", b"blocks", b"groups", b"names", b"anchors")}
        meta = dict(txn.cursor(db=dbs[b"meta"]))
        assert struct.unpack(">Q", meta[b"format"])[0] == 3
        body, check = meta[b"config"][:-8], meta[b"config"][-8:]
        assert hashlib.blake2b(b"config\0" + body, digest_size=8).digest() == check
        config = msgpack.unpackb(body)
        B = config["block_size"]
        stream = {}
        for k, v in txn.cursor(db=dbs[b"blocks"]):
            key = struct.unpack(">Q", k)[0]
            extra, raw, _ = frame(v, 0x20, key)
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
            assert pieces == b"".join(hashlib.blake2b(raw[i:i + (256 << 10)], digest_size=8).digest()
                                      for i in range(0, len(raw), 256 << 10))
        records = {}
        for k, v in txn.cursor(db=dbs[b"groups"]):
            gid = struct.unpack(">Q", k)[0]
            _, raw, _ = frame(v, 0x21, gid)
            cols = msgpack.unpackb(raw, strict_map_key=False)
            assert len(cols) == 15
            paths, values, absent = cols[12]
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
        for k, v in txn.cursor(db=dbs[b"names"]):
            fk = int.from_bytes(hashlib.blake2b(k, digest_size=8).digest(), "big")
            _, raw, _ = frame(v, 0x22, fk)
            ns, deltas = msgpack.unpackb(raw)
            assert ns == sorted(ns) and ns[0].encode()[:480] == k
            acc = 0
            for i, (n, d) in enumerate(zip(ns, deltas)):
                acc = d if i == 0 else acc + d
                names[n] = acc
        anchors = 0
        for k, v in txn.cursor(db=dbs[b"anchors"]):
            _, raw, _ = frame(v, 0x23, struct.unpack(">Q", k)[0])
            assert len(raw) % 9 == 0
            keys = struct.unpack(f"<{len(raw) // 9}I", raw[:4 * (len(raw) // 9)])
            assert list(keys) == sorted(keys)
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
    out.update(files=files, anchors=anchors, config=config)
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
    assert parse_store(path)["files"] == got["files"]


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
