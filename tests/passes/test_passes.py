"""Pass authoring: the pattern-pass helper and its FuseEncodeStep fusion, the example user passes, pass
arguments and manifest replay, and how a failing or graph-breaking user pass is reported."""

import json
from pathlib import Path

import pytest
import torch
import torch.fx as fx
from typer.testing import CliRunner

import hatac
from hatac.cli import app
from hatac.errors import HatacError
from hatac.artifact.manifest import MANIFEST_NAME
from hatac.passes import PassContext, PatternPass, load_pass, pass_spec
from hatac.passes.fusion.encode_write import FuseCacheWrites, FuseEncodeStep
from hatac.passes.pattern import count_targets
from models import tiny_model

ops = torch.ops.hatac
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "passes"
BUDGETS_PASS = f"{EXAMPLES / 'per_layer_budgets.py'}:PerLayerBudgets"
DENSE_PASS = f"{EXAMPLES / 'keep_layers_dense.py'}:KeepLayersDense"
BROKEN = Path(__file__).resolve().parents[1] / "_user_passes.py"
CFG = dict(hash="random", budget=4, dense_layers=2, rbits=64, fuse_encode=False)  # the fusion applied by hand
runner = CliRunner()


def _cli(*args, env=None):
    res = runner.invoke(app, [str(a) for a in args], env=env)
    return res.exit_code, res.output


def _one_line_error(code, output, *patterns):
    assert code != 0, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for p in patterns:
        assert p in errors[0], output
    return errors[0]


def _count(gm, op):
    return count_targets(gm, op)


@pytest.fixture(scope="module")
def base():
    model = tiny_model("llama")
    return model, hatac.convert(model, hatac.HataConfig(**CFG))


@pytest.fixture(scope="module")
def fused(base):
    model, hm = base
    return hatac.convert(model, hatac.HataConfig(**CFG), passes=[FuseEncodeStep()], hash_weights=hm.hash_weights)


# -- pattern passes -----------------------------------------------------------------------------------

def test_fuse_encode_step_rewrites_the_decode_graph_only(base, fused):
    _, hm = base
    hashed = sum(s.hashed for s in hm.layers.values())
    assert hashed == 2
    d0, d1 = hm.decode_graph, fused.decode_graph
    assert _count(d0, ops.hash_encode.default) == 2 * hashed and _count(d0, ops.hash_encode_step.default) == 0
    assert _count(d1, ops.hash_encode.default) == 0 and _count(d1, ops.hash_encode_step.default) == hashed
    assert _count(d1, ops.cache_write.default) == _count(d0, ops.cache_write.default) - hashed
    assert _count(d1, ops.hamming_topk.default) == hashed
    # the fused node takes the layer's q, k, W, code cache and write slots, and feeds hamming_topk
    for node in (n for n in d1.graph.nodes if n.target is ops.hash_encode_step.default):
        layer = node.meta["hatac_layer"]
        assert [a.name for a in node.args[2:]] == [f"hatac_w_{layer}", f"key_codes_{layer}", "write_pos"]
        assert [u.target for u in node.users] == [ops.hamming_topk.default]
        assert "nn_module_stack" in node.meta
    # prefill encodes keys only: nothing to fuse there
    assert _count(fused.prefill_graph, ops.hash_encode_step.default) == 0
    assert fused.layers == hm.layers


