"""The int8 weight storage the encoder export tool offers (measured, not adopted: bench/results/encoder_int8.md),
checked on a tiny graph: names kept, size cut, outputs within int8 rounding."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from p2p_edge.export.encoder import GROUP, store_weights_int8  # noqa: E402


def tiny_model(path, rng):
    """ids -> Gather(table) -> MatMul(w) + b: an embedding table and a MatMul weight, like the encoder's."""
    table = rng.standard_normal((300, 64)).astype(np.float32)
    w = (rng.standard_normal((64, 96)) * np.linspace(0.1, 3, 96)).astype(np.float32)   # columns of unequal size
    b = rng.standard_normal(96).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["z"]),
         helper.make_node("Add", ["z", "b"], ["y"])], "tiny",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 96])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def run(path, ids):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def test_int8_storage_keeps_the_outputs_and_cuts_the_size(tmp_path):
    rng = np.random.default_rng(0)
    src, dst = tmp_path / "f32.onnx", tmp_path / "i8.onnx"
    tiny_model(src, rng)
    info = store_weights_int8(src, dst)
    assert info["quantized_tensors"] == 2   # the table and the MatMul weight; the bias stays float32
    inits = {i.name: i for i in onnx.load(str(dst)).graph.initializer}
    assert inits["w.int8"].data_type == TensorProto.INT8 and inits["table.int8"].data_type == TensorProto.INT8
    assert inits["b"].data_type == TensorProto.FLOAT and "w" not in inits and "table" not in inits
    assert numpy_helper.to_array(inits["w.scale"]).shape == (64 // GROUP, 1, 96)
    assert dst.stat().st_size < 0.4 * src.stat().st_size
    ids = rng.integers(0, 300, 50)
    want, got = run(src, ids), run(dst, ids)
    # int8 rounding: each weight within half a step (max|w| of its group / 127), ~0.5% rms for Gaussian weights;
    # two quantized tensors in a row stay within 2%
    rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    assert rel.max() < 0.02, rel.max()
    assert not np.array_equal(got, want)   # it really was quantized


def test_a_graph_with_nothing_large_is_left_as_it_is(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "a.onnx"))
    assert store_weights_int8(tmp_path / "a.onnx", tmp_path / "b.onnx")["quantized_tensors"] == 0


def test_int8_export_needs_an_out_dir(capsys):
    from p2p_edge.export.encoder import main

    assert main(["--int8"]) == 2
    assert "--int8 needs --out" in capsys.readouterr().err
