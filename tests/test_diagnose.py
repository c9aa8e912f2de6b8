"""`targetprop diagnose`: cosines, norm ratios, displacement norms, horizons and shares, against
exact identities and an independent autograd computation (float64)."""
import json
import math

import pytest
import torch

from helpers import assert_rel, cli_fails
from targetprop import diagnose
from targetprop.cli import main
from targetprop.training.models import SequenceModel
from targetprop.training.rundir import read_metrics

D64 = torch.float64


def _model(nonlinearity="tanh", reg=1.0, p=6, d=3, cell="rnn", seed=0, **options):
    torch.manual_seed(seed)
    options = dict(rule="linearized", reg=reg, target_step=1e-2, dtype=D64, **options)
    if cell == "rnn":
        options["nonlinearity"] = nonlinearity
    return SequenceModel(cell, d, p, 4, init="orthogonal", generator=torch.Generator().manual_seed(seed), **options)


def _batch(T=12, B=5, d=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, d, generator=g, dtype=D64), torch.randint(0, 4, (B,), generator=g)


LOSS = torch.nn.functional.cross_entropy


def test_identity_activation_r0_orthogonal_makes_tp_gamma_times_bp():
    model = _model("identity", reg=0.0)
    x, y = _batch()
    result = diagnose.diagnose(model, x, y, LOSS, ["linearized"])
    for param in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0"):
        assert abs(result["cosine_with_bp"]["linearized"][param] - 1) < 1e-12
        assert abs(result["norm_ratio"]["linearized"][param] - 1) < 1e-10
    assert_rel(torch.tensor(result["displacement_norm"]["linearized"]), torch.tensor(result["bp_adjoint_norm"]) * 1e-2)


@pytest.mark.parametrize("reg", [1.0, 10.0])
def test_displacements_shrink_by_1_over_1_plus_r_with_identity_and_orthogonal_w(reg):
    """M = W_hhᵀ/(1+r) for orthogonal W_hh, so with the loss on h_T only ‖λ_{T−k}‖ = ‖λ_T‖/(1+r)^k;
    the horizon is the first k with (1+r)^−k < 1e-6."""
    model = _model("identity", reg=reg)
    x, y = _batch(T=30)
    result = diagnose.diagnose(model, x, y, LOSS, ["linearized"])
    norms = torch.tensor(result["displacement_norm"]["linearized"], dtype=D64)
    expected = norms[0] * (1 + reg) ** -torch.arange(30, dtype=D64)
    assert_rel(norms[:12], expected[:12], where=f"displacement decay r={reg}")
    assert result["horizon"]["linearized"]["1e-6"] == math.floor(6 / math.log10(1 + reg)) + 1
    bp = torch.tensor(result["bp_adjoint_norm"], dtype=D64)  # W_hh orthogonal: BP's adjoint keeps its norm
    assert_rel(bp, torch.full_like(bp, bp[0].item()), where="bp adjoint norm, orthogonal")


