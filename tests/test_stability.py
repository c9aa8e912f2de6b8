"""The bound on eq. 2's step back in time (targetprop.stability), checked on the Elman rule's own
recursion in float64: attained exactly where it should be, never exceeded elsewhere."""
import math

import pytest
import torch

from targetprop import TPRNN, engine
from targetprop.stability import contractive_reg, step_gain_bound

D64 = torch.float64


def test_the_bound_and_the_contractive_reg_by_formula():
    assert step_gain_bound(1.0, 1e-3) == pytest.approx(1 / (2 * (1 - 0.999 ** 2)))  # 250.1
    assert step_gain_bound(10.0, 0.1) == pytest.approx(1 / (2 * math.sqrt(10) * 0.19))  # 0.83
    assert step_gain_bound(4.0, 0.2, "sigmoid") == pytest.approx(1 / (4 * 0.16))
    assert step_gain_bound(4.0, 0.2, "identity") == pytest.approx(0.25)
    assert step_gain_bound(0.0, 0.1) == math.inf
    for tol in (1e-3, 0.1, 0.3):
        assert step_gain_bound(contractive_reg(tol), tol) == pytest.approx(1.0)


def _one_step_back(layer, x):
    """‖λ_{T−1}‖ / ‖λ_T‖ per sequence for a loss on h_T (eq. 3, no through-time pass)."""
    out, _ = layer(x)
    with engine.recording() as records:
        (out[-1] * torch.linspace(-1, 1, out.shape[-1], dtype=D64)).sum().backward()
    lam = records[0][2]
    return lam[-2].norm(dim=-1) / lam[-1].norm(dim=-1)


@pytest.mark.parametrize("reg, tol", [(1.0, 1e-3), (10.0, 0.1), (0.25, 0.3)])
def test_the_bound_is_attained_with_saturated_units_and_singular_values_sqrt_r(reg, tol):
    """W_hh = √r·Q (Q orthogonal) gives ‖M‖ = 1/(2√r) in every direction; h_T beyond the shrunk
    range puts every unit's inverse derivative at the floor: the step multiplies by exactly G."""
    torch.manual_seed(0)
    p = 6
    layer = TPRNN(1, p, rule="linearized", through_time=False, reg=reg, tol=tol, target_step=1e-2, dtype=D64)
    q, _ = torch.linalg.qr(torch.randn(p, p, dtype=D64))
    with torch.no_grad():
        layer.weight_hh_l0.copy_(math.sqrt(reg) * q)
        layer.weight_ih_l0.fill_(50.0)  # h_T = tanh(50 + …) = 1 to double precision: saturated
        layer.bias_ih_l0.zero_()
        layer.bias_hh_l0.zero_()
    x = torch.zeros(2, 3, 1, dtype=D64)
    x[-1] = 1.0
    ratio = _one_step_back(layer, x)
    assert ratio.tolist() == pytest.approx([step_gain_bound(reg, tol)] * 3, rel=1e-10)


def test_no_step_exceeds_the_bound_on_random_weights_and_inputs():
    torch.manual_seed(1)
    for trial in range(20):
        reg, tol = 10 ** torch.empty(1).uniform_(-1, 1.5).item(), 10 ** torch.empty(1).uniform_(-3, -0.5).item()
        layer = TPRNN(3, 8, rule="linearized", through_time=False, reg=reg, tol=tol, dtype=D64)
        with torch.no_grad():
            for w in layer.parameters():
                w.mul_(torch.empty(1).uniform_(0.5, 4).item())
        x = 3 * torch.randn(2, 5, 3, dtype=D64)
        ratio = _one_step_back(layer, x)
        assert bool((ratio <= step_gain_bound(reg, tol) * (1 + 1e-12)).all()), (trial, reg, tol)


def test_the_error_for_overflowing_targets_gives_the_bound_and_the_contractive_reg():
    from targetprop import NonFiniteDirectionError

    layer = TPRNN(1, 4, rule="linearized", through_time=False, reg=1.0, tol=1e-3, dtype=D64)
    out, _ = layer(torch.ones(3, 2, 1, dtype=D64))
    with pytest.raises(NonFiniteDirectionError, match=r"up to 250 .*reg ≥ 6.26e\+04 makes every step a contraction"):
        (out[-1].sum() * math.inf).backward()


def test_the_error_suggests_only_what_the_settings_do_not_already_do():
    from targetprop import NonFiniteDirectionError

    for kwargs, wanted, unwanted in [
            (dict(reg=1.0, tol=1e-3, through_time=False), "try reg=10, tol=0.1, a smaller learning rate or target_step, "
                                                          "or through_time=True", None),
            (dict(reg=10.0, tol=0.1, through_time=True), "try a larger reg (e.g. 100), or a smaller learning rate "
                                                         "or target_step", "tol=0.1")]:
        layer = TPRNN(1, 4, rule="linearized", dtype=D64, **kwargs)
        out, _ = layer(torch.ones(3, 2, 1, dtype=D64))
        with pytest.raises(NonFiniteDirectionError) as info:
            (out[-1].sum() * math.inf).backward()
        tried = str(info.value).split("; try ")[1]
        assert tried.startswith(wanted.removeprefix("try "))
        assert unwanted is None or unwanted not in tried


def test_the_elman_rules_with_a_floored_step_give_the_bound_and_the_others_none():
    from types import SimpleNamespace

    from targetprop import get_activation, rules

    settings = SimpleNamespace(reg=4.0, tol=0.2, activation=get_activation("tanh"))
    gains = {key: rule.step_gain_bound(settings) for key, rule in rules.TABLE.items()}
    assert gains[("rnn", "linearized")] == gains[("rnn", "difference")] == pytest.approx(step_gain_bound(4.0, 0.2))
    assert {key for key, g in gains.items() if g is not None} == {("rnn", "linearized"), ("rnn", "difference")}
