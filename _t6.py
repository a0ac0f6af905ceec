import numpy as np, tapernn as tn
from tapernn import nn
rng = np.random.default_rng(0)
def make(unroll):
    tn.manual_seed(3)
    return nn.Sequencer(nn.Sequential(nn.Linear(3, 3), nn.LSTM(3, 4)), unroll=unroll)
a, b = make(False), make(True)
h0, c0 = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
x = rng.standard_normal((5, 2, 3)); g = rng.standard_normal((5, 2, 4)); gh = (rng.standard_normal((2, 4)), rng.standard_normal((2, 4)))
for m in (a, b):
    m.set_initial_state((h0, c0))
    m.forward(x); m.backward(x, g)
print([abs(u - v).max() for u, v in zip(a.get_grad_hidden_state(1), b.get_grad_hidden_state(1))])
for m in (a, b):
    m.set_grad_hidden_state(2, gh)
    m.zero_grad_parameters()
    m.forward(x); m.backward(x, g)
print(max(abs(p.grad - q.grad).max() for p, q in zip(a.parameters(), b.parameters())))
print([abs(u - v).max() for u, v in zip(a.get_grad_initial_state(), b.get_grad_initial_state())])
print([n.name for n in a._runtime.last.arg_nodes])
