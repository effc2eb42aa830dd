"""Import weight (fitting code must not load the image and network stacks) and layering (checked on
the sources: maps never imports viz, no private names across packages, no backend choice)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("skimage", "torchvision", "sklearn", "matplotlib", "arviz", "hydra")


@pytest.mark.parametrize("module", ["dpmodels", "dpmodels.models", "dpmodels.infer", "dpmodels.spatial"])
def test_fitting_modules_do_not_import_image_or_network_stacks(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import {module} loaded: {out.stdout.strip()}"


def test_data_names_still_import_on_use():
    from dpmodels.data import PlantedMixture, PointSource, load_dataset

    assert callable(load_dataset) and PlantedMixture and PointSource
    import dpmodels.data as data

    assert "texture_mosaics" in dir(data)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        data.nothing  # noqa: B018


# --- layering, checked on the sources' syntax trees ----------------------------------------------

PACKAGE = Path(__file__).resolve().parents[1] / "dpmodels"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(module: str, source: str, is_package: bool = False):
    """``(line, imported module, imported names)`` of every import in ``source`` (also inside
    functions), relative imports resolved against ``module``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            yield node.lineno, target, [alias.name for alias in node.names]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _unit(module: str) -> str:
    """The first-level package (``dpmodels.maps``) or root module (``dpmodels.priors``) of ``module``."""
    return ".".join(module.split(".")[:2])


def layering_problems(module: str, source: str, is_package: bool = False) -> list[str]:
    """What ``module``'s imports break: ``maps`` importing ``viz``; a private module (``_graph``) used
    outside the package holding it; a private name imported from another first-level package."""
    problems = []
    for line, target, names in _imports(module, source, is_package):
        if not target.startswith("dpmodels"):
            continue
        where = f"{module}:{line}"
        if _unit(module) == "dpmodels.maps" and _unit(target) == "dpmodels.viz":
            problems.append(f"{where} imports {target}: maps must not import viz (viz may import maps)")
        parts = target.split(".")
        for i, part in enumerate(parts):
            owner = ".".join(parts[:i])
            if _private(part) and not (module == owner or module.startswith(owner + ".")):
                problems.append(f"{where} imports the private module {target} from outside {owner}")
        hidden = [n for n in names if _private(n)]
        if hidden and _unit(target) != _unit(module):
            problems.append(f"{where} imports private {hidden} from {target} (another package)")
    return problems


def backend_calls(source: str) -> list[int]:
    """Lines that call ``matplotlib.use`` (also as ``mpl.use`` or ``from matplotlib import use``)."""
    tree = ast.parse(source)
    aliases, funcs = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "matplotlib"}
        elif isinstance(node, ast.ImportFrom) and node.module == "matplotlib":
            funcs |= {a.asname or a.name for a in node.names if a.name == "use"}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            via_module = (
                isinstance(f, ast.Attribute) and f.attr == "use" and getattr(f.value, "id", "") in aliases
            )
            via_name = isinstance(f, ast.Name) and f.id in funcs
            if via_module or via_name:
                lines.append(node.lineno)
    return lines


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, _module_name(path), path.read_text(encoding="utf-8")


def test_library_layering():
    problems = [
        p
        for path, module, source in _sources()
        for p in layering_problems(module, source, path.name == "__init__.py")
    ]
    assert not problems, "\n".join(problems)


def test_library_never_picks_a_matplotlib_backend():
    found = [f"{module}:{line}" for _, module, source in _sources() for line in backend_calls(source)]
    assert not found, f"matplotlib.use inside dpmodels (entry points choose the backend): {found}"


@pytest.mark.parametrize(
    "module, source, expected",
    [
        (
            "dpmodels.maps.layer_maps",
            "def f():\n    from ..viz.fit import cluster_colours\n",
            "must not import viz",
        ),
        ("dpmodels.maps", "import dpmodels.viz.maps\n", "must not import viz"),
        ("dpmodels.transfer.pretrained", "from ..activations.layers import _probe\n", "private ['_probe']"),
        ("dpmodels.analysis.network", "from ..activations._graph import Tap\n", "private module"),
        ("dpmodels.viz.paper", "from .maps import _check_index\n", None),  # same package
        ("dpmodels.nets.train", "from .._validation import check_device\n", None),  # the root's own helper
        ("dpmodels.viz.maps", "from ..maps.layer_maps import LayerMaps\n", None),
    ],
)
def test_layering_rules_catch_what_they_should(module, source, expected):
    problems = layering_problems(module, source, is_package=module == "dpmodels.maps")
    assert (expected in "\n".join(problems)) if expected else not problems, problems


def test_backend_rule_catches_every_spelling():
    assert backend_calls("import matplotlib\nmatplotlib.use('Agg')\n") == [2]
    assert backend_calls("import matplotlib as mpl\nmpl.use('Agg')\n") == [2]
    assert backend_calls("from matplotlib import use\nuse('Agg')\n") == [2]
    assert backend_calls("import matplotlib.pyplot as plt\nplt.style.use('x')\n") == []
