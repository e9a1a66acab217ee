"""Writing outputs to disk: file naming, atomic writes and embedded generation metadata."""
