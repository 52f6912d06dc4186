"""Shared pytest setup: jhpe's CPU defaults for the whole session, and the shared data."""

import hashlib
import os
import pathlib
import tempfile

import pytest

from jhpe import compilation_cache
from jhpe import cpu_defaults

# The tests run JAX on the CPU: its measured XLA flags and malloc settings, as the entry
# points apply them. pytest imports this file before any test module, so before JAX starts.
cpu_defaults.apply()
# The entry points started by tests (subprocesses) keep their compilation cache out of the
# user's ~/.cache: one folder per user and checkout, shared by pytest-xdist's workers, so a
# tiny config compiled by one test is read by the next.
os.environ.setdefault(
    "JHPE_COMPILATION_CACHE",
    os.path.join(tempfile.gettempdir(),
                 f"jhpe-test-compilation-cache-{os.getuid()}-"
                 + hashlib.sha1(str(pathlib.Path(__file__).resolve()).encode()).hexdigest()[:8]))
# The tests' own jitted steps use it too (those that take >= 1 s to compile), so a second
# run of the suite on the same machine reads them instead of compiling them again.
compilation_cache.enable(os.environ["JHPE_COMPILATION_CACHE"])

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_data_dir():
  """The real datasets at ../shared/data (beside the repository).

  Skips the test when the folder is absent, except under CI (CI=true), where a missing
  folder is an error: CI promises the data is there.
  """
  path = REPO_ROOT.parent / "shared" / "data"
  if not path.is_dir():
    message = f"the shared data folder {path} is absent (expected ../shared/data)"
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(f"CI=true but {message}.")
    pytest.skip(f"{message}; place the LSP archives there to run this test.")
  return path
