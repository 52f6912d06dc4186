"""Atomic file writes (a crash or a kill never leaves half a file behind), and JSON reads
whose errors name the file.

Every file jhpe writes for a reader (config.json, eval JSON, predictions, metrics.jsonl
rewrites, exported models) goes through `write_atomic`: the data goes to a temporary file
in the same folder, which is renamed over the target (a rename within one file system is
atomic on POSIX), so a reader sees the old file or the new one, never a mix. The
temporary name is fresh (mkstemp, O_EXCL) and the rename replaces a symbolic link rather
than writing through it; the files opened in place (the workdir's .lock, metrics.jsonl)
go through `open_no_follow`, so a link planted in a workdir never redirects a write.
"""

import errno
import json
import os
import tempfile

_NO_FOLLOW_MODES = {'a': os.O_WRONLY | os.O_APPEND, 'a+': os.O_RDWR}


def write_atomic(path, data):
  """Writes `data` (str or bytes) to `path` atomically, creating its folder."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path),
                             suffix='.tmp')
  try:
    with os.fdopen(fd, 'w' if isinstance(data, str) else 'wb') as f:
      f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from other users.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def write_json(path, data, indent=1):
  """`write_atomic` of `data` as JSON (indent None: one line)."""
  return write_atomic(path, json.dumps(data, indent=indent))


def read_json(path, label=None):
  """The JSON value in `path`; a missing, unreadable or malformed file is one ValueError
  naming `label` (e.g. '--boxes=dets.json'; default: the path)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{label or path}: not a readable JSON file ({e}).') from e


def open_no_follow(path, mode='a'):
  """Opens `path` to append ('a') or to read and write ('a+', not truncating), creating it,
  without following a symbolic link (O_NOFOLLOW): a link there is a ValueError naming it."""
  try:
    fd = os.open(path, _NO_FOLLOW_MODES[mode] | os.O_CREAT | os.O_NOFOLLOW, 0o644)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise ValueError(f'{path} is a symbolic link; jhpe does not write through links '
                       'inside a workdir: remove it.') from None
    raise
  return os.fdopen(fd, 'a' if mode == 'a' else 'r+')
