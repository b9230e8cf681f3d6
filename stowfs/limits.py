"""Every size limit and tuning constant of the store, named in one place."""

# Segments: strings shorter than this stay inline in the skeleton, because a reference
# (16-byte hash) plus an index entry costs more than the string itself.
MIN_SEGMENT = 48
# Strings longer than this are not lifted out as one segment; they stay in the skeleton
# stream, which is chunked (so they still deduplicate, by chunk).
MAX_SEGMENT = 4 << 20
# Token-id arrays with fewer ids than this stay inline.
MIN_TOKENS = 16

# Content-defined chunking of skeletons and opaque files.
CHUNK_MIN = 2 << 10
CHUNK_AVG = 8 << 10
CHUNK_MAX = 64 << 10
# Piece lists are cut the same way, smaller: what a grown file adds is a few records.
PIECES_CHUNK_MIN = 512
PIECES_CHUNK_MAX = 16 << 10
PIECES_CHUNK_MASK = 0x0F         # one anchor in 16 qualifies: chunks of ~2 KiB

# Blocks: segments are packed into blocks that are compressed as a whole.
BLOCK_TARGET = 1 << 20          # raw bytes per block written at ingest
BLOCK_TARGET_COMPACT = 4 << 20  # raw bytes per block written by compact
SHARED_BLOCK_MAX_FILE = 4 << 20  # put_many: smaller files share blocks with the rest of their batch
MAX_BLOCK_RAW = 16 << 20        # no block decodes to more than this (bounded decode)

# zstd levels.
LEVEL_INGEST_V2 = 3
LEVEL_COMPACT = 19
LEVEL_DELTA = 9                  # deltas are small: a higher level costs little

# Near-duplicate deltas (neardup.py finds candidates, codec.encode_delta encodes).
DELTA_MIN = 2 << 10              # smaller segments: a delta saves too little to pay
DELTA_MAX = 1 << 20              # larger ones: too slow to encode against a base
DELTA_MAX_DEPTH = 3              # a read decodes at most this many bases first
DELTA_CANDIDATES = 2             # bases tried per new segment (a delta encode each)
LSH_BUCKET = 16                  # segments one LSH bucket holds at most
SIGNATURE_CACHE = 4096           # signatures of recent segments kept in memory (128 B each)
DELTA_KEEP = 0.5                 # kept when at most this share of the plain zstd frame
NEAR_THRESHOLD = 0.5             # default estimated-Jaccard threshold for a candidate

# Dictionaries: trained from the store's own segments.
DICT_SIZE = 64 << 10
DICT_TRAIN_MIN_BYTES = 1 << 20   # first training once this much new content exists
DICT_SAMPLE_BYTES = 8 << 20      # at most this much sample content per training
DICT_RETRAIN_FACTOR = 4          # retrain when stored content grows by this factor
DICT_ROTATE_GAIN = 0.03          # ... and switch to the new one if it is this much better

# Shared substrings (substrings.py): training defaults.
SUBSTRING_SAMPLES = 2000         # segments sampled
SUBSTRING_MIN_OCCURRENCES = 3    # distinct samples a substring must occur in
SUBSTRING_MAX_SAMPLE = 256 << 10 # longer segments are not sampled

# Parsing: files larger than this are stored (deduplicated, chunked) but not parsed into
# conversations, so ingest memory stays bounded.
MAX_PARSE_BYTES = 128 << 20
# JSONL lines longer than this are kept as skeleton bytes, not split into strings.
MAX_LINE_BYTES = 64 << 20
# Streaming: how much of a large file is read at a time.
READ_WINDOW = 8 << 20

# Metadata index (model, app, day -> files): one entry holds a bitmap of this many file ids.
INDEX_SHARD = 256

# Manifest groups (written by compact): headers of this many consecutive files share one
# compressed entry; piece lists up to INLINE_PIECES bytes that no other file shares move
# into their file's header; a group holds at most HEADER_GROUP_BYTES of packed headers.
HEADER_GROUP_FILES = 256
INLINE_PIECES = 8 << 10
HEADER_GROUP_BYTES = 1 << 20
HEADER_GROUP_CACHE = 32          # decoded groups kept per Store

# Names.
MAX_NAME_COMPONENT = 255
MAX_NAME_BYTES = 4096

# LMDB map size: start here and grow in steps; the map is sparse, it costs no disk.
MAP_SIZE_INITIAL = 1 << 30
MAP_SIZE_STEP = 1 << 30
MAP_SIZE_MAX = 1 << 40

# Readers: decoded blocks kept in memory per Store.
BLOCK_CACHE_BYTES = 48 << 20

