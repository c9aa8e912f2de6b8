"""A float64 straight-loop reference for stacked and bidirectional target propagation
(docs/maths.md, "Stacks"), written from the equations, independent of the library and of the
other test modules: explicit cell formulas, explicit inverses by solve, one step at a time, and
autograd only for the local Jacobian-vector products of eq. 3.

Weights: ``params[(layer, direction)] = (W_ih, W_hh, b_ih, b_hh)`` (biases may be None);
``h0`` (L·D, B, p); time-major input (T, B, d); dropout masks ``masks[layer]`` (T, B, D·p) or None.
"""
import torch

TAU_FLOOR = lambda tol: tol * (1 - tol)  # noqa: E731  (gate derivatives floored at τ(1−τ))


def act_fns(name):
    """(a, a⁻¹, range projection π with tolerance τ) for the Elman activations used here."""
    if name == "tanh":
        return torch.tanh, torch.atanh, lambda v, tol: v.clamp(-1 + tol, 1 - tol)
    if name == "sigmoid":
        return torch.sigmoid, torch.logit, lambda v, tol: v.clamp(tol, 1 - tol)
    raise ValueError(name)


def step(cell, act, x, h, w):
    """One cell step (row vectors)."""
    w_ih, w_hh, b_ih, b_hh = w
    gi = x @ w_ih.T + (b_ih if b_ih is not None else 0)
    gh = h @ w_hh.T + (b_hh if b_hh is not None else 0)
    if cell == "rnn":
        return act_fns(act)[0](gi + gh)
    p = h.shape[-1]
    r = torch.sigmoid(gi[:, :p] + gh[:, :p])
    z = torch.sigmoid(gi[:, p:2 * p] + gh[:, p:2 * p])
    n = torch.tanh(gi[:, 2 * p:] + r * gh[:, 2 * p:])
    return (1 - z) * n + z * h


def gru_parts(x, h, w):
    w_ih, w_hh, b_ih, b_hh = w
    p = h.shape[-1]
    gi = x @ w_ih.T + (b_ih if b_ih is not None else 0)
    gh = h @ w_hh.T + (b_hh if b_hh is not None else 0)
    r = torch.sigmoid(gi[:, :p] + gh[:, :p])
    z = torch.sigmoid(gi[:, p:2 * p] + gh[:, p:2 * p])
    q = gh[:, 2 * p:]
    n = torch.tanh(gi[:, 2 * p:] + r * q)
    return r, z, q, n


def ridge(w, reg):
    """``(WᵀW + rI)⁻¹Wᵀ`` by a plain solve."""
    k = w.shape[1]
    return torch.linalg.solve(w.T @ w + reg * torch.eye(k, dtype=w.dtype), w.T)


def run(cell, act, x, h0, w):
    hs = [h0]
    for t in range(x.shape[0]):
        hs.append(step(cell, act, x[t], hs[-1], w))
    return hs


def temporal_step(cell, act, rule, x_t, h_prev, h_t, lam, w, reg, tol):
    """``R(λ_t, t)``: what λ_t adds to λ_{t-1}."""
    w_ih, w_hh, b_ih, b_hh = w
    if cell == "rnn":
        a, a_inv, proj = act_fns(act)
        m = ridge(w_hh, reg)
        if rule == "linearized":
            hp = proj(h_t, tol)
            deriv = 1 - hp ** 2 if act == "tanh" else hp * (1 - hp)
            return (lam / deriv) @ m.T
        if rule == "difference":
            return (a_inv(proj(h_t + lam, tol)) - a_inv(proj(h_t, tol))) @ m.T
        if rule == "direct":
            bias = (b_ih + b_hh) if b_ih is not None else 0
            return (a_inv(proj(h_t + lam, tol)) - x_t @ w_ih.T - bias) @ m.T - h_prev
        raise ValueError(rule)
    p = h_t.shape[-1]
    r, z, q, n = gru_parts(x_t, h_prev, w)
    rc, zc = r.clamp(tol, 1 - tol), z.clamp(tol, 1 - tol)
    dn = (1 - n ** 2) * (1 - z)
    scales = [q * dn / (rc * (1 - rc)), (h_prev - n) / (zc * (1 - zc)), r * dn]
    out = z * lam
    for g in range(3):
        out = out + (scales[g] * lam) @ ridge(w_hh[g * p:(g + 1) * p], reg).T
    return out


def input_target(cell, act, rule, x_t, h_prev, h_t, lam, w, tol):
    """The input side's pre-activation displacement y_t (for ``direct``: the target of x_t W_ihᵀ)."""
    w_ih, w_hh, b_ih, b_hh = w
    if cell == "rnn":
        a, a_inv, proj = act_fns(act)
        if rule == "linearized":
            hp = proj(h_t, tol)
            return lam / (1 - hp ** 2 if act == "tanh" else hp * (1 - hp))
        if rule == "difference":
            return a_inv(proj(h_t + lam, tol)) - a_inv(proj(h_t, tol))
        bias = (b_ih + b_hh) if b_ih is not None else 0
        return a_inv(proj(h_t + lam, tol)) - h_prev @ w_hh.T - bias
    r, z, q, n = gru_parts(x_t, h_prev, w)
    rc, zc = r.clamp(tol, 1 - tol), z.clamp(tol, 1 - tol)
    dn = (1 - n ** 2) * (1 - z)
    return torch.cat([q * dn / (rc * (1 - rc)) * lam, (h_prev - n) / (zc * (1 - zc)) * lam, dn * lam], -1)


