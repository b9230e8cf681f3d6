"""Questions asked of the whole store, and data taken out of it (issue 15).

- query.py: conversations, messages, tokens and bytes per model / app / kind / day /
  format, from the files' records (FileInfo and its facts), never a decode.
- export.py: chat-format training records (JSONL, a Hugging Face dataset, Parquet),
  streamed, with (user, assistant) pair deduplication across the store.
- search_index.py: a full-text inverted index kept in the store's `aux:search` database,
  derived and rebuildable, synchronised by file id; results verified on the text view.
- semantic.py: offline embeddings of conversations (a static model shipped inside a PyPI
  wheel), semantic search, k-means++ clusters and outliers.

Everything here uses only the public Store API (iter_files, info_by_id, get, aux_read,
aux_write, generation, stats), so it does not depend on how the store is built.
"""
