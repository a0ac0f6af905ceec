"""The tutorial's song-lyrics acceptor, trained until it classifies all three 5-grams correctly.

LookupTable -> SplitTable -> Sequencer(LSTM) -> SelectTable(-1) -> Linear -> Sigmoid, BCE loss.
Run: python examples/song_acceptor.py
"""

import numpy as np

import tapernn as tn
from tapernn import nn

tn.manual_seed(0)
# the tutorial's vocabulary, its ids minus one (0-based); its table lists "just" twice (ids 9
# and 12) and the later entry wins, as in Lua: id 8 is unused and vocab_size is 16
V = {"I": 0, "you": 1, "the": 2, "this": 3, "to": 4, "fire": 5, "Hey": 6, "is": 7}
V |= {"just": 11, "zee": 9, "And": 10, "rain": 12, "cray": 13, "met": 14, "Set": 15}
vocab_size = 16
songs = np.array(
    [
        [V[w] for w in ["Hey", "I", "just", "met", "you"]],
        [V[w] for w in ["And", "this", "is", "cray", "zee"]],
        [V[w] for w in ["Set", "fire", "to", "the", "rain"]],
    ]
).T  # time-major (5, 3)
labels = np.array([[1.0], [1.0], [0.0]])

embed = 6
model = nn.Sequential(
    nn.LookupTable(vocab_size, embed),
    nn.SplitTable(0),
    nn.Sequencer(nn.LSTM(embed, embed)),
    nn.SelectTable(-1),
    nn.Linear(embed, 1),
    nn.Sigmoid(),
)
criterion = nn.BCECriterion()
for epoch in range(1, 501):
    preds = model.forward(songs)
    loss = criterion.forward(preds, labels)
    model.zero_grad_parameters()
    model.backward(songs, criterion.backward(preds, labels))
    model.update_parameters(0.5)
    errors = int(np.sum((preds > 0.5) != (labels > 0.5)))
    if epoch % 10 == 0:
        print(f"epoch {epoch:3d}  loss {loss:.4f}  errors {errors}")
    if errors == 0 and loss < 0.05:
        print(f"epoch {epoch:3d}  loss {loss:.4f}  errors {errors}  (done)")
        break
print("predictions:", model.forward(songs).ravel().round(3), "labels:", labels.ravel())
assert errors == 0, "the acceptor did not reach zero error"
