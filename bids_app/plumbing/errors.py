"""Exit codes (BIDS execution-spec reserved codes, sysexits), the one-line user error and
the one-line form of any exception; a leaf module every layer may import."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # some image failed; everything else was written
    PARTIAL = 3  # no image failed, but some have partial results (e.g. no final labels)
    VALIDATION = 16  # the input dataset failed BIDS validation
    BAD_LEVEL = 17  # unknown analysis level
    EMPTY_SELECTION = 18  # filters selected nothing, or a session label does not exist
    USAGE = 64  # command used incorrectly
    DATA_ERROR = 65  # two selected images would write the same outputs
    NO_INPUT = 66  # a participant asked for has no usable image / input file missing
    SOFTWARE = 70  # an unexpected error (a bug): traceback in a crash file
    CANT_CREATE = 73  # output or work folder cannot be created
    IO_ERROR = 74  # writing outputs failed
    TEMP_FAIL = 75  # another run holds some image's lock: not done here; rerun after it
    CONFIG = 78  # model weights missing or corrupt


EXIT_CODE_HELP = """\
exit codes:
  0   success: every selected image is segmented (now or by an earlier run)
  1   some image failed (now or, unchanged, in an earlier run); the others were written
      (see the status table and logs/)
  3   no image failed, but some are partial (cord and canal without final labels; the
      status table says why and what to do)
  16  the input dataset failed BIDS validation (see --skip-bids-validation)
  17  unknown analysis level (use participant or group)
  18  the selection is empty, or a session label does not exist
  64  command used incorrectly (unknown option, bad value, bad paths, a --device that
      cannot be used here)
  65  two selected images would write the same outputs (e.g. x_T2w.nii and x_T2w.nii.gz)
  66  a participant given by label is missing or has no usable image (group: no records,
      or outputs a status stamp lists are gone; the group tables are still written)
  70  unexpected error (a bug): one line here, the traceback in a logs/crash-*.txt file
  73  the output or work folder cannot be created
  74  input/output error while writing outputs
  75  no image failed, but another run is segmenting some selected image (its lock is
      held), so this run did not do it: run again once that run has finished
  78  model weights missing or corrupt (see `spineseg weights`)
"""


class UserError(Exception):
    """A failure the user can fix: printed as one line `spineseg: error: ...`, no traceback."""

    def __init__(self, code: ExitCode, message: str):
        super().__init__(message)
        self.code = code


def one_line(error: BaseException, *, with_type: bool = False) -> str:
    """The first line of an exception's message (its type name when the message is empty).

    Every per-image reason and every console error is one line; `with_type` keeps the class
    name for errors that are not ours (QC bugs, library errors), so the line says what broke.
    """
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0]}" if with_type else lines[0]


def without_name(text: str, name: str) -> str:
    """`text` without a leading "<name>: ", so that a line that already names the file (the
    log line, the status table row) names it once."""
    return text.removeprefix(f"{name}: ")
