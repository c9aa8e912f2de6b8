"""The benchmark command on a tiny grid (seconds), and its naive yardstick computes the same TP."""
import torch

from helpers import assert_rel
from targetprop import TPRNN, bench


def test_bench_tiny_grid_writes_a_table_and_plot(tmp_path):
    out, png = tmp_path / "table.md", tmp_path / "cost.png"
    assert bench.main(["--grid", "tiny", "--repeats", "2", "--warmup", "1", "--threads", "1",
                       "--methods", "native-bptt", "naive-tp", "tp-linearized", "engine-bp",
                       "--output", str(out), "--plot", str(png)]) == 0
    text = out.read_text()
    assert "Command: `targetprop bench --grid tiny" in text and "Machine:" in text
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| 12 |")]
    assert [r[6].strip() for r in rows] == ["native-bptt", "naive-tp", "tp-linearized", "engine-bp"]
    assert rows[0][10].strip() == "1.00" and all(float(r[7]) > 0 for r in rows)
    assert png.stat().st_size > 1000


def test_gru_methods_are_compared_with_the_native_gru(tmp_path):
    out = tmp_path / "table.md"
    assert bench.main(["--grid", "tiny", "--repeats", "2", "--warmup", "1", "--threads", "1", "--methods",
                       "gru-native-bptt", "gru-tp-linearized", "gru-engine-bp", "native-bptt", "--output", str(out)]) == 0
    rows = {r[6].strip(): r for r in (line.split("|") for line in out.read_text().splitlines()) if r[1:2] == [" 12 "]}
    assert rows["gru-native-bptt"][10].strip() == "1.00" and rows["gru-engine-bp"][11].strip() == "1.00"
    assert rows["native-bptt"][10].strip() == "1.00" and rows["native-bptt"][11].strip() == "–"
    assert "gru-tp-linearized" not in bench.DEFAULT_METHODS


def test_naive_yardstick_equals_the_library_rule():
    torch.manual_seed(0)
    layer = TPRNN(2, 5, reg=1.0, target_step=1e-2, dtype=torch.float64)
    naive = bench._NaiveModule(2, 5, batch_first=True, dtype=torch.float64)
    naive.load_state_dict(layer.state_dict())
    x = torch.randn(3, 7, 2, dtype=torch.float64) * 0.5
    c = torch.randn(3, 5, dtype=torch.float64)
    for m in (layer, naive):
        (m(x)[1][0] * c).sum().backward()
    for a, b in zip(layer.parameters(), naive.parameters()):
        assert_rel(b.grad, a.grad, where="naive-tp yardstick")