@torch.no_grad()
def test_fuse_encode_step_decodes_identically(base, fused):
    _, hm = base
    ids = torch.randint(3, 300, (2, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    a, b = hm.generate(ids, **kw), fused.generate(ids, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert all(torch.equal(x, y) for x, y in zip(a.logits, b.logits))
    # and the caches hold the same key codes after a step
    ca, cb = hm.new_cache(), fused.new_cache()
    for step_ids in (ids, ids[:, :1], ids[:, 1:2]):
        assert torch.equal(hm.step(ca, step_ids), fused.step(cb, step_ids))
    for name, t in ca.tensors.items():
        assert torch.equal(t, cb.tensors[name]), name


@pytest.fixture(scope="module")
def folded(base):
    model, hm = base
    return hatac.convert(model, hatac.HataConfig(**CFG), passes=[FuseEncodeStep(), FuseCacheWrites()], hash_weights=hm.hash_weights)


def test_fuse_cache_writes_folds_each_hashed_layers_writes(base, fused, folded):
    _, hm = base
    hashed = sum(s.hashed for s in hm.layers.values())
    d1, d2 = fused.decode_graph, folded.decode_graph
    assert _count(d2, ops.hash_encode_step_kv.default) == hashed and _count(d2, ops.hash_encode_step.default) == 0
    assert _count(d2, ops.cache_write.default) == _count(d1, ops.cache_write.default) - 2 * hashed
    for node in (n for n in d2.graph.nodes if n.target is ops.hash_encode_step_kv.default):
        layer = node.meta["hatac_layer"]
        assert [a.name for a in node.args[3:]] == [f"hatac_w_{layer}", f"k_cache_{layer}", f"v_cache_{layer}", f"key_codes_{layer}", "write_pos"]
        assert [u.target for u in node.users] == [ops.hamming_topk.default]
    # the dense layers keep their writes; the prefill graph has no decode fusion
    assert _count(d2, ops.cache_write.default) == 2 * (len(hm.layers) - hashed)
    assert _count(folded.prefill_graph, ops.hash_encode_step_kv.default) == 0


@torch.no_grad()
def test_fuse_cache_writes_decodes_identically(base, folded):
    _, hm = base
    ids = torch.randint(3, 300, (2, 14), generator=torch.Generator().manual_seed(2))
    ca, cb = hm.new_cache(), folded.new_cache()
    for step_ids in (ids, ids[:, :1], ids[:, 1:2], ids[:, 2:3]):
        assert torch.equal(hm.step(ca, step_ids), folded.step(cb, step_ids))
    for name, t in ca.tensors.items():
        assert torch.equal(t, cb.tensors[name]), name


def test_fuse_cache_writes_leaves_a_layer_whose_cache_is_read_in_between(base):
    """A reader of the V cache between its write and the encode: moving the write past it would change
    what it reads, so that layer keeps its separate writes."""
    model, hm = base
    d = hatac.convert(model, hatac.HataConfig(**CFG), passes=[FuseEncodeStep()], hash_weights=hm.hash_weights).decode_graph
    step = next(n for n in d.graph.nodes if n.target is ops.hash_encode_step.default)
    layer = step.meta["hatac_layer"]
    v_cache = next(n for n in d.graph.nodes if n.name == f"v_cache_{layer}")
    with d.graph.inserting_before(step):
        d.graph.call_function(torch.ops.aten.sum.default, (v_cache,))
    ctx = PassContext(config=hatac.HataConfig(**CFG), model=model, mode="decode", inputs={n.name: n for n in d.graph.nodes if n.op == "placeholder"})
    FuseCacheWrites()(d, ctx)
    kv = [n.meta["hatac_layer"] for n in d.graph.nodes if n.target is ops.hash_encode_step_kv.default]
    left = [n.meta["hatac_layer"] for n in d.graph.nodes if n.target is ops.hash_encode_step.default]
    assert left == [layer] and len(kv) == sum(s.hashed for s in hm.layers.values()) - 1 and layer not in kv


def _toy_ctx():
    return PassContext(config=hatac.HataConfig(hash="random"), model=torch.nn.Linear(1, 1))


def _encode_graph(reader_between: bool) -> fx.GraphModule:
    """q, k, W, codes, write_pos -> hash_encode(k) + cache_write + hash_encode(q) -> hamming_topk, with
    (optionally) another reader of the code cache between the write and the top-k."""
    g = fx.Graph()
    q, k, w, codes, wp, pos = (g.placeholder(n) for n in ("q", "k", "w", "codes", "wp", "pos"))
    kc = g.call_function(ops.hash_encode.default, (k, w))
    g.call_function(ops.cache_write.default, (codes, kc, wp))
    extra = g.call_function(torch.ops.aten.sum.default, (codes,)) if reader_between else None
    qc = g.call_function(ops.hash_encode.default, (q, w))
    idx = g.call_function(ops.hamming_topk.default, (qc, codes, pos, 4, 4.0, 0, 0, 0))
    g.output((idx, extra) if extra is not None else idx)
    return fx.GraphModule(torch.nn.Module(), g)


class _FuseOnly(FuseEncodeStep):
    modes = ("decode", "prefill", "observe")

    def ensures(self, gm, ctx):  # count matches without FuseEncodeStep's all-layers check
        pass


@pytest.mark.parametrize("reader_between", [False, True])
def test_pattern_pass_refuses_to_move_a_write_past_a_reader(reader_between):
    gm = _encode_graph(reader_between)
    ctx = _toy_ctx()
    result = _FuseOnly()(gm, ctx)
    fused = _count(result.graph_module, ops.hash_encode_step.default)
    assert fused == (0 if reader_between else 1)
    assert ctx.meta["pattern_matches"]["_FuseOnly"] == fused
    result.graph_module.graph.lint()


def test_pattern_pass_on_pure_ops():
    class AddReluToClampedAdd(PatternPass):
        @staticmethod
        def pattern(x, y):
            return torch.ops.aten.relu.default(torch.ops.aten.add.Tensor(x, y))

        @staticmethod
        def replacement(x, y):
            return torch.ops.aten.clamp_min.default(torch.ops.aten.add.Tensor(x, y), 0.0)

    g = fx.Graph()
    x, y = g.placeholder("x"), g.placeholder("y")
    a = g.call_function(torch.ops.aten.relu.default, (g.call_function(torch.ops.aten.add.Tensor, (x, y)),))
    b = g.call_function(torch.ops.aten.relu.default, (g.call_function(torch.ops.aten.add.Tensor, (a, y)),))
    g.output(b)
    gm = fx.GraphModule(torch.nn.Module(), g)
    args = (torch.randn(5), torch.randn(5))
    want = gm(*args)
    result = AddReluToClampedAdd()(gm, _toy_ctx())
    assert result.modified
    assert _count(result.graph_module, torch.ops.aten.relu.default) == 0
    assert _count(result.graph_module, torch.ops.aten.clamp_min.default) == 2
    assert torch.equal(result.graph_module(*args), want)


def test_fuse_encode_step_postcondition_names_the_pass(base):
    """A fusion that matches fewer layers than it must is a PassError naming it."""
    model, hm = base

    class NeverMatches(FuseEncodeStep):
        def accept(self, match, gm, ctx):
            return False

    with pytest.raises(HatacError, match=r"pass NeverMatches failed: ValueError: fused 0 of 2 hashed layers"):
        hatac.convert(model, hatac.HataConfig(**CFG), passes=[NeverMatches()], hash_weights=hm.hash_weights)


# -- example passes -----------------------------------------------------------------------------------

def test_per_layer_budgets_sources(tmp_path):
    from importlib import util

    spec = util.spec_from_file_location("plb", EXAMPLES / "per_layer_budgets.py")
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.PerLayerBudgets().budgets == {int(k): v for k, v in json.loads((EXAMPLES / "layer_budgets.json").read_text()).items()}
    f = tmp_path / "b.json"
    f.write_text('{"1": 0.5, "-2": 12}')
    assert mod.PerLayerBudgets(path=f).budgets == {1: 0.5, -2: 12.0}
    assert mod.PerLayerBudgets(budgets="3:7", path=f).budgets == {3: 7.0}  # budgets win over the file
    assert mod.PerLayerBudgets(path=f).spec_args() == {"budgets": "-2:12,1:0.5"}
    for bad, msg in [('{"1": 2.5}', "whole token count"), ('{"x": 3}', "not an integer"), ("[1]", "JSON object"), ("{", "cannot read")]:
        f.write_text(bad)
        with pytest.raises(HatacError, match=msg):
            mod.PerLayerBudgets(path=f)
    with pytest.raises(HatacError, match="does not exist"):
        mod.PerLayerBudgets(path=tmp_path / "nope.json")


def test_pass_arguments_and_specs(monkeypatch):
    p = load_pass(f"{DENSE_PASS}?layers=1,-1")
    assert p.layers == (1, -1) and p.position == "before_rewrite"
    assert pass_spec(f"{DENSE_PASS}?layers=1,-1", p) == f"{DENSE_PASS}?layers=1,-1"
    rel = "examples/passes/keep_layers_dense.py:KeepLayersDense"
    monkeypatch.chdir(ROOT)
    spec = pass_spec(f"{rel}?layers=2", load_pass(f"{rel}?layers=2"))
    assert spec == f"{DENSE_PASS}?layers=2"  # file paths are stored absolute
    b = load_pass(f"{BUDGETS_PASS}?budgets=2:0.25,-1:8")
    assert pass_spec(f"{BUDGETS_PASS}?budgets=2:0.25,-1:8", b) == f"{BUDGETS_PASS}?budgets=-1:8,2:0.25"
    assert pass_spec("hatac.passes.fusion.encode_write:FuseEncodeStep", load_pass("hatac.passes.fusion.encode_write:FuseEncodeStep")) == "hatac.passes.fusion.encode_write:FuseEncodeStep"
    for spec, msg in [
        (f"{DENSE_PASS}?bogus=1", "could not be created"),
        (f"{DENSE_PASS}?layers=a", "layers must be integers"),
        (f"{DENSE_PASS}?layers", "key=value"),
        ("hatac.passes.fusion.encode_write", "module:Class"),
        ("hatac.passes.fusion.encode_write:Nope", "has no 'Nope'"),
        ("no_such_module_xyz:Pass", "cannot import"),
    ]:
        with pytest.raises(HatacError, match=msg):
            load_pass(spec)


def test_example_passes_change_layer_specs_and_graphs(base):
    model, hm = base
    passes = [load_pass(f"{BUDGETS_PASS}?budgets=2:0.25,-1:8"), load_pass(f"{DENSE_PASS}?layers=-1")]
    got = hatac.convert(model, hatac.HataConfig(**CFG), passes=passes)
    layers = got.layers
    assert [s.hashed for s in layers.values()] == [False, False, True, False]
    assert layers[2].budget == 0.25 and hm.layers[2].budget == 4
    assert layers[3].budget == 8  # recorded, though layer 3 is now dense
    assert set(got.hash_weights) == {2}
    d = got.decode_graph
    assert _count(d, ops.hamming_topk.default) == 1 and _count(d, ops.sparse_attention.default) == 1
    assert _count(d, ops.cache_attention.default) == 3 and _count(hm.decode_graph, ops.cache_attention.default) == 2
    (topk,) = [n for n in d.graph.nodes if n.target is ops.hamming_topk.default]
    assert topk.meta["hatac_layer"] == 2 and topk.args[4] == 0.25
    assert "key_codes_3" not in {n.name for n in d.graph.nodes if n.op == "placeholder"}
    with pytest.raises(HatacError, match=r"pass KeepLayersDense: layer 9 is not an attention layer"):
        hatac.convert(model, hatac.HataConfig(**CFG), passes=[load_pass(f"{DENSE_PASS}?layers=9")])


def test_cli_convert_with_user_passes_replays_on_load(llama_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the passes are given by relative path, as a user in the repo would
    budgets = tmp_path / "budgets.json"
    budgets.write_text('{"2": 0.5, "3": 6}')
    out = tmp_path / "art"
    code, output = _cli(
        "convert", llama_dir, "-o", out, "--hash", "random", "--rbits", 64, "--budget", 4,
        "--pass", f"examples/passes/per_layer_budgets.py:PerLayerBudgets?path={budgets}",
        "--pass", "examples/passes/keep_layers_dense.py:KeepLayersDense?layers=2",
        "--pass", "hatac.passes.fusion.encode_write:FuseEncodeStep",
    )
    assert code == 0, output
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["passes"] == [f"{BUDGETS_PASS}?budgets=2:0.5,3:6", f"{DENSE_PASS}?layers=2", "hatac.passes.fusion.encode_write:FuseEncodeStep"]
    assert [(l["layer"], l["hashed"], l["budget"]) for l in m["layers"]] == [(0, False, 4), (1, False, 4), (2, False, 0.5), (3, True, 6)]
    assert set(m["hash_weights"]["tensors"]) == {"layer.3"}
    budgets.unlink()  # the manifest holds the budgets: replay needs no file
    loaded = hatac.load(out, device="cpu")
    assert [s.to_dict() for s in loaded.layers.values()] == m["layers"]
    d = loaded.decode_graph
    assert _count(d, ops.hash_encode_step_kv.default) == 1 and _count(d, ops.hash_encode.default) == 0
    assert [n.args[4] for n in d.graph.nodes if n.target is ops.hamming_topk.default] == [6.0]


@pytest.mark.parametrize(
    "cls,patterns",
    [
        ("Boom", ["pass Boom failed", "RuntimeError: kaboom"]),
        ("Refuse", ["pass Refuse: this model is not for me"]),
        ("BreakGraph", ["pass BreakGraph left an invalid graph"]),
    ],
)
def test_cli_names_a_failing_user_pass(llama_dir, tmp_path, cls, patterns):
    out = tmp_path / "o"
    code, output = _cli("convert", llama_dir, "-o", out, "--hash", "random", "--rbits", 64, "--pass", f"{BROKEN}:{cls}")
    _one_line_error(code, output, *patterns)
    assert not out.exists()


def test_cli_bad_pass_argument(llama_dir, tmp_path):
    code, output = _cli("convert", llama_dir, "-o", tmp_path / "o", "--hash", "random", "--pass", f"{DENSE_PASS}?layers=x")
    _one_line_error(code, output, "pass KeepLayersDense", "layers must be integers")
