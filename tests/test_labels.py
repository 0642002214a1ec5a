"""Label conventions: one ignore id and one VOC palette, defined once (jaxseg/labels.py)."""

import ast
import pathlib

from jaxseg import labels

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxseg"


def test_ignore_id_and_voc_palette_follow_voc():
    assert labels.IGNORE_ID == 255
    palette = labels.voc_palette()
    assert len(palette) == 256 and len(set(palette)) == 256
    # VOC2012's devkit colour map: background, aeroplane, bicycle, bird, boat, ..., person.
    assert palette[:5] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128))
    assert palette[15] == (192, 128, 128)
    assert labels.voc_palette(21) == palette[:21]
    assert labels.IGNORE_COLOR == palette[255] == (224, 224, 192)  # VOC's cream "void"


def test_labels_module_has_no_dependencies():
    tree = ast.parse((PACKAGE / "labels.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def _constants_of_255(path: pathlib.Path) -> list[str]:
    """Module- or class-level names bound to the literal 255 (`X = 255`, `x: int = 255`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            if node.value.value == 255 and type(node.value.value) is int:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
                found += [f"{where} {ast.unparse(t)}" for t in targets]
    return found


def test_no_module_but_labels_defines_the_ignore_id():
    """Every other module imports `jaxseg.labels.IGNORE_ID`; a second `IGNORE = 255` could drift."""
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 20  # the walk really sees the package
    found = [c for path in modules if path.name != "labels.py" for c in _constants_of_255(path)]
    assert found == []
    assert [c.split()[-1] for c in _constants_of_255(PACKAGE / "labels.py")] == ["IGNORE_ID"]
