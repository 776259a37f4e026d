"""How entry points end: a user error (bad file, bad option, bad dataset) is one line on stderr and a
non-zero exit, never a Python traceback. Set YOLOV5KD_TRACEBACK=1 (or pass --verbose-errors) to see it.

Library code raises ``UserError`` (or one of its subclasses) for anything the user can fix; the
classic ``FileNotFoundError`` / ``PermissionError`` / ``ValueError`` raised on bad input count too, and so
does any other ``OSError`` that names its path (e.filename: a read-only or full disk under --project;
writes of our outputs go through utils.run_dirs.writing, which names the path). An OSError naming no path,
and anything else, is a bug and keeps its traceback.
"""

import os
import sys

import yaml

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130
TRACEBACK_ENV = "YOLOV5KD_TRACEBACK"
TRACEBACK_FLAG = "--verbose-errors"


class UserError(Exception):
    """A problem with the user's input (a file, an option, a dataset); the message names it."""


class OptionError(UserError, ValueError):
    """A command-line option or hyperparameter value that cannot work."""


USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError, ValueError, yaml.YAMLError)


def add_cfg_argument(parser):
    """--cfg for tools that load weights: your own model YAML (code you trust) instead of the stored one."""
    parser.add_argument("--cfg", type=str, default="",
                        help="your model YAML to rebuild the weights' architecture from (needed when they use a "
                             "block of yours, named by dotted path; the YAML stored in weights never imports)")
    return parser


def is_user_error(e):
    """One of USER_ERRORS, or an OSError that names its path (the one line then says which file)."""
    return isinstance(e, USER_ERRORS) or (isinstance(e, OSError) and e.filename not in (None, ""))


def _show_traceback(argv):
    return os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0") or TRACEBACK_FLAG in argv


def error_message(e):
    """One line for the user: the message (which names the file), else the exception's class name; an
    OSError's path (and its second path, of a rename) is added when the message lacks it."""
    text = str(e).strip() or type(e).__name__
    if isinstance(e, OSError):
        for name in (e.filename2, e.filename):
            if name not in (None, "") and str(name) not in text:
                text = f"{name}: {text}"
    return " ".join(text.split("\n")[0].split()) if len(text) > 2000 else text


def run_cli(main, parse_opt, prog, argv=None, echo=None):
    """parse_opt(argv) then main(opt); user errors end as ``prog: error: message`` with exit status 1.

    echo: log the parsed options on one line under this name first (as upstream's val/detect/export do).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = _show_traceback(argv)
    argv = [a for a in argv if a != TRACEBACK_FLAG]
    try:
        opt = parse_opt(argv)
        if echo:
            from utils.general import print_args

            print_args(opt, echo)
        return main(opt)
    except (*USER_ERRORS, OSError) as e:
        if verbose or not is_user_error(e):
            raise
        print(f"{prog}: error: {error_message(e)}", file=sys.stderr)
        print(f"{prog}: (set {TRACEBACK_ENV}=1 to see the traceback)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        if verbose:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
