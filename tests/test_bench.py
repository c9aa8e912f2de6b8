"""The benchmark command on a tiny grid (seconds), and its naive yardstick computes the same TP."""
import pytest
import torch

from helpers import assert_rel, needs, require
from targetprop import TPRNN, bench, kernels


@needs("cpp")
def test_bench_tiny_grid_writes_a_table_and_plot(tmp_path):
    out, png = tmp_path / "table.md", tmp_path / "cost.png"
    assert bench.main(["--grid", "tiny", "--repeats", "2", "--warmup", "1", "--threads", "1",
                       "--methods", "native-bptt", "naive-tp", "tp-linearized", "engine-bp", "--regime", "orthogonal",
                       "--output", str(out), "--plot", str(png)]) == 0
    text = out.read_text()
    assert "Command: `targetprop bench --grid tiny" in text and "Machine:" in text
    assert "compiled loops: " + kernels.load().widest_isa() in text
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| 12 |")]
    assert [r[8].strip() for r in rows] == ["native-bptt", "naive-tp", "tp-linearized", "engine-bp"]
    assert {r[7].strip() for r in rows} == {"orthogonal"}
    assert rows[0][12].strip() == "1.00" and all(float(r[9]) > 0 for r in rows)
    assert png.stat().st_size > 1000


@needs("cpp")
def test_every_regime_is_timed_by_default_each_against_its_own_native_run(tmp_path):
    out = tmp_path / "table.md"
    assert bench.main(["--grid", "tiny", "--repeats", "1", "--warmup", "0", "--threads", "1", "--methods",
                       "native-bptt", "tp-linearized", "--loops", "cpp:base", "--output", str(out)]) == 0
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| 12 |")]
    assert [(r[7].strip(), r[8].strip()) for r in rows] == [
        (regime, m) for regime in bench.REGIMES for m in ("native-bptt", "tp-linearized")]
    assert [r[12].strip() for r in rows][::2] == ["1.00"] * len(bench.REGIMES)
    assert kernels.load().isa() == kernels.load().widest_isa()  # the narrowed loops are undone after the run


@needs("cpp")
def test_loop_variants_are_timed_side_by_side(tmp_path):
    out = tmp_path / "table.md"
    assert bench.main(["--grid", "tiny", "--repeats", "1", "--warmup", "0", "--threads", "1", "--regime", "default",
                       "--methods", "native-bptt", "tp-linearized", "--loops", "torch", "cpp:base",
                       "--output", str(out)]) == 0
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| 12 |")]
    assert [r[8].strip() for r in rows] == ["native-bptt", "tp-linearized [torch]", "tp-linearized [cpp:base]"]
    assert kernels.load().isa() == kernels.load().widest_isa()
    with pytest.raises(ValueError, match="loops must be one of"):
        bench.check_loops("cpp:sse9")


def test_regimes_set_the_weights():
    gen = torch.Generator().manual_seed(0)
    layers = {r: bench.set_regime_(TPRNN(2, 6), r, gen) for r in bench.REGIMES}
    eye = torch.eye(6)
    assert_rel(layers["orthogonal"].weight_hh_l0.T @ layers["orthogonal"].weight_hh_l0, eye, tol=1e-6)
    assert_rel(layers["contractive"].weight_hh_l0.T @ layers["contractive"].weight_hh_l0, 0.25 * eye, tol=1e-6)
    assert layers["contractive"].bias_hh_l0.abs().max() == 0
    assert layers["default"].bias_hh_l0.abs().max() > 0  # torch.nn's own init kept
    with pytest.raises(ValueError, match="regime must be one of"):
        bench.check_regime("sideways")
    with pytest.raises(ValueError, match="no checkpoint"):
        bench.check_regime("run:/nonexistent/run")


