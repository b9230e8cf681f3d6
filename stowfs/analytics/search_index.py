"""Full-text search over the text view, from an inverted index kept in the store.

The index lives in the store's named database `aux:search` (Store.aux_read/aux_write). It
is derived data: every byte of it can be rebuilt from the stored files (`rebuild`), and
the store never reads it. It is kept in step with the store by file id: a file id is never
reused, and a file whose content changes (replaced; renamed, where the store gives it a
new id) is a new id, so `sync(store)` only has to index the ids it has not seen and
forget the ids that are gone. The index is made by the first query (or `stowfs ingest
--index`): it costs about a fifth of a compacted store and a third more ingest time, paid
only by stores that are searched. Once it exists, `sync` runs after each `stowfs ingest`
and before every query.

What is indexed: the words of each file's text view (`text/PATH.txt`, what `grep -r`
reads). A word is a maximal run of word bytes (ASCII letters, digits, "_", and every
byte of a non-ASCII character), ASCII-lower-cased and cut to MAX_TERM bytes. Layout of `aux:search` (msgpack via stowfs.packing):

    b"m"                     {"v", "epoch", "next": next segment number, "gen": the store
                              generation the index was last in step with}
    b"d" + u32 seg           {"ids": varint deltas of the live file ids of the segment,
                              "n": file ids it was built with, "tb": text bytes indexed}
    b"p" + u32 seg + TERM    one page of the segment's term dictionary, keyed by its first
                              term: zstd(msgpack [the page's terms joined by "\\n",
                              postings]); postings are varint deltas of file ids; terms
                              sorted as bytes

A segment is built from up to SEG_FILES files (or SEG_TEXT bytes of text) in one write
transaction; its pages never change. Removing a file only drops its id from the segment's
live list; segments that are small or half dead are merged (postings of dead ids dropped)
without reading any file again.

Queries: a plain phrase is narrowed by its words. A word with a non-word character on
both sides inside the phrase must be a whole word of the text (exact lookup); the last
word, open on its right, is a prefix of one (range scan); the first word, open on its
left, a suffix (scan of the term dictionary, only when nothing better exists). The
candidates are then checked on the rendered text view: a hit is a file whose text
contains the phrase's bytes, exactly what `grep -F` over `text/` finds; the index only
narrows. Files not yet indexed (a store opened read-only, a sync racing an ingest) are
checked directly, so an index that lags is slower, never wrong.
"""
from __future__ import annotations

import bisect
import os
import re
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import zstandard

from ..errors import NotFound, ReadOnly, StowError
from ..packing import decode_uvarints, pack, unpack

DB = "search"
VERSION = 3
MAX_TERM = 40                  # bytes of a word kept as its term
SEG_FILES = 2000               # files a segment is built from at most
SEG_TEXT = 24 << 20            # ... or bytes of text
PAGE_RAW = 256 << 10           # raw bytes of one page of a segment's term dictionary
                               # (32 KiB at zstd 6 made the api-log index 22% bigger;
                               # a lookup decodes one page: ~0.3 ms)
MERGE_SMALL = SEG_FILES // 4   # a segment with fewer live files than this is merged
MERGE_MIN = 4                  # ... once there are this many such segments
SNIPPET = 60                   # characters of context on each side of a hit

_SEG = struct.Struct(">I")
_META = b"m"
_PAGE_CACHE_PAGES = 256


# ====================================================================== terms
# A word byte is an ASCII letter, digit or "_", or any byte >= 0x80 (so a UTF-8 character
# never splits a word, and the split needs no decode: bytes.translate + split runs at
# ~60 MB/s, 3x a Unicode \\w regex). Terms are the words ASCII-lower-cased, cut to MAX_TERM
# bytes. The same function applied to a phrase tells which of its words are whole.
_WORD_BYTES = bytes(b if (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or b == 95 or b >= 128)
                    else 32 for b in range(256))
_TOKEN = re.compile(rb"[^ ]+")


def words(data: bytes) -> bytes:
    """data lower-cased (ASCII) with every non-word byte turned into a space."""
    return data.lower().translate(_WORD_BYTES)


