import numpy as np, tapernn as tn, time
from tapernn import nn
tn.manual_seed(0)
seq = nn.Sequencer(nn.LSTM(3, 4))
x = np.random.default_rng(0).standard_normal((6, 2, 3))
seq.forward(x); seq.backward(x, np.ones((6,2,4)))
exe = seq._runtime.last
print(exe.graph.op_counts().get("scan"), exe.training_pair.forward.graph.op_counts().get("scan"), exe.training_pair.backward.graph.op_counts().get("scan") if hasattr(exe.training_pair,'backward') else None)
print(seq.compile_report())
