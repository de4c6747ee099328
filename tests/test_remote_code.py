"""The remote-code boundary: every file of `modeling_sigma/modeling/` travels with a checkpoint and is run by
`AutoModel.from_pretrained(..., trust_remote_code=True)` on machines that have only torch and transformers, so
it may import the standard library, torch, transformers, safetensors and its own siblings, nothing else."""

import ast
import sys
from pathlib import Path

import pytest
from sigma_testing_utils import REPO_ROOT, build_tiny_model

REMOTE_CODE_DIR = REPO_ROOT / "modeling_sigma" / "modeling"
ALLOWED_PACKAGES = {"torch", "transformers", "safetensors"}
# Files of the folder that no remote-code module imports yet, so save_pretrained does not copy them. Each entry
# must really be unimported (checked below); remove it once a sibling imports the file.
AWAITING_IMPORT: set[str] = set()


def remote_code_files() -> list[Path]:
    return sorted(path for path in REMOTE_CODE_DIR.glob("*.py") if path.name != "__init__.py")


def forbidden_imports(path: Path) -> list[str]:
    """`"line: module"` for every import of `path` outside the standard library, the allowed packages and the
    sibling files that exist."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom):
            sibling = (node.module or "").split(".")[0]
            siblings = [sibling] if sibling else [alias.name for alias in node.names]
            if node.level > 1 or not all((path.parent / f"{name}.py").is_file() for name in siblings):
                problems.append(
                    f"{node.lineno}: {'.' * node.level}{node.module or ''} (no such sibling file)"
                )
            continue
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ALLOWED_PACKAGES:
                problems.append(f"{node.lineno}: {name}")
    return problems


def sibling_imports(path: Path) -> set[str]:
    """File names of the siblings `path` imports relatively."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= (
                {f"{node.module.split('.')[0]}.py"} if node.module else {f"{a.name}.py" for a in node.names}
            )
    return names


@pytest.mark.parametrize("path", remote_code_files(), ids=lambda path: path.name)
def test_remote_code_imports_only_stdlib_torch_transformers_and_siblings(path):
    problems = forbidden_imports(path)
    assert not problems, f"{path.relative_to(REPO_ROOT)} imports what a checkpoint cannot carry: {problems}"


def test_the_check_catches_a_third_party_and_a_package_import(tmp_path):
    (tmp_path / "sibling.py").write_text("")
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nimport torch.nn\nfrom . import sibling\nfrom .sibling import x\n"
        "import datasets\nfrom modeling_sigma.data import corpus\nfrom .missing import y\n"
        "def f():\n    import sklearn.cluster\n"
    )
    assert forbidden_imports(bad) == [
        "5: datasets",
        "6: modeling_sigma.data",
        "7: .missing (no such sibling file)",
        "9: sklearn.cluster",
    ]


def test_save_pretrained_copies_exactly_the_remote_code_files(tmp_path):
    model = build_tiny_model()[0]
    model.save_pretrained(tmp_path)
    copied = {path.name for path in tmp_path.glob("*.py")}
    imported = set().union(*(sibling_imports(path) for path in remote_code_files()))
    assert not AWAITING_IMPORT & imported, (
        f"{AWAITING_IMPORT & imported} is imported now: drop it from AWAITING_IMPORT"
    )
    assert copied == {path.name for path in remote_code_files()} - AWAITING_IMPORT
    for name in copied:
        assert (tmp_path / name).read_bytes() == (REMOTE_CODE_DIR / name).read_bytes()
