class TuneError(Exception):
    """A problem the user can fix (a bad option, search-space entry or metric), reported as one
    line, `error: <option, param or file>: ...`, and exit status 1."""