# ---------------------------------------------------------------- format 3 (stowfs.store)
# Content blocks: stream positions per block. Measured on the bench's chats (35 MB,
# concatenated, zstd -19): 4 MiB blocks 5.07x, 8 MiB 5.23x, 16 MiB 5.36x, 32 MiB 5.42x.
BLOCK_SIZE = 16 << 20
MIN_DECODED_BLOCKS = 2           # the decoded-block cache holds at least this many blocks
MAX_FRAME_RAW = 64 << 20         # no frame decodes to more than this (bounded decode)
ZSTD_MAX_WINDOW_LOG = 26         # compression window: the whole block
PIECE_HASH_STEP = 256 << 10      # a partial decode checks what it hands out per piece
STORED_PIECE_STEP = 64 << 10     # ... of the stored payload (format 6): ~0.3-1 MiB decoded
PARTIAL_DECODE_STEP = 64 << 10   # compressed bytes fed to the decoder at a time
AHEAD_STEP_MAX = 1 << 20         # ... by the decode-ahead thread, doubling up to this
# Fragments that decode to less are decoded on each read and not cached: the open block of
# a mount that takes inbox files is hundreds of fragments of a few KB, whose decode costs
# microseconds, and the files read from them are cached whole by the mount (fs/cache.py).
CACHED_FRAGMENT_MIN = 64 << 10
# A part of a file whose block does not match its frame hash (its pieces do: its ranges
# are not vouched for) is served from the whole file, read once and checked against the
# file's checksum, and kept by its reader: files up to this size (verify names the larger).
UNMATCHED_WHOLE_MAX = 256 << 20
DECODED_ENTRY_COST = 2 << 10     # what a cached decoder holds besides its bytes
LEVEL_INGEST = 9                 # blocks sealed by ingest (chats: 1.14x of level 19, 70 MB/s)
LEVEL_FRAGMENT = 3               # fragments of the open block, rewritten later
LEVEL_META_LIVE = 3              # record groups and name pages written by a put
COMPRESS_THREADS = 2
BATCH_BYTES = 32 << 20           # ingest commits a batch at this many input bytes
PREPARE_GROUP_FILES = 32         # ingest hands its workers tasks of at most this many files
PREPARE_GROUP_BYTES = 1 << 20    # ... or about this many input bytes
PREPARE_AHEAD_BYTES = 64 << 20   # input bytes handed to the workers ahead of the stores

# Dedup anchors (anchors.py): a window of ANCHOR_WINDOW bytes, one anchor per about
# 2**ANCHOR_BITS bytes; repeats shorter than MIN_MATCH are left to zstd.
ANCHOR_WINDOW = 32
ANCHOR_BITS = 11
ANCHOR_MIN_GAP = 64
ANCHOR_SCAN_CHUNK = 1 << 20
ANCHOR_RUNS_MAX = 4
MIN_MATCH = 512
LONG_MATCH = 8 << 10             # a repeat inside the open block is taken from this long
# A repeat in an earlier block costs a read of that block: a cold read decodes it up to the
# repeat (tens of ms) and may evict the block being read. A file under FAR_FILE takes
# none (it is stored whole in the open block); a larger file, whose read decodes more
# anyway, takes them from MIN_MATCH. Measured on all 17,671 ShareGPT files (124 MB): 1,108 repeats in earlier
# blocks, all in files under 16 KiB (6.6 MB: near-copies of other conversations), made a
# cold cat of everything take 50 s; without them 13 s, for a compacted store 5% larger.
# Other corpora: chats 5.18x -> 5.12x, sessions 99.9x -> 98.9x, api-log and mixed the same
# (FAR_FILE at 1 MiB: sessions 94.3x, its many ~0.5 MB files lost their shared prefixes).
FAR_FILE = 64 << 10

# Records and names.
GROUP_BITS = 9                   # 512 records a group
# Decoded groups and name pages kept per Store: each group ~0.4 MB decoded (512 records,
# facts left packed) and ~3 ms to decode again; a page of 512 names ~70 KB. Bounded so
# that a daemon reading a large store does not hold every record (64 groups kept all of
# a 17,671-file store: 13 MiB).
GROUP_CACHE = 4
NAME_PAGE_ENTRIES = 512
NAME_PAGE_CACHE = 8
NAME_KEY_BYTES = 480             # LMDB keys are at most 511 bytes
RECLAIM_SLACK = 0.2             # free pages share of the LMDB file at which they are given back
ALONE_BYTES = 64 << 20          # ingest stores a larger file in a transaction of its own
IDLE_COMPACT_SECONDS = 5.0       # the mount compacts once nothing was written for this long
IDLE_RELEASE_SECONDS = 10.0      # the mount lets its decoded caches go once nothing was read for this long
SWAP_WAIT_SECONDS = 120          # opening a store waits this long for a compacting copy to finish
MAX_READERS = 126                # LMDB reader slots (lock.mdb, 8 KiB, while the store is open); threads and processes reading at once
