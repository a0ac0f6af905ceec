import time, numpy as np
from tapernn import nn
H = 256
m = nn.Sequencer(nn.LSTM(H, H)).astype(np.float32)
x = np.random.default_rng(0).standard_normal((50, 32, H)).astype(np.float32)
y = m.forward(x)
fwd = m._runtime.last.training_pair.forward
for n in fwd.graph.nodes:
    if n.op == "scan":
        b = n.attrs["body"]
        print("scan", n.attrs["length"], len(b.nodes), b.op_counts())
        big = sorted(b.nodes, key=lambda k: -k.size)[:6]
        for k in big: print("  ", k.op, k.shape, k.dtype)
        print("inputs", [(i.name, i.shape) for i in b.inputs])
        print("outputs", [(o.op, o.shape) for o in b.outputs])
print(fwd.report.loops if hasattr(fwd.report, "loops") else None)
