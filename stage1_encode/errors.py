"""Stage 1's own error: a failure the user can act on, reported as one line (identity mismatch, full disk, …)."""


class Stage1Error(RuntimeError):
    """A failure the user can act on, reported as one line (identity mismatch, full disk, …)."""
