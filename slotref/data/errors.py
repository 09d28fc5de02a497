"""The two errors of slotref.data; each message is one line naming the file."""


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file and the problem."""


class ConvertError(ValueError):
    """Bad converter input; the message is one line naming the file and record."""
