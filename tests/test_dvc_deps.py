"""dvc.yaml's deps cover every library file a stage imports (DVC does not follow Python imports), and name files
and folders that exist: a module moved or added without its dep would otherwise never rerun the stage."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from pipeline.config import BASELINE_MODEL
from pipeline.models.registry import MODEL_MODULES, REGISTERED
from pipeline.training.pretrain import PRETRAIN_MODELS

REPO_ROOT = Path(__file__).resolve().parents[1]
# Imported inside functions that only stages reading `model:` / `baseline:` call (ModelConfig.build,
# load_model_config); prepare and embed never reach them, so a model's defaults never rerun them.
LAZY = {("pipeline.config", "pipeline.models.configs")}
# Imported by name at run time: the registry imports the module of the model it builds (every model file, except
# in a stage that builds one fixed model), the readers' table every reader.
DYNAMIC = {"pipeline.models.registry": MODEL_MODULES}
STAGE_MODELS = {"baseline": (BASELINE_MODEL,), "pretrain": PRETRAIN_MODELS}  # the models these stages can build


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(root.glob("pipeline/**/*.py")) + sorted(root.glob("stages/*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, modules: dict[str, Path], stage: str = "") -> set[str]:
    """Modules ``name`` imports (function-local imports too), each with the packages above it; in ``stage``."""
    named: set[str] = set(DYNAMIC.get(name, ()))
    if name == "pipeline.models.registry" and stage in STAGE_MODELS:
        named = {REGISTERED[model].module for model in STAGE_MODELS[stage]}
    if name == "pipeline.data.readers":
        named |= {m for m in modules if m.startswith("pipeline.data.readers.")}
    for node in ast.walk(ast.parse(modules[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            named |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}  # fmt: skip
        elif isinstance(node, ast.Import):
            named |= {a.name for a in node.names}
    parents = {".".join(m.split(".")[:i]) for m in named for i in range(1, m.count(".") + 2)}
    return {m for m in parents if m in modules and (name, m) not in LAZY}


def _closure(stage: str, modules: dict[str, Path]) -> set[Path]:
    seen: set[str] = set()
    todo = [f"stages.{stage}"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _imports(name, modules, stage)
    return {modules[m] for m in seen}


def _docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)


def _deps(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]


def test_every_stage_declares_every_library_file_it_imports() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    modules = _modules(REPO_ROOT)
    missing = []
    for name, stage in stages.items():
        assert stage["cmd"].startswith(f"python -m stages.{name} "), name
        deps = [REPO_ROOT / d for d in _deps(stage)]
        for path in sorted(_closure(name, modules)):
            if not _docstring_only(path) and not any(path == d or d in path.parents for d in deps):
                missing.append(f"{name}: {path.relative_to(REPO_ROOT)}")
    assert not missing, "dvc.yaml deps miss: " + "; ".join(missing)


def test_every_declared_library_dep_exists() -> None:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    stale = [f"{name}: {d}" for name, stage in stages.items() for d in _deps(stage)
             if d.startswith(("pipeline", "stages")) and not (REPO_ROOT / d).exists()]  # fmt: skip
    assert not stale, "dvc.yaml names files that do not exist: " + "; ".join(stale)


def test_the_closure_sees_function_local_and_dynamic_imports() -> None:
    modules = _modules(REPO_ROOT)
    assert "pipeline.io" in _imports("pipeline.training.distributed", modules)  # inside a function only
    assert "pipeline.features.clip_encoders" in _imports("pipeline.features.encoders", modules)  # likewise
    assert modules["pipeline.models.odmt"] in _closure("train", modules)  # through the registry
    assert modules["pipeline.models.sasrec"] in _closure("baseline", modules)  # the one model baseline builds
    assert modules["pipeline.models.odmt"] not in _closure("baseline", modules)
    assert modules["pipeline.models.mp4sr"] in _closure("pretrain", modules)
    assert modules["pipeline.data.readers.hm"] in _closure("prepare", modules)  # through the readers' table
    assert modules["pipeline.models.registry"] not in _closure("embed", modules)
    assert modules["pipeline.models.configs"] not in _closure("embed", modules)  # config imports it lazily


def test_stages_of_one_fixed_model_name_only_its_model_files() -> None:
    """baseline builds SASRec, pretrain MP4SR: a model file they never import is no dep (ODMT edits rerun neither)."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    modules = _modules(REPO_ROOT)
    models_dir = REPO_ROOT / "pipeline" / "models"
    for name in STAGE_MODELS:
        closure = _closure(name, modules)
        for dep in _deps(stages[name]):
            path = REPO_ROOT / dep
            if path == models_dir or models_dir in path.parents:
                assert path.is_file() and path in closure, f"{name}: {dep} is not a model file the stage imports"