def terms_of(data: bytes) -> set[bytes]:
    """The distinct terms of a text view."""
    out = set(words(data).split())
    if not out or max(map(len, out)) <= MAX_TERM:
        return out
    long = [w for w in out if len(w) > MAX_TERM]
    for w in long:
        out.discard(w)
        out.add(w[:MAX_TERM])
    return out


def decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


@dataclass(frozen=True)
class Condition:
    """What a word of the phrase says about the terms of a file containing the phrase."""
    kind: str       # "exact", "prefix", "suffix", "infix"
    term: bytes


def conditions(phrase: str) -> list[Condition]:
    """Necessary conditions on a file's terms for its text to contain phrase."""
    folded = words(phrase.encode("utf-8", "surrogatepass"))
    out = []
    for m in _TOKEN.finditer(folded):
        w = m.group()
        left, right = m.start() > 0, m.end() < len(folded)
        if left and right:
            out.append(Condition("exact", w[:MAX_TERM]))
        elif left:
            out.append(Condition("prefix", w[:MAX_TERM]))
        elif right:
            out.append(Condition("suffix", w))
        else:
            out.append(Condition("infix", w))
    return out


def _plan(conds: list[Condition]) -> list[Condition]:
    """The conditions worth looking up: exact and prefix words (longest first), then the
    longest suffix/infix word (a scan of the joined terms) when it has 4+ bytes or
    nothing else narrows."""
    cheap = sorted(set(c for c in conds if c.kind in ("exact", "prefix")),
                   key=lambda c: (c.kind != "exact", -len(c.term)))
    scans = sorted((c for c in conds if c.kind in ("suffix", "infix")), key=lambda c: -len(c.term))
    if scans and (not cheap or len(scans[0].term) >= 4):
        cheap.append(scans[0])      # a scan narrows last, once the lookups have
    return cheap


# ====================================================================== state
def _seg_key(seg: int) -> bytes:
    return b"d" + _SEG.pack(seg)


def _page_prefix(seg: int) -> bytes:
    return b"p" + _SEG.pack(seg)


def _ids_encode(ids) -> bytes:
    """Varint deltas of ascending file ids (callers pass them sorted); the same bytes as
    packing.encode_uvarints of the deltas, inlined: it runs once per term of a segment."""
    out = bytearray()
    prev = 0
    for i in ids:
        v = i - prev
        prev = i
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _ids_decode(buf: bytes) -> list[int]:
    out, acc = [], 0
    for d in decode_uvarints(buf):
        acc += d
        out.append(acc)
    return out


def _meta(txn, db) -> Optional[dict]:
    v = txn.get(_META, db=db)
    if v is None:
        return None
    m = unpack(v)
    return m if m.get("v") == VERSION else None


def _segments(txn, db) -> dict[int, dict]:
    out = {}
    cur = txn.cursor(db=db)
    ok = cur.set_range(b"d")
    while ok and cur.key()[:1] == b"d":
        seg = _SEG.unpack(cur.key()[1:5])[0]
        d = unpack(cur.value())
        d["live"] = _ids_decode(d["ids"])
        out[seg] = d
        ok = cur.next()
    return out


@dataclass
class State:
    meta: Optional[dict]
    segments: dict[int, dict]

    def indexed(self) -> set[int]:
        out: set[int] = set()
        for d in self.segments.values():
            out.update(d["live"])
        return out


def _has_aux(store) -> bool:
    """The store keeps named databases (the in-memory twin does not: no index there)."""
    return hasattr(store, "aux_read") and hasattr(store, "aux_write")


def state(store) -> State:
    if not _has_aux(store):
        return State(None, {})
    r = store.aux_read(DB, lambda txn, db: State(_meta(txn, db), _segments(txn, db)))
    return r if r is not None else State(None, {})


def exists(store) -> bool:
    """Whether the store has an index (made by its first search, or `ingest --index`)."""
    return state(store).meta is not None


def in_step(store, st: Optional[State] = None) -> bool:
    """Whether the index was last synced at the store's current generation."""
    st = st or state(store)
    return st.meta is not None and st.meta.get("gen") == store.generation


# ====================================================================== building
_zc = threading.local()


def _compressor():
    c = getattr(_zc, "c", None)
    if c is None:
        c = _zc.c = zstandard.ZstdCompressor(level=19)   # written once, read often
    return c


