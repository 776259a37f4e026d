"""Bounds on what we read from files we did not write (weights and the YAML stored in them, dataset YAMLs,
images, labels, caches, ONNX metadata, last.pt for --resume). README "What is trusted" tabulates them.

Every bound is checked where the file is read, before the work it would cost, and answered by one error
that names the file and what is out of bounds.
"""

from utils.cli import UserError

STRUCTURE_NODES = 200_000  # containers and scalars in one stored structure, a shared reference counted each time
STRUCTURE_DEPTH = 64  # nesting of lists/dicts in one stored structure
NAME_CHARS = 1_000  # characters of one class name
MAX_IMAGE_PIXELS = 89_478_485  # width x height of one image (PIL's decompression-bomb figure, ~0.25 GB as BGR)
MAX_IMAGE_SIDE = 65_500  # pixels of one image side (JPEG's own maximum)
MAX_LABEL_BYTES = 10 << 20  # one label .txt file
MAX_LABEL_ROWS = 10_000  # objects in one label file
GENERATOR_IMAGES = 100_000  # images a dataset YAML's `download:` generator may be asked for
GENERATOR_TIMEOUT_S = 3_600  # wall time of one `download:` generator run
DRY_RUN_ELEMENTS = 50_000_000  # elements of one layer's input or output in the stride dry run of a stored model
DRY_RUN_CALLS = 5_000  # leaf-module calls in that dry run (yolov5x: 381)
DRY_RUN_WORK = 300_000_000  # input elements summed over those calls (yolov5x at 256 px: 58 million)


class LimitError(UserError, ValueError):
    """Data from a file that exceeds one of the bounds above (the message names the file and the bound)."""


def check_structure(obj, where, nodes=STRUCTURE_NODES, depth=STRUCTURE_DEPTH, error=LimitError):
    """Refuse a plain structure (dicts, lists, tuples, scalars) larger than ``nodes`` or deeper than ``depth``.

    Shared references (pickle memo, YAML aliases) are counted at every place they appear, as any code
    walking the structure would meet them, so a few bytes that expand to billions of nodes stop after
    ``nodes`` steps. Returns the node count; raises ``error`` naming ``where``.
    """
    stack, count = [(obj, 0)], 0
    while stack:
        x, level = stack.pop()
        count += 1
        if count + len(stack) > nodes:
            raise error(f"{where}: more than {nodes:,} nodes (shared references counted each time they appear)")
        if level > depth:
            raise error(f"{where}: nested deeper than {depth} levels")
        if isinstance(x, dict):
            stack.extend((v, level + 1) for kv in x.items() for v in kv)
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend((v, level + 1) for v in x)
    return count


MAX_NAMES = 100_000  # class names in one file (models.yolo.UNTRUSTED_LIMITS['nc'] too)
_SCALARS = (str, int, float)


def _class_id(k):
    """A class id as written in a file: an int (not a bool) or a short ASCII digit string -> int, else None."""
    if isinstance(k, int) and not isinstance(k, bool):
        return k
    if isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 6:
        return int(k)
    return None


def check_names(value, where, error=LimitError, nc=None):
    """Class names read from a file -> {0: str, 1: str, ...}; ``error`` naming ``where`` when they are not that.

    A list (or tuple) of names, or a dict whose keys are the ids 0..n-1 (ints or digit strings); each name a
    short scalar (numbers become strings, as YAML writes bare numbers). nc: the count they must match.
    """
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, dict) or not 0 < len(value) <= MAX_NAMES:
        got = f"{len(value)} names" if isinstance(value, dict) else f"a {type(value).__name__}"
        raise error(f"{where}: class names must be a list or a dict of 1..{MAX_NAMES:,} names, got {got}")
    ids = {_class_id(k): v for k, v in value.items()}
    if None in ids or sorted(ids) != list(range(len(value))):
        bad = next((k for k in value if _class_id(k) is None), None)
        detail = f"key {str(bad)[:40]!r} is not a class id" if bad is not None else "ids have gaps or repeats"
        raise error(f"{where}: class names must be numbered 0..{len(value) - 1} ({detail})")
    bad = next((v for v in ids.values() if isinstance(v, bool) or not isinstance(v, _SCALARS)
                or len(str(v)) > NAME_CHARS), None)
    if bad is not None:
        raise error(f"{where}: class name {str(bad)[:40]!r} is not a short string (a {type(bad).__name__}; "
                    f"limit {NAME_CHARS} characters)")
    if nc is not None and len(ids) != nc:
        raise error(f"{where}: {len(ids)} class names for nc={nc}")
    return {k: str(ids[k]) for k in sorted(ids)}