def test_gru_methods_are_compared_with_the_native_gru(tmp_path):
    out = tmp_path / "table.md"
    assert bench.main(["--grid", "tiny", "--repeats", "2", "--warmup", "1", "--threads", "1", "--methods",
                       "gru-native-bptt", "gru-tp-linearized", "gru-engine-bp", "native-bptt", "--regime", "default",
                       "--output", str(out)]) == 0
    rows = {r[8].strip(): r for r in (line.split("|") for line in out.read_text().splitlines()) if r[1:2] == [" 12 "]}
    assert rows["gru-native-bptt"][12].strip() == "1.00" and rows["gru-engine-bp"][13].strip() == "1.00"
    assert rows["native-bptt"][12].strip() == "1.00" and rows["native-bptt"][13].strip() == "–"
    assert "gru-tp-linearized" not in bench.DEFAULT_METHODS


def test_lstm_methods_are_compared_with_the_native_lstm(tmp_path):
    out = tmp_path / "table.md"
    methods = ["lstm-native-bptt", "lstm-engine-bp", "lstm-tp-linearized", "lstm-tp-through-time", "native-bptt"]
    assert bench.main(["--grid", "tiny", "--repeats", "2", "--warmup", "1", "--threads", "1", "--methods", *methods,
                       "--regime", "orthogonal", "--output", str(out)]) == 0
    rows = {r[8].strip(): r for r in (line.split("|") for line in out.read_text().splitlines()) if r[1:2] == [" 12 "]}
    assert list(rows) == methods
    assert rows["lstm-native-bptt"][12].strip() == "1.00" and rows["lstm-engine-bp"][13].strip() == "1.00"
    assert rows["native-bptt"][12].strip() == "1.00" and rows["native-bptt"][13].strip() == "–"
    assert all(float(rows[m][12]) > 0 for m in methods)
    assert not any(m.startswith("lstm-") for m in bench.DEFAULT_METHODS)
    assert [s[:3] for s in bench.GRIDS["lstm"]] == [(784, 16, 100), (60, 16, 100), (784, 512, 100)]


def test_an_lstm_layer_is_timed_with_the_loops_it_has():
    """The LSTM has no Triton loops: its methods are timed with the others and left out with those."""
    rows = bench.measure((5, 2, 4, 1), ["lstm-tp-linearized", "lstm-native-bptt"], 1, repeats=1, warmup=0,
                         loops=("torch", "triton"))
    assert [r.method for r in rows] == ["lstm-tp-linearized [torch]", "lstm-native-bptt"]


def test_an_lstm_runs_weights_are_timed_with_the_lstm_methods(tmp_path):
    from targetprop import TPLSTM
    from targetprop.training import checkpoint, rundir

    layer = TPLSTM(3, 7)
    checkpoint.save_in(rundir.checkpoint_dir(tmp_path), 5, {"model": {"rnn." + k: v for k, v in layer.state_dict().items()}})
    regime = "run:" + str(tmp_path)
    assert bench.run_shape(regime) == (7, 3, "lstm")
    rows = bench.measure((5, 2, 99, 99), ["native-bptt", "lstm-native-bptt", "lstm-tp-linearized"], 1, repeats=1,
                         warmup=0, regime=regime)
    assert [(r.method, r.p, r.d) for r in rows] == [("lstm-native-bptt", 7, 3), ("lstm-tp-linearized", 7, 3)]
    loaded = bench.set_regime_(TPLSTM(3, 7), regime, torch.Generator())
    assert torch.equal(loaded.weight_hh_l0, layer.weight_hh_l0)


def test_naive_yardstick_equals_the_library_rule():
    torch.manual_seed(0)
    layer = TPRNN(2, 5, batch_first=True, dtype=torch.float64, reg=1.0, target_step=1e-2, tol=1e-3,
                  through_time=False)  # the yardstick is eq. 3
    naive = bench._NaiveModule(2, 5, batch_first=True, dtype=torch.float64)
    naive.load_state_dict(layer.state_dict())
    x = torch.randn(3, 7, 2, dtype=torch.float64) * 0.5
    c = torch.randn(3, 5, dtype=torch.float64)
    for m in (layer, naive):
        (m(x)[1][0] * c).sum().backward()
    for a, b in zip(layer.parameters(), naive.parameters()):
        assert_rel(b.grad, a.grad, where="naive-tp yardstick")


