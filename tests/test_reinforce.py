"""REINFORCE and the recurrent attention model against hand-written NumPy equations:
ReinforceNormal, VRClassReward, Module.reinforce, RecurrentAttention."""

import numpy as np
import pytest

import tapernn as tn
from tapernn import nn
from tapernn.errors import ShapeError, StateError, TapernnError, ValueRangeError

R = np.random.default_rng(0)
TOL = {"rtol": 1e-10, "atol": 1e-12}


def test_reinforce_normal_samples_and_gradient_is_reinforce():
    lin = nn.Linear(3, 2)
    model = nn.Sequential(lin, nn.ReinforceNormal(0.3, rng=np.random.default_rng(7)))
    x = R.standard_normal((4, 3))
    y = model.forward(x)
    mu = x @ lin.weight.data.T + lin.bias.data
    eps = np.random.default_rng(7).standard_normal((4, 2))
    np.testing.assert_allclose(y, mu + 0.3 * eps, **TOL)
    reward = R.standard_normal(4)
    model.reinforce(reward)
    model.zero_grad_parameters()
    g = model.backward(x, R.standard_normal((4, 2)) * 1e3)  # the output's gradient is dropped
    dmu = -reward[:, None] * (y - mu) / 0.3**2
    np.testing.assert_allclose(g, dmu @ lin.weight.data, **TOL)
    np.testing.assert_allclose(lin.weight.grad, dmu.T @ x, **TOL)
    np.testing.assert_allclose(lin.bias.grad, dmu.sum(0), **TOL)
    y2 = model.forward(x)
    assert not np.allclose(y, y2)  # a fresh sample per forward


def test_reinforce_normal_evaluation_gives_the_mean_unless_stochastic():
    x = R.standard_normal((2, 3))
    assert nn.ReinforceNormal(0.5).evaluate().forward(x) is not None
    np.testing.assert_array_equal(nn.ReinforceNormal(0.5).evaluate().forward(x), x)
    rn = nn.ReinforceNormal(0.5, stochastic=True, rng=np.random.default_rng(1)).evaluate()
    np.testing.assert_allclose(
        rn.forward(x), x + 0.5 * np.random.default_rng(1).standard_normal((2, 3)), **TOL
    )


def test_reinforce_normal_float32_and_scalar_reward():
    rn = nn.ReinforceNormal(0.2, rng=np.random.default_rng(3)).float()
    x = R.standard_normal((5, 2)).astype(np.float32)
    y = rn.forward(x)
    assert y.dtype == np.float32
    rn.reinforce(2.0)  # one reward for the whole batch
    g = rn.backward(x, np.zeros_like(y))
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, -2.0 * (y - x) / 0.04, rtol=1e-5)


def test_reinforce_bad_inputs_raise_named_errors():
    with pytest.raises(tn.ArgumentError, match="stdev"):
        nn.ReinforceNormal(0)
    rn = nn.ReinforceNormal(0.1)
    x = R.standard_normal((3, 2))
    rn.forward(x)
    with pytest.raises(StateError, match="reinforce"):
        rn.backward(x, np.zeros((3, 2)))
    rn.reinforce(np.ones(4))
    with pytest.raises(ShapeError, match=r"reward has shape \(4,\)"):
        rn.backward(x, np.zeros((3, 2)))
    with pytest.raises(tn.ArgumentError, match="finite"):
        rn.reinforce(np.array([1.0, np.nan, 0.0]))
    with pytest.raises(ShapeError, match="ReinforceNormal"):
        rn.forward(np.zeros((2, 2, 2)))
    with pytest.raises(TapernnError):
        nn.ReinforceNormal(0.1).forward([x, x])


# ---- VRClassReward -------------------------------------------------------------------------------


def test_vr_class_reward_loss_reward_and_baseline_gradient():
    rn = nn.ReinforceNormal(0.1)
    crit = nn.VRClassReward(nn.Sequential(rn), scale=2.0)
    scores = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.3, 0.2, 0.1]])
    target = np.array([1, 1, 2, 0])
    baseline = np.array([[0.5], [1.0], [0.0], [2.0]])
    reward = 2.0 * np.array([1, 0, 1, 1.0])
    assert crit.forward([scores, baseline], target) == pytest.approx(-reward.sum() / 4, rel=1e-15)
    gs, gb = crit.backward([scores, baseline], target)
    np.testing.assert_array_equal(gs, np.zeros_like(scores))
    np.testing.assert_allclose(gb, 2 * (baseline - reward[:, None]) / 4, **TOL)  # MSE, averaged
    np.testing.assert_allclose(rn.reward, (reward - baseline[:, 0]) / 4, **TOL)
    raw = nn.VRClassReward(nn.Sequential(rn), size_average=False)
    assert raw.forward([scores, baseline[:, 0]], target) == -3.0
    raw.backward([scores, baseline[:, 0]], target)
    np.testing.assert_allclose(rn.reward, np.array([1, 0, 1, 1.0]) - baseline[:, 0], **TOL)


