"""The package boundaries of docs/design.md, enforced: an AST walk over every import.

A stage reaches another stage only through the data contract (datapipe.contract); nothing below
jobs/ imports jobs/; common/ imports nothing of ours; test modules never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("common", "datapipe", "captioner", "model", "trainer", "scenes", "jobs")
# package -> what it may import from OURS (module prefixes), besides itself
ALLOWED = {
    "common": (),
    "datapipe": ("common",),
    "captioner": ("common", "datapipe.contract"),
    "model": ("common",),
    "trainer": ("common", "datapipe.contract", "model"),
    "scenes": ("common", "datapipe.contract"),
    "jobs": OURS,
}


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in `source` (relative ones resolved against `module`)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            out += [(node.lineno, f"{name}.{alias.name}") for alias in node.names if node.module is None]
    return out


def violations_in(source: str, path: str) -> list[str]:
    """What `source` (the file at repository path `path`) imports that its package may not."""
    parts = Path(path).with_suffix("").parts
    package = parts[0]
    if package not in ALLOWED:
        return []
    module = ".".join(p for p in parts if p != "__init__")
    found = []
    for line, name in imports_of(source, module):
        top = name.split(".")[0]
        if top not in OURS or top == package:
            continue
        if not any(name == a or name.startswith(a + ".") for a in ALLOWED[package]):
            found.append(f"{path}:{line} imports {name} ({package}/ may import only {ALLOWED[package] or 'nothing of ours'})")
    return found


def test_every_package_keeps_to_its_imports():
    problems = []
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            problems += violations_in(path.read_text(), rel)
    assert not problems, "\n".join(problems)


def test_test_modules_do_not_import_each_other():
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for line, name in imports_of(path.read_text(), f"tests.{path.stem}"):
            if name.split(".")[0] in tests:
                bad.append(f"tests/{path.name}:{line} imports {name}: shared builders go in tests/helpers.py")
    assert not bad, "\n".join(bad)


def test_the_rule_catches_a_planted_bad_import():
    """The checker itself: a model module importing jobs, a captioner module reaching into
    datapipe's internals, relative imports resolved; allowed imports pass."""
    assert violations_in("from jobs.profiles import config_path\n", "model/text_encoder.py")
    assert violations_in("import jobs\n", "trainer/train.py")
    assert violations_in("from datapipe.curate import curate\n", "captioner/run.py")
    assert violations_in("from scenes.graph import COLORS\n", "trainer/data.py")
    assert violations_in("from datapipe import contract\n", "common/x.py")
    assert not violations_in("from datapipe.contract import Dataset\nfrom common.config import ConfigError\n",
                             "captioner/run.py")
    assert not violations_in("from .index import PartitionIndex\n", "datapipe/dedup/service.py")
    assert not violations_in("from trainer.sampling import load_pipeline\n", "jobs/eval_scenes.py")
