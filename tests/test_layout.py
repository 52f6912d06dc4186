"""The layout promises of docs/design.md that a refactoring could quietly break: the train
step and the inference layer do not reach the dataset registry, and no module grows past
what a reader takes in at once."""

import ast
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / 'jhpe'
MAX_LINES = 350
# The train step gets its collaborators as arguments; the inference layer (and the
# predictor over it) works for any model and image, with no dataset code.
NO_DATASET_CODE = ('jhpe/train/steps.py', 'jhpe/train/augment.py', 'jhpe/inference.py',
                   'jhpe/codecs.py', 'jhpe/predict.py', 'jhpe/predict_cli.py')


def _imported_modules(path):
  """Every module an import statement in `path` names, at any depth (lazy ones too)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


@pytest.mark.parametrize('relative', NO_DATASET_CODE)
def test_no_dataset_code_below_the_step_and_the_predictor(relative):
  imported = _imported_modules(REPO_ROOT / relative)
  reached = sorted(m for m in imported if m == 'jhpe.data' or m.startswith('jhpe.data.')
                   or m.split('.')[0] in ('tensorflow_datasets', 'grain'))
  assert not reached, f'{relative} imports {reached}'


def test_the_import_check_sees_lazy_imports(tmp_path):
  path = tmp_path / 'm.py'
  path.write_text('def f():\n  from jhpe.data import registry\n  return registry\n')
  assert 'jhpe.data.registry' in _imported_modules(path)


def test_no_module_is_longer_than_a_reader_takes_in():
  long = {str(p.relative_to(REPO_ROOT)): n for p in sorted(PACKAGE.rglob('*.py'))
          if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, f'modules over {MAX_LINES} lines (split them by responsibility): {long}'