def _bp_whh_part(model, x, y, last: int):
    """BP's W_hh gradient from the last ``last`` steps' uses of W_hh (W_hh detached elsewhere):
    a straightforward loop with autograd, independent of the library's backward."""
    rnn = model.rnn
    w_ih, w_hh, b = rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach().clone().requires_grad_(True), \
        (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach()
    T = x.shape[1]
    h = x.new_zeros(x.shape[0], rnn.hidden_size)
    for t in range(T):
        w = w_hh if t >= T - last else w_hh.detach()
        h = torch.tanh(x[:, t] @ w_ih.T + b + h @ w.T)
    LOSS(model.head(h), y).backward()
    return w_hh.grad


def test_shares_of_the_whh_direction_equal_an_autograd_split_for_bp():
    model = _model()
    x, y = _batch(T=15)
    result = diagnose.diagnose(model, x, y, LOSS, ["bp"])
    full = _bp_whh_part(model, x, y, 15)
    for steps, key in ((1, "last_step_share"), (10, "last10_share")):
        part = _bp_whh_part(model, x, y, steps)
        expected = (part * full).sum().item() / (full * full).sum().item()
        assert abs(result[key]["bp"] - expected) < 1e-10, key


@pytest.mark.parametrize("rule", ["linearized", "difference", "direct", "learned", "linearized-through-time"])
def test_every_elman_rule_is_diagnosed(rule):
    model = _model(reg=3.0)
    x, y = _batch(T=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = diagnose.diagnose(model, x, y, LOSS, [rule])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not changed
    assert -1 <= result["cosine_with_bp"][rule]["weight_hh_l0"] <= 1
    assert len(result["displacement_norm"][rule]) == 10 and result["displacement_norm"][rule][0] > 0
    assert result["last10_share"][rule] == pytest.approx(1.0, abs=1e-12)  # T = 10: every step


def test_gru_bp_and_tp_are_diagnosed():
    model = _model(cell="gru", reg=3.0)
    x, y = _batch(T=10)
    result = diagnose.diagnose(model, x, y, LOSS, diagnose.default_rules("linearized"))
    assert set(result["cosine_with_bp"]) == {"linearized", "linearized-through-time", "bp"}
    assert all(abs(c - 1) < 1e-12 for c in result["cosine_with_bp"]["bp"].values())
    for rule in result["cosine_with_bp"]:
        assert -1 <= result["cosine_with_bp"][rule]["weight_hh_l0"] <= 1
        assert result["last10_share"][rule] == pytest.approx(1.0, abs=1e-12)  # T = 10: every step


def _lstm_state_adjoint_norms(model, x, y):
    """d_k = batch mean of ‖∂L/∂s_{T−k}‖ for the LSTM's state s_t = [h_t, c_t], each step's state
    one node that the next step and the head read (an autograd loop, independent of the library)."""
    rnn, p = model.rnn, model.rnn.hidden_size
    w_ih, w_hh, b = rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach(), (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach()
    s = x.new_zeros(x.shape[0], 2 * p).requires_grad_(True)
    states = []
    for t in range(x.shape[1]):
        i, f, g, o = (x[:, t] @ w_ih.T + s[:, :p] @ w_hh.T + b).split(p, -1)
        c = f.sigmoid() * s[:, p:] + i.sigmoid() * g.tanh()
        s = torch.cat([o.sigmoid() * c.tanh(), c], -1)
        s.retain_grad()
        states.append(s)
    LOSS(model.head(s[:, :p]), y).backward()
    return [st.grad.norm(dim=-1).mean().item() for st in reversed(states)]


def test_lstm_bp_and_tp_are_diagnosed_on_the_whole_state():
    """The LSTM's displacements are the whole state's [h, c]: BP's are the state adjoints of an
    autograd loop; every rule's cosines are finite, bp's are 1."""
    model = _model(cell="lstm", reg=3.0)
    x, y = _batch(T=10)
    result = diagnose.diagnose(model, x, y, LOSS, diagnose.default_rules("linearized"))
    assert_rel(torch.tensor(result["bp_adjoint_norm"], dtype=D64),
               torch.tensor(_lstm_state_adjoint_norms(model, x, y), dtype=D64), where="lstm bp adjoint norms")
    assert all(abs(c - 1) < 1e-12 for c in result["cosine_with_bp"]["bp"].values())
    for rule, cosines in result["cosine_with_bp"].items():
        assert len(cosines) == 4 and all(-1 <= c <= 1 for c in cosines.values()), rule
        assert result["last10_share"][rule] == pytest.approx(1.0, abs=1e-12)  # T = 10: every step
        assert result["displacement_norm"][rule][0] > 0


def test_command_line_writes_json_and_plot_and_reads_a_run(tmp_path, capsys):
    common = ["--task", "temporal-order", "--length", "12", "--hidden-size", "8", "--reg", "10"]
    out, png = tmp_path / "d.json", tmp_path / "d.png"
    assert main(["diagnose", *common, "--output", str(out), "--plot", str(png)]) == 0
    saved = json.loads(out.read_text())
    assert set(saved) == {"cosine_with_bp", "norm_ratio", "displacement_norm", "bp_adjoint_norm", "horizon",
                          "last_step_share", "last10_share"}
    assert saved["horizon"]["linearized"]["1e-6"] is not None and png.stat().st_size > 1000
    assert "linearized-through-time" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", *common, "--iterations", "5", "--eval-every", "5", "--quiet", "--out", str(run)]) == 0
    assert main(["diagnose", "--run", str(run), "--rules", "bp", "--output", str(out)]) == 0
    assert set(json.loads(out.read_text())["cosine_with_bp"]) == {"bp"}
    cli_fails(["diagnose", *common, "--rules", "sideways"], capsys, "sideways")
    cli_fails(["diagnose", "--run", str(tmp_path / "nothing")], capsys, "nothing")


def test_training_with_diagnostics_logs_them_and_changes_nothing_else(tmp_path):
    from targetprop.experiments.plotting import plot_runs
    from targetprop.training import diagnostics

    common = ["--task", "temporal-order", "--length", "10", "--hidden-size", "8", "--eval-every", "25",
              "--test-size", "50", "--quiet", "--rule", "learned", "--no-through-time"]  # the learned rule draws noise: RNG untouched?
    plain, logged = tmp_path / "plain", tmp_path / "logged"
    assert main(["train", *common, "--iterations", "100", "--out", str(plain)]) == 0
    assert main(["train", *common, "--iterations", "50", "--diagnose-every", "50", "--out", str(logged)]) == 0
    assert main(["train", "--resume", str(logged), "--iterations", "100"]) == 0  # the cadence comes back
    for column in ("iteration", "batch_loss", "train_loss", "test_accuracy"):
        assert read_metrics(plain)[column] == read_metrics(logged)[column], column
    rows = diagnostics.read(logged / "diagnostics.csv")
    assert [(int(r["iteration"]), r["rule"]) for r in rows] == [
        (i, rule) for i in (0, 50, 100) for rule in ("learned", "learned-through-time", "bp")]
    assert all(-1 <= float(r["cosine_whh"]) <= 1 for r in rows)
    assert json.loads((logged / "config.json").read_text())["run"]["diagnose_every"] == 50
    plot_runs([plain, logged], tmp_path / "c.png")
    assert (tmp_path / "c-diagnostics.png").stat().st_size > 1000


def test_diagnose_runs_in_the_settings_dtype_from_the_command_line_and_in_a_run(tmp_path, capsys):
    argv = ["--task", "temporal-order", "--length", "10", "--hidden-size", "8", "--test-size", "50", "--dtype",
            "float64"]
    assert main(["diagnose", *argv, "--rules", "linearized"]) == 0
    assert "linearized" in capsys.readouterr().out
    assert main(["train", *argv, "--iterations", "4", "--eval-every", "2", "--diagnose-every", "2", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert len((tmp_path / "run" / "diagnostics.csv").read_text().splitlines()) > 1
