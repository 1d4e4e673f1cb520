"""Failed reads and writes, said in a few words for the one-line errors the user sees."""

import errno


def reason(error: BaseException) -> str:
    """The operating system's reason for a failed write or read (`No space left on device`), else the error's
    first line, without the temporary file names TensorFlow's savers put first."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.strerror or errno.errorcode.get(error.errno, str(error.errno))
    text = str(getattr(error, "message", None) or error)
    for known in ("No space left on device", "Read-only file system", "Permission denied", "Disk quota exceeded"):
        if known in text:
            return known
    first = (text.strip().splitlines() or [type(error).__name__])[0]
    return first.split("}} ", 1)[-1][:200]  # TensorFlow prefixes the op: {{function_node ...}}


def fix(key: str, error: BaseException) -> str:
    """What to do about a failed write to the folder `key` names: room on a full disk, else another folder."""
    if reason(error) in ("No space left on device", "Disk quota exceeded"):
        return f"free space there, or point {key} at another folder"
    return f"point {key} at a writable folder"