def _decompressor():
    d = getattr(_zc, "d", None)
    if d is None:
        d = _zc.d = zstandard.ZstdDecompressor()
    return d


def _pages(postings: dict[bytes, list[int]]) -> Iterator[tuple[bytes, bytes]]:
    """(first term, page bytes) of a term dictionary, in term order."""
    terms, lists, raw = [], [], 0
    for t in sorted(postings):
        p = _ids_encode(postings[t])
        terms.append(t)
        lists.append(p)
        raw += len(t) + len(p) + 4
        if raw >= PAGE_RAW:
            yield terms[0], _compressor().compress(pack([b"\n".join(terms), lists]))
            terms, lists, raw = [], [], 0
    if terms:
        yield terms[0], _compressor().compress(pack([b"\n".join(terms), lists]))


def _write_segment(txn, db, seg: int, postings: dict[bytes, list[int]], ids: Iterable[int],
                   text_bytes: int) -> int:
    ids = sorted(set(ids))
    size = 0
    for first, page in _pages(postings):
        key = _page_prefix(seg) + first
        txn.put(key, page, db=db)
        size += len(key) + len(page)
    v = pack({"ids": _ids_encode(ids), "n": len(ids), "tb": text_bytes, "pb": size})
    txn.put(_seg_key(seg), v, db=db)
    return size


def _delete_segment(txn, db, seg: int) -> None:
    pfx = _page_prefix(seg)
    cur = txn.cursor(db=db)
    if cur.set_range(pfx):
        while cur.key().startswith(pfx):
            if not cur.delete():
                break
    txn.delete(_seg_key(seg), db=db)


def _new_meta(txn, db) -> dict:
    m = _meta(txn, db)
    if m is None:
        # a fresh index (or one of an older layout): start over
        cur = txn.cursor(db=db)
        if cur.first():
            while cur.delete():
                pass
        m = {"v": VERSION, "epoch": os.urandom(8).hex(), "next": 1, "gen": -1}
    return m


class _Builder:
    """Terms of files being gathered into one segment."""

    def __init__(self):
        self.postings: dict[bytes, list[int]] = {}
        self.ids: list[int] = []
        self.text_bytes = 0

    def add(self, fid: int, text: bytes) -> None:
        self.ids.append(fid)
        self.text_bytes += len(text)
        if not text:
            return
        add = self.postings.setdefault
        for t in terms_of(text):
            add(t, []).append(fid)

    def full(self) -> bool:
        return len(self.ids) >= SEG_FILES or self.text_bytes >= SEG_TEXT


def _text(store, info) -> Optional[bytes]:
    """The text view of a file, None when it went away meanwhile."""
    if info.error or not info.text_size:
        return b""
    try:
        return store.get(info.name, view="text")
    except NotFound:
        return None


