"""The package's layers import one way (function-level imports included).

Units are the top-level modules and subpackages of ``dash_spark`` (``dash_spark.stats``,
``dash_spark.scanner.pipeline`` ...). The rules:

- no import cycle among units;
- ``stats`` and ``io`` import nothing of the package but ``errors`` (and each other's modules
  within themselves), and never pyspark; nor do ``tasks`` and ``sources``, which run in Spark
  tasks and unit tests alike, import pyspark;
- ``multiparty`` imports nothing of the package outside itself and ``errors``: it deals in arrays,
  manifests, keys and the exchange, and is composed with Spark and files above it;
- no module imports another module's ``_private`` name.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dash_spark"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imports(module: str, path: Path):
    """``(imported module, imported names)`` of every import statement, at any depth."""
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if subs and len(subs) == len(names):  # ``from . import report``: the submodules only
                for s in subs:
                    yield s, ()
            else:
                yield target, tuple(n for n in names if f"{target}.{n}" not in MODULES)


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        for target, _ in _imports(module, path):
            if target in MODULES and _unit(target) != _unit(module):
                edges.setdefault(_unit(module), set()).add(_unit(target))
    return edges


def test_no_import_cycle_between_units():
    edges = _graph()

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt == b:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a in edges for b in edges[a] if reaches(b, a))
    assert not cycles, "import cycles between units:\n" + "\n".join(cycles)


def _external(unit: str) -> set[str]:
    """Everything modules of ``unit`` import that is not inside ``unit``."""
    out = set()
    for module, path in MODULES.items():
        if _unit(module) == unit:
            for target, _ in _imports(module, path):
                if _unit(target) != unit:
                    out.add(target)
    return out


def test_kernels_and_readers_are_spark_free_and_low():
    for unit in ("dash_spark.stats", "dash_spark.io"):
        deps = _external(unit)
        ours = {d for d in deps if d.startswith("dash_spark")}
        assert ours <= {"dash_spark.errors"}, f"{unit} imports {sorted(ours - {'dash_spark.errors'})}"
        assert not {d for d in deps if d.split(".")[0] == "pyspark"}, f"{unit} imports pyspark"
    for module in ("dash_spark.scanner.tasks", "dash_spark.scanner.sources"):
        deps = {t for t, _ in _imports(module, MODULES[module])}
        assert not {d for d in deps if d.split(".")[0] == "pyspark"}, f"{module} imports pyspark"
        assert not {d for d in deps if _unit(d) == "dash_spark.spark"}, f"{module} imports the Spark layer"


def test_multiparty_knows_only_itself_and_errors():
    ours = {d for d in _external("dash_spark.multiparty") if d.startswith("dash_spark")}
    assert ours <= {"dash_spark.errors"}, f"multiparty imports {sorted(ours)}"


def test_no_private_name_crosses_modules():
    found = []
    for module, path in MODULES.items():
        for target, names in _imports(module, path):
            if target.startswith("dash_spark") and target != module:
                found += [f"{module} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not found, "\n".join(found)


def test_the_rules_see_a_violation(tmp_path, monkeypatch):
    """The graph walker finds function-level imports (so the rules above can fail)."""
    mod = "dash_spark.stats.kernel"
    src = "def f():\n    from ..scanner.pipeline import scan_model\n    from pyspark.sql import functions\n"
    path = tmp_path / "kernel.py"
    path.write_text(src)
    found = dict(_imports(mod, path))
    assert "dash_spark.scanner.pipeline" in found and "pyspark.sql" in found


def test_every_public_exception_class_lives_in_errors():
    """One hierarchy, one place: a public exception class is defined in ``dash_spark/errors.py``
    (a module may keep a private signal, ``_Name``), and the driver maps a task's error back to
    each of them by name."""
    from dash_spark import errors

    elsewhere = []
    for module, path in MODULES.items():
        if module == "dash_spark.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                if any(b.endswith(("Error", "Exception", "Overflow", "Refused", "Missing")) for b in bases):
                    elsewhere.append(f"{module}.{node.name}")
    assert not elsewhere, f"exception classes outside errors.py: {elsewhere}"
    for name in ("StoreError", "ProtocolError", "ReleaseRefused", "RevealsMissing", "DuplicateShareError",
                 "EncodingOverflow", "ReleaseError"):
        cls = getattr(errors, name)
        assert issubclass(cls, errors.DashError)
        try:
            errors.translate_task_error(RuntimeError(f"worker traceback\n[dash-spark {name}] the message"))
        except errors.DashError as exc:
            assert type(exc) is cls and str(exc) == "the message"


def test_config_imports_no_driver():
    """A scan's settings (``config.ScanConfig``) are a leaf: ``config`` imports none of the drivers,
    writers or commands (only errors, the Spark properties reader and two small helpers)."""
    allowed = {"dash_spark.errors", "dash_spark.spark.session", "dash_spark.outputs.staging", "dash_spark.outputs.gwas_ssf"}
    found = {t for t, _ in _imports("dash_spark.config", MODULES["dash_spark.config"])
             if t.startswith("dash_spark") and t != "dash_spark.config"}
    assert found <= allowed, sorted(found - allowed)


def test_the_package_root_shows_the_layers():
    """``ls dash_spark`` shows the layers: the public surface and entry points at the top, every
    other module in the folder of its layer (kernels, readers, Spark session, outputs, the scanner,
    studies and stores, simulation and benchmarks, the multi-party protocol)."""
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert top == ["__init__.py", "api.py", "cli.py", "config.py", "errors.py"], top
    folders = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == ["bench", "io", "multiparty", "outputs", "scanner", "spark", "stats", "studies"], folders
    # the layers, lowest first: each imports only those below it (and errors/config at the top)
    order = ["stats", "io", "multiparty", "spark", "outputs", "scanner", "studies", "bench"]
    rank = {f"dash_spark.{u}": i for i, u in enumerate(order)}
    edges = _graph()
    upward = sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs if a in rank and b in rank and rank[b] > rank[a])
    assert not upward, upward


def test_no_builder_takes_a_meaning_flag():
    """The model is built one way: :func:`read_samples` decides who is analysed (under rules that
    say what is dropped or refused), and a scan's weights and a statistics model's come from their
    own builders; no function takes the old ``party`` flag that turned one into the other, and the
    two builders' models differ where they must (a statistics model carries moments, a scan's none)."""
    offenders = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for a in node.args.args + node.args.kwonlyargs:  # (a party's *name* is fine)
                    if a.arg in ("party", "statistics") and ast.unparse(a.annotation or ast.Constant(None)) == "bool":
                        offenders.append(f"{module}.{node.name}({a.arg})")
    assert not offenders, offenders
    from dash_spark.scanner import model

    assert not hasattr(model, "build_model")
    assert set(model.SampleRules.__dataclass_fields__) == {"drop_uninformative_covariates",
                                                           "refuse_constant_phenotypes", "linear_only",
                                                           "subset_of_fam"}
