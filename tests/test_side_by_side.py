"""docs/side_by_side.{md,html} and README's vgg_block snippet: current, cut right, and with a
true API table. The generator reads the code as text; these tests also hold what it cuts
against `inspect.getsource` of the imported code and the API table against the libraries."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common import PACKAGES
from tools import side_by_side as sbs

ROOT = Path(__file__).resolve().parents[1]
MARK = "side-by-side test mutant"


def test_committed_docs_match_the_code():
    stale = sbs.stale(ROOT, sbs.generate(sbs.read_sources(ROOT)))
    assert not stale, f"{', '.join(stale)} out of date: run `python -m tools.side_by_side` and commit"


def _mutate_vgg_block(text: str) -> str:
    """`text` with one statement added to vgg_block's body, before its last statement."""
    fn = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == "vgg_block")
    last = fn.body[-1]
    lines = text.splitlines(keepends=True)
    indent = lines[last.lineno - 1][: last.col_offset]
    lines.insert(last.lineno - 1, f'{indent}note = "{MARK}"\n')
    return "".join(lines)


@pytest.mark.parametrize("package", PACKAGES)
def test_changing_vgg_block_changes_every_output(package):
    sources = sbs.read_sources(ROOT)
    before = sbs.generate(sources)
    path = f"{package}/model.py"
    after = sbs.generate({**sources, path: _mutate_vgg_block(sources[path])})
    assert all(after[rel] != before[rel] for rel in (sbs.MD, sbs.HTML, sbs.README))
    # the new line shows in that framework's block, nowhere else
    block = after[sbs.MD].split("## 1. ")[1].split("## 2. ")[0]
    mine = block.split(f"`{path}`")[1].split("### ")[0]
    assert f'note = "{MARK}"' in mine and after[sbs.MD].count(MARK) == 1
    assert after[sbs.README].count(MARK) == 1 and after[sbs.HTML].count(MARK) == 1


