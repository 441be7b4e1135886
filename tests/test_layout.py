"""The project's layout: imports run one way with no cycle (support/ below the chapter's files, helpers/ above
them), each file says its job on its first line and stays short, and a default epoch calls nothing but the
chapter's own loss."""
import ast
import cProfile
import os
import pstats

import pytest
import torch

import train
from common import ROOT

CHAPTER = ['data', 'model', 'losses', 'train']


def project_modules():
    """{module name: path} of every Python file of the project (tests aside)."""
    modules = {}
    for folder in ('', 'support', 'helpers'):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith('.py'):
                module = name[:-3] if not folder else f"{folder}.{name[:-3]}"
                modules[module.removesuffix('.__init__')] = os.path.join(ROOT, folder, name)
    return modules


MODULES = project_modules()


def imports_of(path, top_level_only=False):
    """The project modules that the file at `path` imports, wherever the import statement is (in a function
    too, unless top_level_only)."""
    tree = ast.parse(open(path, encoding='utf-8').read())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES}
    return found - {'support', 'helpers'}  # the packages' own __init__ import nothing


GRAPH = {module: imports_of(path) for module, path in MODULES.items()}


def find_cycle(graph):
    """One import cycle as a list of modules [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = 'open'
        stack.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == 'open':
                return stack[stack.index(imported):] + [imported]
            if imported not in state:
                cycle = visit(imported)
                if cycle:
                    return cycle
        state[module] = 'done'
        stack.pop()
        return None
    return next((cycle for module in sorted(graph) if module not in state for cycle in [visit(module)] if cycle), None)


def test_no_module_imports_itself_through_others():
    assert find_cycle(GRAPH) is None, ' -> '.join(find_cycle(GRAPH))


def test_the_cycle_finder_finds_one():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']


def test_support_imports_nothing_above_it():
    for module in MODULES:
        if module.startswith('support.'):
            above = {name for name in GRAPH[module] if not name.startswith('support.')}
            assert not above, f"{module} imports {above}"


def test_the_chapters_modules_stand_on_support_alone():
    """data, model and losses import no helper when imported (losses' main() runs the demo, handing it the
    losses module: the demo does not import losses)."""
    for module in ('data', 'model', 'losses'):
        above = {name for name in imports_of(MODULES[module], top_level_only=True) if name.startswith('helpers.')}
        assert not above, f"{module} imports {above}"
    assert 'losses' not in GRAPH['helpers.loss_demo']


@pytest.mark.parametrize('module', sorted(MODULES))
def test_each_file_opens_with_a_docstring_and_stays_short(module):
    path = MODULES[module]
    source = open(path, encoding='utf-8').read()
    assert ast.get_docstring(ast.parse(source)), f"{path} has no docstring"
    limit = 200 if module == 'data' else 300 if module in ('train', 'losses') else 80 if module == 'concise' else 450
    assert source.count('\n') <= limit, f"{path}: {source.count(chr(10))} lines, over {limit}"


@pytest.mark.parametrize('name', sorted(name for name in os.listdir(os.path.join(ROOT, 'tests'))
                                         if name.endswith('.py')))
def test_each_test_file_stays_short(name):
    with open(os.path.join(ROOT, 'tests', name), encoding='utf-8') as f:
        assert f.read().count('\n') <= 450, name


def test_a_default_epoch_calls_no_function_of_the_complete_cross_entropy(fashion_mnist):
    """The loss an epoch reports is the one its steps computed (cross_entropy_with_grad), not a second,
    complete F.cross_entropy equivalent run over the epoch again."""
    config = train.parse_config(['--epochs', '1', '--device', 'cpu'])
    profile = cProfile.Profile()
    profile.enable()
    for history, _ in train.train(config, train.new_model(config, torch.device('cpu')), fashion_mnist,
                                  torch.device('cpu')):
        pass
    profile.disable()
    called = {(os.path.basename(file), name) for file, _, name in pstats.Stats(profile).stats}
    assert ('losses.py', 'cross_entropy_with_grad') in called
    complete = {('losses.py', name) for name in ('cross_entropy', '_composite', 'forward', 'backward')}
    complete |= {(file, name) for file, name in called if file == 'cross_entropy_plumbing.py'}
    assert not called & complete, called & complete
    assert 0.7 < history[-1]['test_acc'] < 0.85
