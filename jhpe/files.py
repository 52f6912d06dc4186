"""Atomic file writes: a crash or a kill never leaves half a file behind.

Every file jhpe writes for a reader (config.json, eval JSON, predictions, metrics.jsonl
rewrites, exported models) goes through `write_atomic`: the data goes to a temporary file
in the same folder, which is renamed over the target (a rename within one file system is
atomic on POSIX), so a reader sees the old file or the new one, never a mix.
"""

import json
import os
import tempfile


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
