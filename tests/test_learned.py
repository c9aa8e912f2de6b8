"""The learned-inverse rule (DTP baseline) beyond the problem table (tests/test_rules.py checks its
targets against tests/reference/elman.py): its reverse-layer update, its reconstruction error
falling, its state dict, and training."""
import pytest
import torch

from helpers import assert_rel, train_to_full_accuracy
from problems import make_problem, run_layer
from targetprop import TPRNN, orthogonal_init_


def test_reverse_layer_update_is_one_nesterov_step():
    """noise 0: after one backward, V = V₀ − lr·(1+μ)·∇L(V₀) (first Nesterov step from zero velocity)."""
    layer, x, h0, C, Cn = make_problem("tanh", T=5, seed=31)
    layer.rule, layer.inverse_noise, layer.inverse_lr, layer.inverse_momentum = "learned", 0.0, 0.3, 0.9
    V0, c0 = layer.inverse_weight_hh_l0.clone(), layer.inverse_bias_l0.clone()
    out = layer(x, h0)[0].detach()
    run_layer(layer, x, h0, C, Cn)
    P = {k: w.detach() for k, w in layer.named_parameters()}
    h_prev = torch.cat([h0[0][:, None], out[:, :-1]], 1)  # (B, T, p)
    fwd = torch.tanh(x @ P["weight_ih_l0"].T + P["bias_ih_l0"] + h_prev @ P["weight_hh_l0"].T + P["bias_hh_l0"])
    V, c = V0.clone().requires_grad_(True), c0.clone().requires_grad_(True)
    rec = torch.tanh(x @ P["weight_ih_l0"].T + fwd @ V.T + c)
    (0.5 * ((rec - h_prev) ** 2).sum(-1).mean()).backward()
    assert_rel(layer.inverse_weight_hh_l0, V0 - 0.3 * 1.9 * V.grad, where="reverse layer V step")
    assert_rel(layer.inverse_bias_l0, c0 - 0.3 * 1.9 * c.grad, where="reverse layer c step")
    assert_rel(layer.inverse_weight_hh_l0_momentum, V.grad, where="reverse layer momentum")


def test_reconstruction_error_falls_on_a_fixed_rnn():
    torch.manual_seed(0)
    layer = orthogonal_init_(TPRNN(3, 16, batch_first=True, rule="learned", inverse_lr=0.1, inverse_noise=0.1))
    x = torch.randn(20, 15, 3)
    before = layer.inverse_reconstruction_error(x)
    for _ in range(300):
        layer(x)[1].sum().backward()  # the forward parameters' .grad are never applied
    after = layer.inverse_reconstruction_error(x)
    assert after < 0.25 * before, (before, after)


def test_learned_state_dict_and_parameters():
    layer = TPRNN(2, 4, rule="learned")
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}  # V, c not in the optimizer
    sd = layer.state_dict()
    assert {"inverse_weight_hh_l0", "inverse_bias_l0"} <= set(sd)
    other = TPRNN(2, 4, rule="learned")
    other.load_state_dict(sd)
    assert torch.equal(other.inverse_weight_hh_l0, layer.inverse_weight_hh_l0)
    assert "inverse_lr=0.001" in repr(layer)
    with pytest.raises(ValueError, match="inverse_lr"):
        TPRNN(2, 4, rule="learned", inverse_lr=-1)
    with pytest.raises(ValueError, match="inverse_momentum"):
        TPRNN(2, 4, rule="learned", inverse_momentum=1.5)
    with pytest.raises(ValueError, match="needs rule='learned'"):
        TPRNN(2, 4).inverse_reconstruction_error(torch.randn(1, 3, 2))


def test_learned_rule_reaches_100_percent_on_temporal_order_10():
    """Measured: SGD lr 0.1, γ_h = 0.1, inverse lr 1e-2, σ = 0.1 reaches 100% at 450 iterations here."""
    from targetprop.tasks.synthetic import TemporalOrder

    torch.manual_seed(0)
    task = TemporalOrder(10, seed=0, batch_size=20, test_size=200)
    rnn = orthogonal_init_(TPRNN(task.input_size, 32, batch_first=True, rule="learned", target_step=0.1,
                                 inverse_lr=1e-2))
    head = torch.nn.Linear(32, task.output_size)
    opt = torch.optim.SGD([*rnn.parameters(), *head.parameters()], lr=0.1)
    it, acc = train_to_full_accuracy(rnn, head, opt, task, budget=2000)
    assert acc == 1.0, (it, acc)