def test_vr_class_reward_bad_inputs():
    crit = nn.VRClassReward(nn.Linear(2, 2))
    s, b = np.zeros((2, 3)), np.zeros(2)
    with pytest.raises(ValueRangeError, match="0 <= target < 3"):
        crit.forward([s, b], np.array([0, 3]))
    with pytest.raises(ShapeError, match="baseline"):
        crit.forward([s, np.zeros(3)], np.array([0, 1]))
    with pytest.raises(tn.DTypeError, match=r"integer class ids \(0-based\), got float64"):
        crit.forward([s, b], np.array([0.0, 1.0]))  # (was ShapeError for a dtype problem)
    with pytest.raises(ShapeError, match="must be 2 class ids"):
        crit.forward([s, b], np.array([0, 1, 1]))
    with pytest.raises(ShapeError, match=r"\[scores, baseline\]"):
        crit.forward(s, np.array([0, 1]))
    with pytest.raises(tn.ArgumentTypeError, match="module"):
        nn.VRClassReward("model")


# ---- RecurrentAttention --------------------------------------------------------------------------

D, H, B, T, SIGMA = 3, 5, 4, 3, 0.3


def make_ram(seed=7, dtype=np.float64):
    tn.manual_seed(1)
    glimpse = nn.Sequential(nn.ParallelTable(nn.Linear(D, H), nn.Linear(2, H)), nn.CAddTable())
    rnn = nn.Recurrent(H, glimpse, nn.Linear(H, H), nn.Tanh())
    sampler = nn.ReinforceNormal(SIGMA, rng=np.random.default_rng(seed))
    action = nn.Sequential(nn.Linear(H, 2), sampler)
    return nn.RecurrentAttention(rnn, action, T, H).astype(dtype)


def ram_params(ram):
    par, fb = ram.rnn._children["input"][0], ram.rnn._children["feedback"]
    act = ram.action[0]
    return {
        "Wi": par[0].weight,
        "bi": par[0].bias,
        "Wl": par[1].weight,
        "bl": par[1].bias,
        "start": ram.rnn.start,
        "Wf": fb.weight,
        "bf": fb.bias,
        "Wa": act.weight,
        "ba": act.bias,
    }


def ram_weights(ram):
    return {k: p.data for k, p in ram_params(ram).items()}


def ram_reference(w, x, eps, G, rewards):
    """Forward h_t = tanh(Wi x + bi + Wl l_t + bl + (start | Wf h_{t-1} + bf)), l_t = Wa h_{t-1}
    + ba + sigma eps_t (h_{-1} = 0); backward: BPTT of sum_t <G_t, h_t> with l_t held fixed, plus
    REINFORCE -r_t (l_t - mu_t) / sigma^2 into mu_t (hence into Wa, ba and h_{t-1})."""
    hs, ls, mus, prev = [], [], [], np.zeros((x.shape[0], H))
    for t in range(T):
        mu = prev @ w["Wa"].T + w["ba"]
        lo = mu + SIGMA * eps[t]
        a = x @ w["Wi"].T + w["bi"] + lo @ w["Wl"].T + w["bl"]
        a = a + (w["start"] if t == 0 else prev @ w["Wf"].T + w["bf"])
        prev = np.tanh(a)
        hs.append(prev), ls.append(lo), mus.append(mu)
    g = {k: np.zeros_like(v) for k, v in w.items()}
    dx, carry = np.zeros_like(x), np.zeros((x.shape[0], H))
    for t in reversed(range(T)):
        da = (G[t] + carry) * (1 - hs[t] ** 2)
        h_prev = hs[t - 1] if t else np.zeros_like(hs[0])
        g["Wi"] += da.T @ x
        g["bi"] += da.sum(0)
        g["Wl"] += da.T @ ls[t]
        g["bl"] += da.sum(0)
        dx += da @ w["Wi"]
        dmu = -rewards[t][:, None] * (ls[t] - mus[t]) / SIGMA**2
        g["Wa"] += dmu.T @ h_prev
        g["ba"] += dmu.sum(0)
        carry = dmu @ w["Wa"]
        if t == 0:
            g["start"] += da.sum(0)
        else:
            g["Wf"] += da.T @ h_prev
            g["bf"] += da.sum(0)
            carry = carry + da @ w["Wf"]
    return hs, g, dx


