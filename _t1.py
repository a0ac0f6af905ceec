import numpy as np, tapernn as tn
from tapernn import nn
tn.manual_seed(0)
cell = nn.LSTM(3, 4)
seq = nn.Sequencer(cell)
ref = nn.Sequencer(nn.LSTM(3, 4), unroll=True)
ref.module.load_state_dict(cell.state_dict())
x = np.random.default_rng(0).standard_normal((6, 2, 3))
g = np.random.default_rng(1).standard_normal((6, 2, 4))
y = seq.forward(x); gi = seq.backward(x, g)
y2 = ref.forward(x); gi2 = ref.backward(x, g)
print(abs(y-y2).max(), abs(gi-gi2).max())
for (n, p), (n2, p2) in zip(seq.named_parameters().items(), ref.named_parameters().items()):
    assert abs(p.grad - p2.grad).max() < 1e-12, n
print(len(cell.outputs), abs(np.stack(cell.outputs) - np.stack(ref.module.outputs)).max())
print(abs(np.stack(cell.states["c"]) - np.stack(ref.module.states["c"])).max())
print(seq.compile_report().notes, ref.compile_report().notes)
print(seq.trace_count)
x2 = np.random.default_rng(0).standard_normal((9, 2, 3))
seq.forward(x2); print(seq.trace_count)
