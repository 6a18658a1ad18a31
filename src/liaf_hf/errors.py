"""The library's own error types, so callers can catch bad input without catching everything."""


class LiafError(Exception):
    """Base class of every error liaf-hf raises on purpose."""


class DataError(LiafError, ValueError):
    """Input data (an annotation file, an image, a label line) is malformed or inconsistent.

    The message always names the file and, where there is one, the record (annotation id, image id,
    line number) and what is wrong with it.
    """