def test_check_command_names_the_stale_files(tmp_path):
    """On a copy of the tree: generate, --check passes, then fails naming each file once vgg_block changes."""
    for rel in sbs.read_sources(ROOT):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    cmd = [sys.executable, "-m", "tools.side_by_side", "--root", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    cmd.append("--check")
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "up to date" in ok.stdout, ok.stderr
    model = tmp_path / "vgg_flax" / "model.py"
    model.write_text(_mutate_vgg_block(model.read_text()))
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert all(rel in bad.stderr for rel in (sbs.MD, sbs.HTML, sbs.README)), bad.stderr
    assert (ROOT / "vgg_flax" / "model.py").read_text() != model.read_text()  # the real tree untouched


def test_a_missing_name_is_an_error_that_says_where():
    sources = sbs.read_sources(ROOT)
    path = "vgg_gluon/train.py"
    renamed = re.sub(r"\bdef make_optimizer\b", "def build_optimizer", sources[path])
    with pytest.raises(sbs.SideBySideError, match=r"vgg_gluon/train\.py has no `make_optimizer`.*PIECES"):
        sbs.generate({**sources, path: renamed})


def _resolve(module: str, dotted: str):
    obj = importlib.import_module(module)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_each_cut_holds_the_source_python_reports():
    """Independent truth: inspect.getsource of the imported objects (decorators included)."""
    import vgg_gluon  # noqa: F401  (before mxnet)

    for piece, row in sbs.cut_pieces(sbs.read_sources(ROOT)):
        for fw, (path, cut) in row.items():
            module = path[:-3].replace("/", ".")
            for name in piece.names[fw]:
                src = inspect.getsource(_resolve(module, name)).rstrip("\n")
                assert src in cut.code, f"{piece.key}/{fw}: {name} not cut whole"


def test_decorators_come_with_their_function():
    step = next(row for p, row in sbs.cut_pieces(sbs.read_sources(ROOT)) if p.key == "step")["flax"][1].code
    assert re.search(r"^@nnx\.jit\ndef train_step", step, re.M)


def test_helpers_come_along_once():
    pieces = {p.key: row for p, row in sbs.cut_pieces(sbs.read_sources(ROOT))}
    assert "_named" in pieces["block"]["gluon"][1].names and "_named" not in pieces["network"]["gluon"][1].names
    assert "VGGBlock" in pieces["block"]["flax"][1].names and "VGG" in pieces["network"]["flax"][1].names
    assert "loss_fn" in pieces["step"]["gluon"][1].names
    # a method is shown under its class's first line
    assert re.search(r"^class Backend.*:\n    def __init__", pieces["setup"]["torch"][1].code, re.M)


# --- the API table against the libraries -----------------------------------------------------


def _placeholders(fw: str, ns: dict) -> dict:
    """The objects the table's cells call net/model, x, loss, optimizer, trainer, p."""
    if fw == "torch":
        torch, nn = ns["torch"], ns["nn"]
        net = nn.Sequential(nn.Linear(2, 2))
        x = torch.zeros(1)
        return dict(net=net, x=x, loss=x, optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
    if fw == "gluon":
        mx, nn, gluon = ns["mx"], ns["nn"], ns["gluon"]
        net = nn.HybridSequential()
        net.add(nn.Dense(2, in_units=2))
        net.initialize()
        x = mx.nd.zeros(1)
        return dict(
            net=net, x=x, loss=x, trainer=gluon.Trainer(net.collect_params(), "sgd"), p=gluon.Parameter("w", shape=(1,))
        )
    nnx, optax, jnp = ns["nnx"], ns["optax"], ns["jnp"]
    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    x = jnp.zeros(1)
    return dict(model=model, x=x, loss=x, optimizer=nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))


def _chain(node) -> list[str] | None:
    """['nn', 'Conv2d'] for nn.Conv2d; None for anything but names and attributes."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


@pytest.fixture(scope="module")
def namespaces():
    import vgg_gluon  # noqa: F401  (restores np.bool before mxnet)

    out = {}
    for i, fw in enumerate(sbs.FRAMEWORKS):
        ns = {}
        exec(sbs.API_TABLE[0][i + 1].replace("; ", "\n"), ns)  # the table's own "Imports" row
        out[fw] = {**ns, **_placeholders(fw, ns)}
    return out


def _lookup(ns: dict, chain: list[str], where: str):
    obj = ns[chain[0]]
    for i, attr in enumerate(chain[1:], 1):
        assert hasattr(obj, attr), f"{where}: {'.'.join(chain[: i + 1])} does not exist"
        obj = getattr(obj, attr)
    return obj


@pytest.mark.parametrize("row", sbs.API_TABLE[1:], ids=[r[0] for r in sbs.API_TABLE[1:]])
def test_api_table_calls_exist_with_those_arguments(row, namespaces):
    checked = 0
    for fw, code in zip(sbs.FRAMEWORKS, row[1:]):
        ns, where = namespaces[fw], f"{fw}, {row[0]!r}"
        for node in ast.walk(ast.parse(code)):
            chain = _chain(node) if isinstance(node, ast.Attribute) else None
            if chain and chain[0] in ns:
                _lookup(ns, chain, where)
                checked += 1
            if isinstance(node, ast.Call) and (chain := _chain(node.func)) and chain[0] in ns:
                obj = _lookup(ns, chain, where)
                # a class's own __init__: NNX's metaclass shows every module as (*args, **kwargs)
                args = [None] * (len(node.args) + isinstance(obj, type))
                try:
                    sig = inspect.signature(obj.__init__ if isinstance(obj, type) else obj)
                except (TypeError, ValueError):  # builtins and C functions without one
                    continue
                try:
                    sig.bind_partial(*args, **{k.arg: None for k in node.keywords if k.arg})
                except TypeError as e:
                    pytest.fail(f"{where}: {'.'.join(chain)}{sig} does not take these arguments: {e}")
    assert checked, f"{row[0]}: no cell names anything the test can check"


def test_html_is_self_contained():
    page = (ROOT / sbs.HTML).read_text()
    assert "<script" not in page and "<link" not in page and " src=" not in page
    assert all(h.startswith(("#", "https://")) for h in re.findall(r'href="([^"]*)"', page))
    assert ".highlight .k " in page and "white-space: pre-wrap" in page
