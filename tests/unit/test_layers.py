"""The package's layers import only downward, and no module imports itself back.

Reads every module of musiclm_jax/ (and data/, installed as musiclm_jax.datasets) with `ast`,
imports inside functions included: a lazy import hides a cycle from Python, not from here.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Bottom to top. A module may import modules of a lower layer and of its own folder only:
# parts of one layer (lm, soundstream, ...) stay independent of each other, and entry points
# (train, eval, infer, cli) import libraries, never each other.
LAYERS = (
    ("musiclm_jax", "atomic", "fingerprint", "gin_config"),
    ("arrays_file", "audio", "layers"),
    ("cli_utils",),
    ("training",),
    ("lm", "soundstream", "w2v_bert", "mulan", "music", "dataset_builds"),
    ("evaluation", "audio_tokenizers"),
    ("tasks", "datasets"),
    ("generation", "configurables"),
    ("pipeline",),
    ("launch",),
    ("train", "eval", "infer", "cli"),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _modules():
  """{module name: file path} for musiclm_jax and data/ (as musiclm_jax.datasets)."""
  out = {}
  for top, package in (("musiclm_jax", "musiclm_jax"), ("data", "musiclm_jax.datasets")):
    for folder, _, files in os.walk(os.path.join(ROOT, top)):
      rel = os.path.relpath(folder, os.path.join(ROOT, top))
      parts = [package] + ([] if rel == "." else rel.split(os.sep))
      for name in files:
        if name.endswith(".py"):
          module = ".".join(parts + ([] if name == "__init__.py" else [name[:-3]]))
          out[module] = os.path.join(folder, name)
  return out


def _imports(module, path, modules):
  """The package modules `module` imports (the deepest existing module of each name). The
  parent packages' __init__ that Python runs on the way are not counted."""
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  names = []
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      # `from pkg import sub` depends on the module pkg.sub; `from mod import name`, on mod.
      names += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names]
  found = set()
  for name in names:
    while name and name not in modules:
      name = name.rpartition(".")[0]
    if name and name != module:
      found.add(name)
  return found


def _graph():
  modules = _modules()
  return {m: _imports(m, p, modules) for m, p in modules.items()}


def _unit(module):
  """The layer unit of a module: its folder under musiclm_jax, or the top-level module."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else parts[0]


def _cycles(graph):
  """Strongly connected components of more than one module (Tarjan, iterative)."""
  index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
  for root in graph:
    if root in index:
      continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = counter[0]
    counter[0] += 1
    stack.append(root)
    on_stack.add(root)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = counter[0]
          counter[0] += 1
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph.get(child, ())))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        component = []
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.append(member)
          if member == node:
            break
        if len(component) > 1:
          out.append(sorted(component))
  return out


def test_the_checker_sees_cycles_and_lazy_imports():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []
  graph = _graph()
  # A lazy import (inside a function) counts: generation/export.py imports the stages'
  # task module only inside a function.
  assert "musiclm_jax.tasks.stages" in graph["musiclm_jax.generation.export"]


def test_no_import_cycle_between_modules():
  assert _cycles(_graph()) == []


def test_every_folder_is_in_a_layer():
  assert {_unit(m) for m in _graph()} <= set(RANK), sorted(
      {_unit(m) for m in _graph()} - set(RANK))


def test_layers_import_only_downward():
  upward = []
  for module, imported in sorted(_graph().items()):
    for target in sorted(imported):
      a, b = _unit(module), _unit(target)
      if a != b and RANK[b] >= RANK[a] and b != "musiclm_jax":
        upward.append(f"{module} -> {target}")
  assert not upward, "imports that are not downward:\n" + "\n".join(upward)
