"""Building blocks of ``tools/bench``: corpora, peer systems, measurements, reports."""
