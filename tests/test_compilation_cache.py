"""The persistent compilation cache (`jhpe.compilation_cache`): where it goes, how it is
turned off, and that a second process reads what the first one wrote."""

import json
import os
import pathlib
import subprocess
import sys

from jhpe import compilation_cache

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_folder_follows_the_environment():
  assert compilation_cache.default_dir({'JHPE_COMPILATION_CACHE': '/x/y'}) == '/x/y'
  assert compilation_cache.default_dir({'JHPE_COMPILATION_CACHE': ''}) == ''
  assert compilation_cache.default_dir({'XDG_CACHE_HOME': '/c'}) == '/c/jhpe/jax'
  home = os.path.expanduser('~')
  assert compilation_cache.default_dir({}) == os.path.join(home, '.cache', 'jhpe', 'jax')


def test_an_empty_folder_name_turns_the_cache_off():
  assert compilation_cache.enable('') is None


def test_an_unwritable_folder_leaves_the_cache_off(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  assert compilation_cache.enable(str(blocker / 'cache')) is None


_CHILD = """
import json, sys, time
from jhpe import compilation_cache
compilation_cache.MIN_COMPILE_SECONDS = 0.0  # Cache even this small program.
compilation_cache.enable(sys.argv[1])
import jax, jax.numpy as jnp
from jax._src import monitoring
hits = []
monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if 'cache_hits' in event else None)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
f(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({'hits': len(hits)}))
"""


def _run_child(cache_dir):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', _CHILD, str(cache_dir)], env=env,
                       capture_output=True, text=True, check=True, cwd=REPO_ROOT)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_first_ones_compilation(tmp_path):
  cache_dir = tmp_path / 'cache'
  first = _run_child(cache_dir)
  assert first['hits'] == 0
  assert any(cache_dir.iterdir()), 'the first process wrote nothing into the cache'
  second = _run_child(cache_dir)
  assert second['hits'] >= 1
