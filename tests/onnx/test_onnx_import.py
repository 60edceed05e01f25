"""ONNX in: round trips of exported torch models, hand-built graphs, and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx_helpers import export, mlp, res_cnn, vnnlib

import absdsl
from absdsl.cli import main
from absdsl.errors import AbsdslError
from absdsl.verification.onnx_io import OnnxError, onnxruntime_outputs, onnxruntime_session

DOMAINS = ("box", "zonotope", "crown-ibp", "deeppoly")


def _bounds(model: torch.nn.Module, lo: torch.Tensor, hi: torch.Tensor, domain: str,
            spec: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return absdsl.compile(model, domain)(lo, hi, spec=spec)


def test_mlp_round_trip_bounds_equal_in_float64(mlp_file: Path) -> None:
    torch_model = mlp().double()
    net = absdsl.load_onnx(mlp_file)
    assert net.input_shape == (2,) and net.num_outputs == 2
    net = net.double()
    x = torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lo, hi = absdsl.linf_ball(x, 0.1, clip=None)
    spec = absdsl.margin_spec(torch.tensor([0, 1, 0, 1, 1]), 2).double()
    for domain in DOMAINS:
        for s in (None, spec):
            a, b = _bounds(torch_model, lo, hi, domain, s), _bounds(net, lo, hi, domain, s)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), domain


def test_cnn_with_batch_norm_residual_and_normalisation(tmp_path: Path) -> None:
    model = res_cnn()
    path = export(model, (2, 6, 6), tmp_path / "res.onnx", fold=False, dynamic=True)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    # the file really holds the ops under test (not folded away by the exporter)
    assert {"Sub", "Div", "Conv", "BatchNormalization", "Add", "AveragePool",
            "GlobalAveragePool", "Concat", "Reshape", "Gemm", "Sigmoid", "Tanh", "LeakyRelu",
            "Clip", "Relu", "Flatten"} <= ops
    net = absdsl.load_onnx(path)
    x = torch.rand(4, 2, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    ort = onnxruntime_outputs(onnxruntime_session(path), x.numpy())
    np.testing.assert_allclose(ort, model(x).detach().numpy(), atol=1e-5)
    lo, hi = absdsl.linf_ball(x.double(), 0.02)
    m64, n64 = model.double(), net.double()
    for domain in DOMAINS:
        if domain == "zonotope":
            continue  # no sigmoid/tanh rule in Zonotope
        a, b = _bounds(m64, lo, hi, domain), _bounds(n64, lo, hi, domain)
        assert torch.allclose(a[0], b[0], rtol=0, atol=1e-12), domain
        assert torch.allclose(a[1], b[1], rtol=0, atol=1e-12), domain


def _model(nodes: list, inits: list, in_shape: list, out_shape: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _hand_built(tmp_path: Path) -> Path:
    """MatMul + Add, a fixed batch of 1, a constant-shape Reshape, shape arithmetic on
    constants (Constant, Cast), a one-sided Clip and Flatten(axis=0)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 8)).astype(np.float32)
    b = rng.normal(size=(8,)).astype(np.float32)
    w2 = rng.normal(size=(8, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="flat"),
        helper.make_node("MatMul", ["r", "w"], ["m"], name="fc1/MatMul"),
        helper.make_node("Add", ["m", "b"], ["a"], name="fc1/Add"),
        helper.make_node("Constant", [], ["lo"], name="c", value=numpy_helper.from_array(
            np.array(-0.25, dtype=np.float64))),
        helper.make_node("Cast", ["lo"], ["lo32"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Clip", ["a", "lo32"], ["c1"], name="clip_low"),
        helper.make_node("Gemm", ["c1", "w2"], ["g"], name="fc2", alpha=0.5),
        helper.make_node("Flatten", ["g"], ["y"], name="flat0", axis=0),
    ]
    inits = [("shape", np.array([1, -1], dtype=np.int64)), ("w", w), ("b", b), ("w2", w2)]
    path = tmp_path / "hand.onnx"
    onnx.save(_model(nodes, inits, [1, 3, 2, 2], [1, 3]), str(path))
    return path


def test_hand_built_graph_matches_onnxruntime_and_is_sound(tmp_path: Path) -> None:
    path = _hand_built(tmp_path)
    net = absdsl.load_onnx(path)
    assert net.input_shape == (3, 2, 2) and net.num_outputs == 3
    x = torch.rand(6, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    ort = onnxruntime_outputs(onnxruntime_session(path), x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), ort, rtol=1e-5, atol=1e-5)
    net64 = net.double()
    lo, hi = absdsl.linf_ball(x.double(), 0.3, clip=None)
    pts = lo + (hi - lo) * torch.rand(64, *lo.shape, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ys = torch.stack([net64(p) for p in pts])
    for domain in DOMAINS:
        lb, ub = _bounds(net64, lo, hi, domain)
        assert bool((ys >= lb - 1e-9).all() and (ys <= ub + 1e-9).all()), domain


def test_op_without_lowering_names_the_onnx_node(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [helper.make_node("Softmax", ["x"], ["y"], name="head/softmax", axis=1)]
    path = tmp_path / "softmax.onnx"
    onnx.save(_model(nodes, [], [1, 4], [1, 4]), str(path))
    with pytest.raises(OnnxError, match=r"ONNX node 'head/softmax' \(Softmax\) has no lowering"):
        absdsl.load_onnx(path)
    prop = tmp_path / "p.vnnlib"
    prop.write_text(vnnlib([(0.0, 1.0)] * 4, 4, "(>= Y_0 Y_1)"))
    assert main(["verify", str(path), str(prop)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "'head/softmax' (Softmax)" in out.err


def test_lowered_op_outside_its_rule_names_the_onnx_node(tmp_path: Path) -> None:
    # a LeakyRelu slope above 1 is supported by ONNX but has no rule (not concave/convex)
    nodes = [helper.make_node("LeakyRelu", ["x"], ["y"], name="act7", alpha=2.0)]
    path = tmp_path / "leaky.onnx"
    onnx.save(_model(nodes, [], [1, 4], [1, 4]), str(path))
    with pytest.raises(AbsdslError, match=r"ONNX node 'act7' \(LeakyRelu\).*slope"):
        absdsl.load_onnx(path)


def test_not_onnx_and_truncated_files(tmp_path: Path, mlp_file: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \xff\xfe" * 7)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(mlp_file.read_bytes()[: len(mlp_file.read_bytes()) // 2])
    for bad in (junk, cut, tmp_path / "missing.onnx"):
        with pytest.raises(OnnxError, match=str(bad.name)):
            absdsl.load_onnx(bad)
        assert main(["bounds", "--model", str(bad), "--eps", "0.1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and bad.name in err


def test_cli_takes_onnx_models(mlp_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bounds", "--model", str(mlp_file), "--eps", "0.05", "--domain",
                 "deeppoly"]) == 0
    out = capsys.readouterr().out
    assert "out 0: [" in out and "out 1: [" in out
    assert main(["ir", "--model", str(mlp_file)]) == 0
    assert "relu" in capsys.readouterr().out


def test_training_resolves_onnx_models(tmp_path: Path) -> None:
    from absdsl.training.data import dataset_info
    from absdsl.training.models import ModelError, build_model

    info = dataset_info("mnist5k")
    torch.manual_seed(0)
    digits = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    path = export(digits, (1, 28, 28), tmp_path / "digits.onnx", dynamic=True)
    model = build_model(str(path), info)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), digits(x), atol=1e-6)
    small = export(mlp(), (2,), tmp_path / "small.onnx")
    with pytest.raises(ModelError, match="does not accept"):
        build_model(str(small), info)