def test_run_regime_times_a_checkpointed_runs_weights(tmp_path):
    from targetprop.training import checkpoint, rundir

    layer = TPRNN(3, 7)
    checkpoint.save_in(rundir.checkpoint_dir(tmp_path), 5,
                       {"model": {"rnn." + k: v for k, v in layer.state_dict().items()} | {"head.bias": torch.zeros(2)}})
    regime = "run:" + str(tmp_path)
    assert bench.check_regime(regime) == regime and bench.run_shape(regime) == (7, 3, "rnn")
    loaded = bench.set_regime_(TPRNN(3, 7), regime, torch.Generator())
    assert torch.equal(loaded.weight_hh_l0, layer.weight_hh_l0)
    rows = bench.measure((5, 2, 99, 99), ["native-bptt", "tp-linearized", "gru-tp-linearized"], 1, repeats=1,
                         warmup=0, regime=regime)
    assert [(r.method, r.p, r.d, r.regime) for r in rows] == [
        ("native-bptt", 7, 3, regime), ("tp-linearized", 7, 3, regime)]  # an Elman run: no GRU method


def test_stacked_shapes_are_timed_against_the_same_torch_nn_stack(tmp_path):
    out = tmp_path / "table.md"
    assert bench.main(["--grid", "tiny-stacked", "--repeats", "1", "--warmup", "0", "--threads", "1", "--regime",
                       "contractive", "--methods", "native-bptt", "naive-tp", "tp-linearized", "gru-native-bptt",
                       "gru-tp-linearized", "--output", str(out)]) == 0
    rows = {r[8].strip(): r for r in (line.split("|") for line in out.read_text().splitlines()) if r[1:2] == [" 12 "]}
    assert list(rows) == ["native-bptt", "tp-linearized", "gru-native-bptt", "gru-tp-linearized"]  # no naive stack
    assert {r[5].strip() for r in rows.values()} == {"2 bi"}
    assert rows["native-bptt"][12].strip() == "1.00" and rows["gru-native-bptt"][12].strip() == "1.00"
    assert float(rows["tp-linearized"][12]) > 0 and float(rows["gru-tp-linearized"][12]) > 0


def test_a_stack_gets_every_layers_weights_set_and_a_head_on_both_directions():
    gen = torch.Generator().manual_seed(0)
    layer = bench.set_regime_(TPRNN(2, 6, 2, bidirectional=True), "contractive", gen)
    for name in ("weight_hh_l0", "weight_hh_l1_reverse"):
        w = getattr(layer, name)
        assert_rel(w.T @ w, 0.25 * torch.eye(6), tol=1e-6, where=name)
    run = bench.cases.iteration("tp-linearized", bench.Shape(5, 2, 6, 2, 2, True), "cpu")
    forward, backward, total = run()
    assert 0 < forward < total and 0 < backward < total


def test_triton_loops_are_timed_beside_the_others(tmp_path, monkeypatch):
    """``--loops triton`` times backend="triton" (here in Triton's CPU interpreter; on CUDA with
    ``--device cuda``, as scripts/gpu-check.sh does)."""
    require("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "table.md"
    assert bench.main(["--grid", "tiny", "--repeats", "1", "--warmup", "0", "--threads", "1", "--regime", "default",
                       "--methods", "native-bptt", "tp-through-time", "gru-tp-linearized", "--loops", "torch", "triton",
                       "--output", str(out)]) == 0
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| 12 |")]
    assert [r[8].strip() for r in rows] == ["native-bptt", "tp-through-time [torch]", "tp-through-time [triton]",
                                            "gru-tp-linearized [torch]", "gru-tp-linearized [triton]"]
    assert all(float(r[9]) > 0 for r in rows)
    assert bench.check_loops("triton") == "triton"
    assert [s[:3] for s in bench.GRIDS["gpu"]] == [(784, 16, 100), (784, 512, 100), (60, 20, 100), (784, 16, 100)]
