"""``hatac export``: fx code and node tables, ONNX with the hatac domain, torch.export programs, the HTML
page, and the CLI's one-line errors and atomic writes.

A 2-layer tiny Llama (layer 0 dense, layer 1 hashed) keeps ONNX export, the slow part, near 15 s a graph.
"""

import html.parser
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import hatac
from hatac.cli import app
from hatac.export import export
from hatac.export.common import clone_inputs, example_inputs, input_names
from hatac.passes.fusion.encode_write import FuseCacheWrites, FuseEncodeStep
from models import tiny_model

ops = torch.ops.hatac
DOCS = Path(__file__).resolve().parents[2] / "docs" / "EXPORT.md"
CFG = dict(hash="random", budget=4, dense_layers=1, rbits=64, fuse_encode=False)  # the fusion applied by hand
runner = CliRunner()


def _cli(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def _one_line_error(code, output, pattern):
    assert code != 0, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert pattern in errors[0], output


@pytest.fixture(scope="module")
def plain():
    model = tiny_model("llama", num_hidden_layers=2)
    return hatac.convert(model, hatac.HataConfig(**CFG))


@pytest.fixture(scope="module")
def fused(plain):
    return hatac.convert(plain.hf_model, hatac.HataConfig(**CFG), passes=[FuseEncodeStep()], hash_weights=plain.hash_weights)


@pytest.fixture(scope="module")
def folded(plain):
    """Both decode fusions of the default recipe: the K and V writes inside the encode op."""
    return hatac.convert(plain.hf_model, hatac.HataConfig(**CFG), passes=[FuseEncodeStep(), FuseCacheWrites()], hash_weights=plain.hash_weights)


@pytest.fixture(scope="module")
def artifact(plain, tmp_path_factory, tiny_tok):
    out = tmp_path_factory.mktemp("exp") / "art"
    hatac.save(plain, out, tokenizer=tiny_tok)
    return out


# -- fx -------------------------------------------------------------------------------------------------

def test_fx_code_and_node_table(plain, tmp_path):
    written = export(plain, "fx", tmp_path / "fx")
    assert sorted(p.name for p in written) == ["decode.py", "decode_nodes.tsv", "prefill.py", "prefill_nodes.tsv"]
    code = (tmp_path / "fx" / "decode.py").read_text()
    compile(code, "decode.py", "exec")  # readable *and* valid Python
    assert "def forward(self, input_ids, position_ids, logits_to_keep, write_pos, topk_width, k_cache_0" in code
    for op in ("hash_encode", "hamming_topk", "sparse_attention", "cache_write", "cache_attention"):
        assert f"torch.ops.hatac.{op}.default(" in code
    assert "#   1 (model.layers.1.self_attn): hashed, r=64, budget=4" in code and "#   0 (model.layers.0.self_attn): dense" in code
    lines = (tmp_path / "fx" / "decode_nodes.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["name", "op", "target", "layer", "shape"]
    rows = [dict(zip(lines[0].split("\t"), l.split("\t"))) for l in lines[1:]]
    by_target = {}
    for r in rows:
        by_target.setdefault(r["target"], []).append(r)
    assert len(rows) == len(plain.decode_graph.graph.nodes)
    (topk,) = by_target["hatac.hamming_topk"]
    k = plain.topk_width(10)
    assert topk["layer"] == "1" and topk["shape"] == f"int32[2, 2, 1, {k}]"
    (dense,) = by_target["hatac.cache_attention"]
    assert dense["layer"] == "0" and dense["shape"] == "float32[2, 4, 1, 64]"
    assert {r["layer"] for r in by_target["hatac.hash_encode"]} == {"1"}
    assert next(r for r in rows if r["name"] == "key_codes_1")["shape"] == "int32[2, 2, 24, 2]"
    prefill = (tmp_path / "fx" / "prefill.py").read_text()
    assert "hamming_topk" not in prefill and "torch.ops.hatac.cache_attention.default(" in prefill


# -- functional form (what ONNX exports) ------------------------------------------------------------------

@pytest.mark.parametrize("which,variant", [("plain", "decode"), ("fused", "decode"), ("folded", "decode"), ("plain", "prefill")])
@torch.no_grad()
def test_functional_graph_computes_what_the_graph_does(plain, fused, folded, which, variant):
    from hatac.export.functional import functionalize

    model = {"plain": plain, "fused": fused, "folded": folded}[which]
    gm = model.decode_graph if variant == "decode" else model.prefill_graph
    assert which != "folded" or any(n.target is ops.hash_encode_step_kv.default for n in gm.graph.nodes)
    fgm, updated = functionalize(gm)
    mutating = (ops.cache_write.default, ops.hash_encode_step.default, ops.hash_encode_step_kv.default, ops.cache_attention.default)
    assert not any(n.target in mutating for n in fgm.graph.nodes)
    caches = [n for n in input_names(gm) if n.startswith(("k_cache", "v_cache", "key_codes"))]
    assert updated == caches
    inputs = example_inputs(model, variant)
    mutated, functional = clone_inputs(inputs), clone_inputs(inputs)
    want = gm(**mutated)
    got = fgm(*functional.values())
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-5)
    for name, new in zip(updated, got[1:]):
        torch.testing.assert_close(new, mutated[name], rtol=1e-5, atol=1e-5)
        assert torch.equal(functional[name], inputs[name])  # the functional graph left its inputs alone


# -- onnx -----------------------------------------------------------------------------------------------

def _onnx_checks(path: Path, model, variant: str):
    import onnx

    from hatac.export.onnx_ops import DOMAIN

    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert {o.domain: o.version for o in m.opset_import}[DOMAIN] == 1
    ins = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    outs = [o.name for o in m.graph.output]
    gm = model.decode_graph if variant == "decode" else model.prefill_graph
    assert list(ins) == input_names(gm)
    caches = [n for n in ins if n.startswith(("k_cache", "v_cache", "key_codes"))]
    assert outs == ["logits"] + [f"{c}_out" for c in caches]
    assert ins["k_cache_0"] == ["batch", 2, "cache_len", 64] and ins["key_codes_1"] == ["batch", 2, "cache_len", 2]
    nodes = list(m.graph.node)
    hatac_nodes = [n for n in nodes if n.domain == DOMAIN]
    # every cache update is a standard ScatterElements on the slot axis, except codes a fused op writes
    scatters = [n for n in nodes if n.op_type == "ScatterElements"]
    assert len(scatters) == len(caches) - sum(n.op_type == "HashEncodeStep" for n in hatac_nodes)
    assert all(onnx.helper.get_attribute_value(a) == 2 for n in scatters for a in n.attribute if a.name == "axis")
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["hatac.graph"] == variant and json.loads(meta["hatac.layers"])[1]["hashed"]
    return m, ins, hatac_nodes


def test_onnx_prefill(plain, tmp_path):
    written = export(plain, "onnx", tmp_path / "onnx", graph="prefill")
    assert [p.name for p in written] == ["prefill.onnx"]
    m, ins, hatac_nodes = _onnx_checks(written[0], plain, "prefill")
    assert ins["input_ids"] == ["batch", "seq"] and ins["logits_to_keep"] == ["keep"]
    # prefill: the hashed layer encodes its new keys (a hatac node); attention is standard ONNX everywhere
    assert [n.op_type for n in hatac_nodes] == ["HashEncode"]
    assert sum(n.op_type == "Softmax" for n in m.graph.node) == 2
    out = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    assert out["logits"] == ["batch", "keep", 320]


def test_onnx_decode_fused(fused, tmp_path):
    import onnx

    written = export(fused, "onnx", tmp_path / "onnx", graph="decode")
    m, ins, hatac_nodes = _onnx_checks(written[0], fused, "decode")
    assert ins["input_ids"] == ["batch", 1] and ins["topk_width"] == []
    assert sorted(n.op_type for n in hatac_nodes) == ["HammingTopK", "HashEncodeStep", "SparseAttention"]
    by_type = {n.op_type: n for n in hatac_nodes}
    step, topk, attn = by_type["HashEncodeStep"], by_type["HammingTopK"], by_type["SparseAttention"]
    assert list(step.input)[2:] == ["hatac_w_1", "key_codes_1", "write_pos"] and len(step.output) == 2
    assert list(topk.input) == [step.output[0], step.output[1], "position_ids", "topk_width"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in topk.attribute}
    assert attrs == {"budget": 4.0, "sink": 0, "recent": 0, "window": 0}
    assert list(attn.input)[3] == topk.output[0]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in attn.attribute} == {"scale": 0.125}
    # the dense layer is plain ONNX attention; the updated code cache comes out of the fused op
    assert sum(n.op_type == "Softmax" for n in m.graph.node) == 1
    assert "key_codes_1_out" in [o.name for o in m.graph.output]
    assert not any(n.op_type == "ScatterElements" and "key_codes_1" in n.input for n in m.graph.node)


