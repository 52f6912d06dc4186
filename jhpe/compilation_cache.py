"""JAX's persistent compilation cache, on by default for the entry points.

A compiled train step, evaluation step or predictor is written to a cache folder keyed by
the program and the compiler's flags, so the second start of the same config (a resume, a
second evaluation, the next sweep point with the same shapes) loads it instead of
compiling again. `enable` is called by the entry points (experiments, the predict CLI);
`import jhpe` sets nothing. The folder, in this order:
- the `--compilation_cache` flag of an entry point ('' turns the cache off);
- the environment variable JHPE_COMPILATION_CACHE ('' turns it off);
- `$XDG_CACHE_HOME/jhpe/jax` (`~/.cache/jhpe/jax`).

Only programs that took at least `MIN_COMPILE_SECONDS` to compile are written: the cache
holds the expensive steps, not every small jitted helper.
"""

import os
from typing import Optional

ENV_VAR = "JHPE_COMPILATION_CACHE"
MIN_COMPILE_SECONDS = 1.0


def default_dir(environ=os.environ) -> str:
  """The cache folder when no flag is given: JHPE_COMPILATION_CACHE, else the user cache."""
  if ENV_VAR in environ:
    return environ[ENV_VAR]
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jhpe", "jax")


def enable(cache_dir: Optional[str] = None) -> Optional[str]:
  """Points JAX's persistent compilation cache at `cache_dir` (None: `default_dir()`).

  Returns the folder, or None when the cache is off ('' given) or the folder cannot be
  created (a read-only home: the run goes on, compiling as without a cache).
  """
  import jax  # pylint: disable=g-import-not-at-top
  cache_dir = default_dir() if cache_dir is None else cache_dir
  if not cache_dir:
    return None
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError:
    return None
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return cache_dir