def ram_grads(ram):
    return {k: p.grad for k, p in ram_params(ram).items()}


@pytest.mark.parametrize("per_step", [False, True])
def test_recurrent_attention_matches_numpy_equations(per_step):
    ram = make_ram()
    x = R.standard_normal((B, D))
    G = [R.standard_normal((B, H)) for _ in range(T)]
    rewards = [R.standard_normal(B) for _ in range(T)] if per_step else [R.standard_normal(B)] * T
    draw = np.random.default_rng(7)
    eps = [draw.standard_normal((B, 2)) for _ in range(T)]  # one draw per step, in step order
    hs, g_ref, dx_ref = ram_reference(ram_weights(ram), x, eps, G, rewards)
    out = ram.forward(x)
    assert len(out) == T
    for t in range(T):
        np.testing.assert_allclose(out[t], hs[t], **TOL)
    ram.zero_grad_parameters()
    ram.reinforce(rewards if per_step else rewards[0])
    dx = ram.backward(x, G)
    np.testing.assert_allclose(dx, dx_ref, **TOL)
    for name, gv in ram_grads(ram).items():
        np.testing.assert_allclose(gv, g_ref[name], **TOL, err_msg=name)
    # forget before every forward: a second call starts again from zeros (no retrace)
    out2 = ram.forward(x)
    eps2 = [draw.standard_normal((B, 2)) for _ in range(T)]
    hs2 = ram_reference(ram_weights(ram), x, eps2, G, rewards)[0]
    np.testing.assert_allclose(out2[-1], hs2[-1], **TOL)
    assert ram.trace_count == 1


def test_recurrent_attention_evaluation_gradcheck():
    """With the action's mean as location (evaluation), every path is differentiable: the
    module's gradients (through locations, actions, the hidden states) match central differences."""
    ram = make_ram()
    model = nn.Sequential(ram, nn.SelectTable(-1), nn.Linear(H, 3), nn.LogSoftMax()).evaluate()
    x = R.standard_normal((B, D))
    assert tn.testing.gradcheck_module(model, nn.ClassNLLCriterion(), x, np.array([0, 2, 1, 1]))


def test_recurrent_attention_float32():
    ram = make_ram(dtype=np.float32)
    x = R.standard_normal((B, D)).astype(np.float32)
    out = ram.forward(x)
    assert all(o.dtype == np.float32 for o in out)
    ram.reinforce(np.ones(B, np.float32))
    assert ram.backward(x, [np.ones((B, H), np.float32)] * T).dtype == np.float32


def test_recurrent_attention_bad_inputs():
    ram = make_ram()
    with pytest.raises(ShapeError, match="RecurrentAttention"):
        ram.forward([np.zeros((B, D))])
    bad = nn.RecurrentAttention(
        nn.Recurrent(
            H,
            nn.Sequential(nn.ParallelTable(nn.Linear(D, H), nn.Linear(2, H)), nn.CAddTable()),
            nn.Linear(H, H),
        ),
        nn.Linear(4, 2),
        T,
        4,
    )
    with pytest.raises(ShapeError, match=r"step 0.*\(4, 4\)"):
        bad.forward(np.zeros((B, D)))
    with pytest.raises(tn.ArgumentError, match="n_step"):
        nn.RecurrentAttention(nn.Identity(), nn.Identity(), 0, 3)
    with pytest.raises(tn.ArgumentTypeError, match="rnn"):
        nn.RecurrentAttention("rnn", nn.Identity(), 2, 3)


def test_recursor_of_reinforce_normal_receives_per_step_rewards_in_step_order():
    """Element-RNN's test `reinforce`: stepped by hand, step t's backward uses reward[t]."""
    rec = nn.Recursor(nn.ReinforceNormal(0.5, rng=np.random.default_rng(0)))
    x = R.standard_normal((2, 3))
    ys = [rec.forward(x) for _ in range(3)]
    rewards = [R.standard_normal(2) for _ in range(3)]
    rec.reinforce(rewards)
    for t in reversed(range(3)):
        g = rec.backward(x, np.zeros((2, 3)))
        np.testing.assert_allclose(g, -rewards[t][:, None] * (ys[t] - x) / 0.25, **TOL)
