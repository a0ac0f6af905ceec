import numpy as np, tapernn as tn
from tapernn import nn
rng = np.random.default_rng(0)
def pair(make, x, g, train=True, list_out=False):
    tn.manual_seed(1); a = make(); tn.manual_seed(1); b = make()
    b.load_state_dict(a.state_dict())
    for m in b.modules():
        if hasattr(m, "unroll"): m.unroll = True
    res = []
    for m in (a, b):
        if not train: m.evaluate()
        m.zero_grad_parameters()
        y = m.forward(x); gx = m.backward(x, g)
        res.append((y, gx, {k: p.grad.copy() for k, p in m.named_parameters().items()}))
    (ya, ga, pa), (yb, gb, pb) = res
    flat = lambda v: np.concatenate([np.ravel(u) for u in (v if isinstance(v, list) else [v])]) if not isinstance(v, list) or not isinstance(v[0], list) else np.concatenate([np.ravel(w) for u in v for w in u])
    d = max(abs(flat(ya) - flat(yb)).max(), abs(flat(ga) - flat(gb)).max(), max([abs(pa[k] - pb[k]).max() for k in pa] or [0]))
    print(make.__name__ if hasattr(make,'__name__') else make, d, [n for n in a.compile_report().notes])
x = rng.standard_normal((6, 2, 3)); g = rng.standard_normal((6, 2, 4))
def eval_lstm(): return nn.Sequencer(nn.LSTM(3, 4))
pair(eval_lstm, x, g, train=False)
def recurrent(): return nn.Sequencer(nn.Recurrent(4, nn.Linear(3, 4), nn.Linear(4, 4), nn.Tanh()))
pair(recurrent, x, g)
def normstab(): return nn.Sequencer(nn.Sequential(nn.LSTM(3, 4), nn.NormStabilizer(1.0)))
pair(normstab, x, g)
def recursor(): return nn.Sequencer(nn.Recursor(nn.Sequential(nn.LSTM(3, 4), nn.Tanh())))
pair(recursor, x, g)
def table_out(): return nn.Sequencer(nn.ConcatTable(nn.Linear(3, 4), nn.Tanh()))
pair(table_out, list(x), [[gg, np.ones((2,3))] for gg in g])