def sync(store, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Index the files not indexed yet and forget the ones that are gone. Cheap when the
    index is already in step (one read of the store's generation)."""
    out = {"indexed": 0, "dropped": 0, "merged": 0, "segments": 0}
    if not _has_aux(store):
        return out
    gen = store.generation
    meta = store.aux_read(DB, _meta)
    if meta is not None and meta.get("gen") == gen:
        return out              # in step: nothing changed since the last sync
    st = state(store)
    out["segments"] = len(st.segments)
    writes = 0
    live = {i.file_id: i for i in store.iter_files()}
    indexed = st.indexed() if st.meta is not None else set()   # no index, or an old layout
    gone = indexed - live.keys()
    todo = sorted(live.keys() - indexed)

    if gone or st.meta is None:
        def drop(txn, db):
            m = _new_meta(txn, db)
            for seg, d in _segments(txn, db).items():
                keep = [i for i in d["live"] if i not in gone]
                if len(keep) != len(d["live"]):
                    d2 = {k: v for k, v in d.items() if k != "live"}
                    d2["ids"] = _ids_encode(keep)
                    txn.put(_seg_key(seg), pack(d2), db=db)
            txn.put(_META, pack(m), db=db)
        store.aux_write(DB, drop)
        writes += 1
        out["dropped"] = len(gone)

    b = _Builder()
    done = 0

    def flush():
        nonlocal writes, b

        def work(txn, db):
            m = _new_meta(txn, db)
            already = set()
            for d in _segments(txn, db).values():
                already.update(d["live"])
            ids = [i for i in b.ids if i not in already]   # another process indexed them
            if ids:
                seg = m["next"]
                m["next"] += 1
                _write_segment(txn, db, seg, b.postings, ids, b.text_bytes)
            txn.put(_META, pack(m), db=db)
        store.aux_write(DB, work)
        writes += 1
        b = _Builder()

    for fid in todo:
        info = live[fid]
        text = _text(store, info)
        done += 1
        if text is None:
            continue
        b.add(fid, text)
        out["indexed"] += 1
        if b.full():
            flush()
        if progress:
            progress(done, len(todo))
    if b.ids:
        flush()
    out["merged"], w = _merge(store)
    writes += w

    # Every aux_write moved the store's generation by one; the index is in step with
    # gen + writes unless someone else wrote meanwhile (then the next sync looks again).
    def stamp(txn, db):
        m = _new_meta(txn, db)
        m["gen"] = gen + writes + 1
        txn.put(_META, pack(m), db=db)
    store.aux_write(DB, stamp)
    out["segments"] = len(state(store).segments)
    return out


def _read_segment(txn, db, seg: int, keep: Optional[set] = None) -> dict[bytes, list[int]]:
    pfx = _page_prefix(seg)
    out: dict[bytes, list[int]] = {}
    cur = txn.cursor(db=db)
    ok = cur.set_range(pfx)
    while ok and cur.key().startswith(pfx):
        blob, lists = unpack(_decompressor().decompress(cur.value()))
        for t, p in zip(blob.split(b"\n"), lists):
            ids = _ids_decode(p)
            if keep is not None:
                ids = [i for i in ids if i in keep]
            if ids:
                out.setdefault(t, []).extend(ids)
        ok = cur.next()
    return out


def _merge(store) -> tuple[int, int]:
    """Merge small and half-dead segments. Returns (segments merged, writes made)."""
    st = state(store)
    small = sorted((s for s, d in st.segments.items()
                    if len(d["live"]) < MERGE_SMALL or len(d["live"]) * 2 < d["n"]),
                   key=lambda s: len(st.segments[s]["live"]))
    sparse = [s for s in small if len(st.segments[s]["live"]) * 2 < st.segments[s]["n"]]
    if len(small) < MERGE_MIN and not sparse:
        return 0, 0
    groups, cur, n = [], [], 0
    for s in small:
        k = len(st.segments[s]["live"])
        if cur and n + k > SEG_FILES:
            groups.append(cur)
            cur, n = [], 0
        cur.append(s)
        n += k
    if cur:
        groups.append(cur)
    merged = writes = 0
    for group in groups:
        if len(group) == 1 and group[0] not in sparse:
            continue

        def work(txn, db, group=group):
            m = _new_meta(txn, db)
            segs = _segments(txn, db)
            group = [s for s in group if s in segs]
            keep = set()
            tb = 0
            for s in group:
                keep.update(segs[s]["live"])
                tb += segs[s].get("tb", 0)
            postings: dict[bytes, list[int]] = {}
            for s in group:
                for t, ids in _read_segment(txn, db, s, keep).items():
                    postings.setdefault(t, []).extend(ids)
            for t in postings:
                postings[t] = sorted(set(postings[t]))
            for s in group:
                _delete_segment(txn, db, s)
            if keep:
                seg = m["next"]
                m["next"] += 1
                _write_segment(txn, db, seg, postings, keep, tb)
            txn.put(_META, pack(m), db=db)
            return len(group)
        merged += store.aux_write(DB, work)
        writes += 1
    return merged, writes


def rebuild(store, progress=None) -> dict:
    """Drop the whole index and build it again from the stored files."""
    def wipe(txn, db):
        cur = txn.cursor(db=db)
        if cur.first():
            while cur.delete():
                pass
    store.aux_write(DB, wipe)
    return sync(store, progress)


def index_bytes(store) -> int:
    """Bytes of keys and values the index holds (its share of the store)."""
    def work(txn, db):
        n = 0
        for k, v in txn.cursor(db=db):
            n += len(k) + len(v)
        return n
    return store.aux_read(DB, work) or 0


# ====================================================================== lookups
class _PageCache:
    """Decoded pages (the joined terms, the terms, their postings), a few hundred at a
    time."""

    def __init__(self, limit: int):
        self.limit = limit
        self.d: dict = {}
        self.lock = threading.Lock()

    def get(self, key, load):
        with self.lock:
            v = self.d.get(key)
        if v is None:
            blob, lists = unpack(_decompressor().decompress(load()))
            v = (blob.split(b"\n"), lists, blob)
            with self.lock:
                if len(self.d) >= self.limit:
                    self.d.pop(next(iter(self.d)))
                self.d[key] = v
        return v


_LONG = re.compile(rb"[^\n]{%d,}" % MAX_TERM)


_pages_cache = _PageCache(_PAGE_CACHE_PAGES)


def _page_at(cur, pfx: bytes, term: bytes) -> Optional[bytes]:
    """Key of the page of segment pfx whose range holds term (positions cur there)."""
    k = pfx + term
    if cur.set_range(k):
        if cur.key() == k:
            return cur.key()
        if not cur.prev():
            return None
    elif not cur.last():
        return None
    return cur.key() if cur.key().startswith(pfx) else None


def _segment_ids(txn, db, epoch: str, seg: int, cond: Condition) -> set[int]:
    pfx = _page_prefix(seg)
    cur = txn.cursor(db=db)
    out: set[int] = set()

    def load(key):
        return _pages_cache.get((epoch, key), lambda: txn.get(key, db=db))

    if cond.kind == "exact":
        key = _page_at(cur, pfx, cond.term)
        if key is None:
            return out
        terms, lists, _ = load(key)
        i = bisect.bisect_left(terms, cond.term)
        if i < len(terms) and terms[i] == cond.term:
            out.update(_ids_decode(lists[i]))
        return out
    if cond.kind == "prefix":
        key = _page_at(cur, pfx, cond.term)
        if key is None:
            if not cur.set_range(pfx):
                return out
            key = cur.key()
            if not key.startswith(pfx):
                return out
        while True:
            terms, lists, _ = load(key)
            i = bisect.bisect_left(terms, cond.term)
            while i < len(terms) and terms[i].startswith(cond.term):
                out.update(_ids_decode(lists[i]))
                i += 1
            if i < len(terms) or not cur.next() or not cur.key().startswith(pfx):
                return out
            key = cur.key()
    # suffix / infix: every term of the segment, searched in the page's joined terms (a
    # term cut at MAX_TERM may hold the word past its cut: kept as a maybe)
    needle = cond.term + (b"\n" if cond.kind == "suffix" else b"")
    ok = cur.set_range(pfx)
    while ok and cur.key().startswith(pfx):
        terms, lists, blob = load(cur.key())
        blob_end = blob + b"\n"
        hit = set()
        if _LONG.search(blob):          # rare: only pages holding a cut term pay for this
            hit.update(i for i, t in enumerate(terms) if len(t) >= MAX_TERM)
        j = blob_end.find(needle)
        while j >= 0:
            hit.add(blob_end.count(b"\n", 0, j))
            j = blob_end.find(needle, blob_end.find(b"\n", j) + 1)   # next term
        for i in hit:
            out.update(_ids_decode(lists[i]))
        ok = cur.next()
    return out


def candidates(store, phrase: str) -> Optional[set[int]]:
    """File ids whose terms allow the phrase (a superset of the files containing it), or
    None when the phrase has no word to narrow by (every file is a candidate)."""
    plan = _plan(conditions(phrase))
    if not plan or not _has_aux(store):
        return None

    def work(txn, db):
        m = _meta(txn, db)
        if m is None:
            return set()
        out: set[int] = set()
        for seg, d in _segments(txn, db).items():
            ids = set(d["live"])
            for cond in plan:
                if not ids:
                    break
                ids &= _segment_ids(txn, db, m["epoch"], seg, cond)
            out |= ids
        return out
    return store.aux_read(DB, work) or set()


# ====================================================================== queries
@dataclass
class Hit:
    name: str
    file_id: int
    message: Optional[int]      # 1-based, across the file's conversations; None: not known
    role: Optional[str]
    offset: int                 # byte offset of the match in the text view
    snippet: str

    def as_dict(self) -> dict:
        return {"file": self.name, "message": self.message, "role": self.role,
                "offset": self.offset, "snippet": self.snippet}


def _matcher(query: str, regex: bool, ignore_case: bool):
    """fn(text bytes) -> iterator of (start, end) byte offsets of matches."""
    if regex:
        try:
            rx = re.compile(query.encode("utf-8", "surrogatepass"), re.MULTILINE | (re.IGNORECASE if ignore_case else 0))
        except re.error as e:
            raise StowError(f"bad regular expression: {e}") from None
        return lambda data: ((m.start(), m.end()) for m in rx.finditer(data))
    if "\n" in query or "\r" in query:
        raise StowError("a search phrase is one line (grep -F reads each line as a pattern of its own)")
    if not query:
        raise StowError("empty search phrase")
    if ignore_case:
        rx = re.compile(re.escape(query), re.IGNORECASE)
        return lambda data: ((_b(data, m.start()), _b(data, m.end()))
                             for m in rx.finditer(decode_text(data)))
    pb = query.encode("utf-8", "surrogatepass")

    def find(data: bytes):
        i = data.find(pb)
        while i >= 0:
            yield i, i + len(pb)
            i = data.find(pb, i + 1)
    return find


def _b(data: bytes, char_offset: int) -> int:
    return len(decode_text(data)[:char_offset].encode("utf-8", "surrogatepass"))


def _regex_words(query: str) -> str:
    """A plain phrase every match of the regex contains, or "" (then every file is read)."""
    try:
        from re import _parser as sre  # Python 3.11+
    except ImportError:  # pragma: no cover - older Pythons
        import sre_parse as sre  # type: ignore
    try:
        parsed = sre.parse(query)
    except Exception:
        return ""
    best, cur = "", []
    LITERAL = sre.LITERAL if hasattr(sre, "LITERAL") else None
    for op, av in parsed:
        if op == LITERAL:
            cur.append(chr(av))
        else:
            s = "".join(cur)
            if len(s) > len(best):
                best = s
            cur = []
    s = "".join(cur)
    if len(s) > len(best):
        best = s
    return best if "\n" not in best else ""


def message_starts(store, name: str, text_len: int) -> Optional[list[tuple[int, str]]]:
    """(byte offset in the text view, role) where each message's block starts, from the
    parse of the original; None if the file's text cannot be matched to its messages."""
    from ..formats import parse
    from ..views import text as tv
    try:
        parsed = parse(store.get(name), name)
    except NotFound:
        return None
    header = getattr(tv, "_header", None)
    if header is None:
        return None
    expected = [(header(m, c.model), m.role) for c in parsed.conversations for m in c.messages]
    starts, pos, i = [], 0, 0
    for frag, is_content in tv.render(parsed):
        if not is_content and i < len(expected) and frag == expected[i][0]:
            starts.append((pos, expected[i][1]))
            i += 1
        pos += len(frag.encode("utf-8", "surrogatepass"))
    if i != len(expected) or pos != text_len:
        return None
    return starts


def _snippet(data: bytes, start: int, end: int) -> str:
    ls = data.rfind(b"\n", 0, start) + 1
    le = data.find(b"\n", end)
    le = len(data) if le < 0 else le
    lo = max(ls, start - SNIPPET * 2)
    hi = min(le, end + SNIPPET * 2)
    s = decode_text(data[lo:start])[-SNIPPET:] + decode_text(data[start:end]) + decode_text(data[end:hi])[:SNIPPET]
    return ("…" if lo > ls or len(decode_text(data[lo:start])) > SNIPPET else "") + s.replace("\t", " ") + \
           ("…" if hi < le or len(decode_text(data[end:hi])) > SNIPPET else "")


def _wanted(info, models, apps) -> bool:
    if models and not (info.model in models or any(m in models for m in (info.models or ()))):
        return False
    if apps and info.application not in apps:
        return False
    return True


def _candidate_infos(store, query: str, regex: bool, ignore_case: bool, do_sync: bool):
    """FileInfo of every file that may hold a match, in name order."""
    if do_sync and not getattr(store, "readonly", False):
        sync(store)
    phrase = _regex_words(query) if regex else query
    if (ignore_case or regex) and not phrase.isascii():
        phrase = ""       # terms are ASCII-lower-cased only: a non-ASCII case match reads all
    cands = candidates(store, phrase) if phrase else None
    st = state(store)
    if cands is None:
        return sorted(store.iter_files(), key=lambda i: i.name)
    infos = {}
    if not in_step(store, st):
        # files the index has not seen yet are read directly
        indexed = st.indexed()
        for i in store.iter_files():
            if i.file_id not in indexed or i.file_id in cands:
                infos[i.file_id] = i
    else:
        for fid in cands:
            try:
                infos[fid] = store.info_by_id(fid)
            except NotFound:
                pass
    return sorted(infos.values(), key=lambda i: i.name)


def search(store, query: str, *, regex: bool = False, ignore_case: bool = False,
           role: Optional[str] = None, models: Optional[set] = None, apps: Optional[set] = None,
           files_only: bool = False, per_file: int = 20, do_sync: bool = True) -> list[Hit]:
    """Hits of query in the text views of the stored files, in name order. files_only:
    one hit per file (message and role unknown), as `grep -l` and search/QUERY/ want."""
    match = _matcher(query, regex, ignore_case)
    if role:
        files_only = False
    hits: list[Hit] = []
    for info in _candidate_infos(store, query, regex, ignore_case, do_sync):
        if not _wanted(info, models, apps):
            continue
        data = _text(store, info)
        if not data:
            continue
        spans = match(data)
        first = next(spans, None)
        if first is None:
            continue
        if files_only:
            hits.append(Hit(info.name, info.file_id, None, None, first[0], _snippet(data, *first)))
            continue
        starts = message_starts(store, info.name, len(data))
        offs = [s for s, _ in starts] if starts is not None else None
        n = 0
        seen_msgs = set()
        for s, e in _chain(first, spans):
            msg = r = None
            if offs is not None:
                k = bisect.bisect_right(offs, s) - 1
                if k >= 0:
                    msg, r = k + 1, starts[k][1]
            if role and r != role:
                continue
            if msg is not None and msg in seen_msgs:
                continue
            seen_msgs.add(msg)
            hits.append(Hit(info.name, info.file_id, msg, r, s, _snippet(data, s, e)))
            n += 1
            if n >= per_file:
                break
    return hits


def _chain(first, rest):
    yield first
    yield from rest


def file_matches(store, info, query: str) -> bool:
    """Whether one file's text view holds the phrase (a lookup in search/QUERY/)."""
    match = _matcher(query, False, False)
    data = _text(store, info)
    return bool(data) and next(match(data), None) is not None


def matching_files(store, query: str, **kw) -> list:
    """FileInfo of the files whose text view holds query (the mount's search/QUERY/)."""
    out = []
    names = {h.name for h in search(store, query, files_only=True, **kw)}
    for n in sorted(names):
        try:
            out.append(store.info(n))
        except NotFound:
            pass
    return out


class Syncer:
    """Runs sync(store) in a background thread after changes (the mount's ingests):
    one run at a time; a change during a run asks for one more run after it."""

    def __init__(self, store, log=None):
        self.store = store
        self.log = log
        self._lock = threading.Lock()
        self._again = False
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    def stop(self, timeout: Optional[float] = 10.0) -> None:
        """No new runs; wait for the one under way (call before the store is closed)."""
        with self._lock:
            self._stopping = True
            self._again = False
            t = self._thread
        if t is not None:
            t.join(timeout)

    def kick(self) -> None:
        with self._lock:
            if self._stopping:
                return
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return
            self._thread = threading.Thread(target=self._run, name="stowfs-search-sync", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                sync(self.store)
            except ReadOnly:
                return
            except Exception as e:     # logged, never silent; the next query syncs again
                if self._stopping or getattr(self.store, "env", True) is None or \
                        "closed/deleted/dropped" in str(e):
                    if self.log is not None:   # the store was closed (unmount) under the sync
                        self.log.info("search index sync stopped: the store was closed")
                    return
                if self.log is not None:
                    self.log.error("search index sync failed: %s", e, exc_info=True)
            with self._lock:
                if not self._again:
                    self._thread = None
                    return
                self._again = False

    def wait(self, timeout: Optional[float] = None) -> None:
        t = self._thread
        if t is not None:
            t.join(timeout)
