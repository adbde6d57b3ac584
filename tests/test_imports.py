"""The folder picture is a tree: imports run one way, read from the source (every import, also those inside
functions), so a cycle hidden in a function body fails here too.

    tools/, train/  ->  shards/
    preprocess job level (job/, models.py, demo.py, build_shards.py, bench.py)  ->  stages  ->  common  ->  shards/
    a stage (densepose/, face/, texture/, vae/, clip/) never imports another stage nor anything above it.

A stage's benchmark (``<stage>/bench.py``) is an entry point, a leaf nothing imports: it may time a
neighbouring stage too (the VAE benchmark times CLIP). The GPU check (``tools/gpu_check/``) is the one other
such leaf: it drives the stages, the trainer, the sampler and the evaluator directly, and nothing imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("preprocess", "shards", "train", "tools")
STAGES = ("densepose", "face", "texture", "vae", "clip")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every project module a file imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in PACKAGES)
    return found


def all_modules() -> dict[str, set[str]]:
    graph = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            graph[module_name(path)] = imports_of(path)
    known = set(graph)
    # "from preprocess.common import images" names a module; "from preprocess.common import STATUS_OK" does not
    return {name: {target for target in targets if target in known} - {name} for name, targets in graph.items()}


def layer(module: str) -> tuple[str, str]:
    """(area, unit): the area decides what it may import; the unit is its stage or package."""
    parts = module.split(".")
    if parts[0] != "preprocess":
        return parts[0], parts[0]
    if len(parts) > 1 and parts[1] == "common":
        return "common", "common"
    if len(parts) > 1 and parts[1] in STAGES:
        return "stage", parts[1]
    return "job", "job"


def is_gpu_check(module: str) -> bool:
    return module == "tools.gpu_check" or module.startswith("tools.gpu_check.")


def allowed(source: str, target: str) -> bool:
    if is_gpu_check(target) and not is_gpu_check(source):
        return False  # a leaf: nothing outside it imports it
    if is_gpu_check(source):
        return True
    src_area, src_unit = layer(source)
    dst_area, dst_unit = layer(target)
    if dst_area == "shards":
        return True
    if src_area in ("shards", "train", "tools"):
        return dst_area == src_area
    if dst_area in ("train", "tools"):
        return False
    if src_area == "common":
        return dst_area == "common"
    if src_area == "stage":
        if dst_area == "common" or dst_unit == src_unit:
            return True
        return dst_area == "stage" and source.endswith(".bench")
    return True  # the job level uses stages, common and itself


def test_imports_run_one_way():
    graph = all_modules()
    wrong = sorted(f"{source} imports {target}" for source, targets in graph.items() for target in targets
                   if not allowed(source, target))
    assert not wrong, "imports that run back up or sideways:\n" + "\n".join(wrong)


def is_bench(module: str) -> bool:
    """A benchmark entry point (``bench`` or ``bench_<what>``): a leaf that may use another bench's helpers."""
    name = module.rsplit(".", 1)[-1]
    return name == "bench" or name.startswith("bench_")


def test_no_module_imports_an_entry_point():
    graph = all_modules()
    wrong = sorted(f"{source} imports {target}" for source, targets in graph.items() for target in targets
                   if target.endswith((".bench", ".__main__")) and not (is_bench(source) or is_gpu_check(source)))
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = all_modules()
    # packages' __init__ files re-export their modules; an edge into a package's own __init__ is not a cycle
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_see_a_back_edge():
    """The rules themselves: a stage importing the job, a sibling stage or common importing a stage fail."""
    assert not allowed("preprocess.densepose.__main__", "preprocess.job.decode")
    assert not allowed("preprocess.clip.stage", "preprocess.vae.stage")
    assert not allowed("preprocess.common.images", "preprocess.vae.stage")
    assert not allowed("train.data", "preprocess.job.features")
    assert not allowed("shards.reader", "train.data")
    assert allowed("preprocess.job.layout", "preprocess.job.specs")
    assert allowed("preprocess.clip.stage", "preprocess.common.images")
    assert allowed("tools.gpu_check.parity", "preprocess.densepose.predictor")
    assert not allowed("tools.cli", "tools.gpu_check.run")
    assert not allowed("tools.gpu_check_helpers", "preprocess.densepose.predictor")