def test_onnx_domain_is_documented():
    from hatac.export.onnx_ops import SCHEMAS

    doc = DOCS.read_text()
    for name, schema in SCHEMAS.items():
        section = doc.split(f"### `hatac::{name}`", 1)
        assert len(section) == 2, f"{name} is not documented in {DOCS}"
        body = section[1].split("### ", 1)[0]
        for p in [*schema.inputs, *schema.outputs]:
            assert f"`{p.name}`" in body, (name, p.name)
        for a in schema.attributes:
            assert f"`{a}`" in body, (name, a)


def test_onnx_decode_folded(folded, tmp_path):
    """The K and V writes folded into the encode op export as the standard scatters of the unfused graph."""
    written = export(folded, "onnx", tmp_path / "onnx", graph="decode")
    m, _, hatac_nodes = _onnx_checks(written[0], folded, "decode")
    assert sorted(n.op_type for n in hatac_nodes) == ["HammingTopK", "HashEncodeStep", "SparseAttention"]
    for cache in ("k_cache_1", "v_cache_1"):
        assert sum(n.op_type == "ScatterElements" and cache in n.input for n in m.graph.node) == 1


# -- pt2 ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["fused", "folded"])
@torch.no_grad()
def test_pt2_programs_load_run_and_match_eager(fused, folded, which, tmp_path):
    fused = {"fused": fused, "folded": folded}[which]
    written = export(fused, "pt2", tmp_path / "pt2")
    assert sorted(p.name for p in written) == ["decode.pt2", "prefill.pt2"]
    for variant in ("decode", "prefill"):
        ep = torch.export.load(str(tmp_path / "pt2" / f"{variant}.pt2"))
        gm = fused.decode_graph if variant == "decode" else fused.prefill_graph
        assert any("hatac" in str(n.target) for n in ep.graph.nodes)
        # other sizes than the example: batch 3, a longer cache, another prefill length
        from hatac.export.common import ExampleSizes

        inputs = example_inputs(fused, variant, ExampleSizes(batch=3, prefill_len=5, decode_past=20, keep=2, capacity=40), seed=1)
        eager, loaded = clone_inputs(inputs), clone_inputs(inputs)
        want = gm(**eager)
        got = ep.module()(*loaded.values())
        assert torch.equal(got, want)
        for name in eager:  # the program updates the caches in place, as the graph does
            if isinstance(eager[name], torch.Tensor):
                assert torch.equal(loaded[name], eager[name]), name