def local_grads(cell, act, x, hs, w, lams, through_time):
    """Eq. 3 for one layer and direction: grads of (x, h0, W_ih, W_hh, b_ih, b_hh) of
    Σ_t ½‖h_t − (h_t + λ_t)‖², with (x_t, h_{t-1}) held fixed, or, ``through_time``, through the recurrence."""
    leaves = [x.clone().requires_grad_(True), hs[0].clone().requires_grad_(True)]
    leaves += [t.clone().requires_grad_(True) if t is not None else None for t in w]
    used = [t for t in leaves if t is not None]
    loss = 0
    h = leaves[1]
    for t in range(x.shape[0]):
        prev = h if through_time else (leaves[1] if t == 0 else hs[t])
        h = step(cell, act, leaves[0][t], prev, leaves[2:])
        loss = loss + 0.5 * ((h - (hs[t + 1] + lams[t + 1]).detach()) ** 2).sum()
    grads = torch.autograd.grad(loss, used, allow_unused=True)
    grads = iter(grads)
    out = [next(grads) if t is not None else None for t in leaves]
    if not through_time:
        out[1] = -lams[0]
    return out


def stack_tp(cell, act, rule, x, h0, params, L, D, grad_out, grad_hn, reg, gamma, tol,
             through_time=False, masks=None, q=0.0, signal_below="gradient"):
    """The stack's TP directions: {"x": …, "h0": (L·D, B, p), (layer, d): [W_ih, W_hh, b_ih, b_hh]};
    ``signal_below="gradient"``: the x and h0 gradients of a TP rule divided by ``gamma`` (BP's scale)."""
    p = h0.shape[-1]
    masks = masks or [None] * L
    flip = lambda v: v.flip(0)  # noqa: E731
    # forward, keeping each layer's (direction-time) inputs and states
    inputs, states, layer_in = {}, {}, x
    for l in range(L):
        outs = []
        for d in range(D):
            xin = flip(layer_in) if d else layer_in
            hs = run(cell, act, xin, h0[l * D + d], params[(l, d)])
            inputs[(l, d)], states[(l, d)] = xin, hs
            o = torch.stack(hs[1:])
            outs.append(flip(o) if d else o)
        layer_out = torch.cat(outs, -1)
        layer_in = layer_out * masks[l] / (1 - q) if masks[l] is not None else layer_out
    T = x.shape[0]
    result = {"h0": torch.zeros_like(h0)}
    gx = 0
    z = None
    for l in reversed(range(L)):
        lams = {}
        for d in range(D):
            k = l * D + d
            hs, xin, w = states[(l, d)], inputs[(l, d)], params[(l, d)]
            lam = [torch.zeros_like(h0[0]) for _ in range(T + 1)]
            if l == L - 1:
                g = grad_out[..., d * p:(d + 1) * p]
                g = flip(g) if d else g
                for t in range(T):
                    lam[t + 1] = lam[t + 1] - gamma * g[t]
            lam[T] = lam[T] - gamma * grad_hn[k]
            if z is not None:
                zd = z[..., d * p:(d + 1) * p]
                zd = flip(zd) if d else zd
                for t in range(T):
                    lam[t + 1] = lam[t + 1] + zd[t]
            for t in range(T, 0, -1):
                lam[t - 1] = lam[t - 1] + temporal_step(cell, act, rule, xin[t - 1], hs[t - 1], hs[t], lam[t], w,
                                                        reg, tol)
            lams[d] = lam
        if l > 0:
            w_all = torch.cat([params[(l, d)][0] for d in range(D)])  # (D·G·p, d_in)
            ys = []
            for d in range(D):
                hs, xin, w = states[(l, d)], inputs[(l, d)], params[(l, d)]
                y = torch.stack([input_target(cell, act, rule, xin[t], hs[t], hs[t + 1], lams[d][t + 1], w, tol)
                                 for t in range(T)])
                ys.append(flip(y) if d else y)
            y = torch.cat(ys, -1)
            k_in = w_all.shape[1]
            gram = w_all.T @ w_all + reg * torch.eye(k_in, dtype=x.dtype)
            z = torch.linalg.solve(gram, (y @ w_all).reshape(-1, k_in).T).T.reshape(T, -1, k_in)
            if rule == "direct":
                z = z - inputs[(l, 0)]
            if masks[l - 1] is not None:
                z = z * masks[l - 1] * (1 - q)
        for d in range(D):
            k = l * D + d
            g = local_grads(cell, act, inputs[(l, d)], states[(l, d)], params[(l, d)], lams[d], through_time)
            result[(l, d)] = g[2:]
            result["h0"][k] = g[1]
            if l == 0:
                gx = gx + (flip(g[0]) if d else g[0])
    result["x"] = gx
    if rule != "bp" and signal_below == "gradient":
        result["x"], result["h0"] = result["x"] / gamma, result["h0"] / gamma
    return result