# -- html -----------------------------------------------------------------------------------------------

class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.details, self.errors = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag in ("details", "summary", "table", "tr", "td", "p", "span"):
            self.stack.append(tag)
        self.details += tag == "details"

    def handle_endtag(self, tag):
        if tag in ("details", "summary", "table", "tr", "td", "p", "span"):
            if not self.stack or self.stack.pop() != tag:
                self.errors.append(tag)


def test_html_page(fused, tmp_path):
    from hatac.export.to_html import render

    page = render(fused)
    parser = _Tags()
    parser.feed(page)
    assert not parser.errors and not parser.stack
    # per graph: inputs, before, 2 layers, after
    assert parser.details == 2 * 5
    assert "http://" not in page and "https://" not in page and "<link" not in page  # self-contained
    for op in ("hash_encode_step", "hamming_topk", "sparse_attention", "cache_write", "cache_attention", "hash_encode"):
        assert f'<span class="hatacop">{op}</span>' in page
    assert page.count('<tr class="hatac">') == sum(1 for g in (fused.decode_graph, fused.prefill_graph) for n in g.graph.nodes if str(n.target).startswith("hatac."))
    assert re.search(r'<details class="group" open><summary><b>layer 1</b><span class="tag hashed">hashed', page)
    assert re.search(r'<details class="group"><summary><b>layer 0</b><span class="tag dense">dense', page)
    out = export(fused, "html", tmp_path / "g.html")
    assert out == [tmp_path / "g.html"] and (tmp_path / "g.html").read_text() == page


# -- CLI ------------------------------------------------------------------------------------------------

def test_cli_export_fx_and_html(artifact, tmp_path):
    code, output = _cli("export", artifact, "--format", "html", "-o", tmp_path / "graphs.html")
    assert code == 0, output
    assert "hamming_topk" in (tmp_path / "graphs.html").read_text()
    code, output = _cli("export", artifact, "--format", "fx", "-o", tmp_path / "fx", "--graph", "decode")
    assert code == 0, output
    assert sorted(p.name for p in (tmp_path / "fx").iterdir()) == ["decode.py", "decode_nodes.tsv"]
    # an existing output is refused, and kept, without --overwrite
    code, output = _cli("export", artifact, "--format", "fx", "-o", tmp_path / "fx")
    _one_line_error(code, output, "--overwrite")
    assert sorted(p.name for p in (tmp_path / "fx").iterdir()) == ["decode.py", "decode_nodes.tsv"]
    code, output = _cli("export", artifact, "--format", "fx", "-o", tmp_path / "fx", "--overwrite")
    assert code == 0, output
    assert len(list((tmp_path / "fx").iterdir())) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["--format", "svgz"], "--format must be one of fx, onnx, pt2, html, got 'svgz'"),
        (["--format", "fx", "--graph", "middle"], "--graph must be decode, prefill or both"),
    ],
)
def test_cli_export_bad_options(artifact, tmp_path, args, pattern):
    code, output = _cli("export", artifact, "-o", tmp_path / "x", *args)
    _one_line_error(code, output, pattern)
    assert not (tmp_path / "x").exists()


def test_cli_export_missing_artifact(tmp_path):
    code, output = _cli("export", tmp_path / "nope", "--format", "fx", "-o", tmp_path / "x")
    _one_line_error(code, output, "does not exist")


def test_failed_export_leaves_nothing(plain, tmp_path, monkeypatch):
    from hatac.export import to_fx

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(to_fx, "node_rows", boom)  # dies after decode.py is written
    with pytest.raises(RuntimeError):
        export(plain, "fx", tmp_path / "fx")
    assert list(tmp_path.iterdir()) == []
