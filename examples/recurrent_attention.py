"""The recurrent attention model (RAM, Mnih et al. 2014) on a cluttered glimpse task, as Torch7
rnn's examples/recurrent-visual-attention.lua: nn.RecurrentAttention + ReinforceNormal locator
trained by REINFORCE (VRClassReward with a learned baseline) and the classifier by NLL.

The task is generated here: a 24x24 canvas holds one 7x7 glyph (4 classes: box, plus, cross,
tee) at a random place among clutter (three 3x3 fragments of random glyphs). The model sees the
canvas only through glimpses -- 12x12 patches at 2 scales (12 and 24 pixels wide, the larger
averaged down), 5 per image -- around locations it picks from its previous hidden state.

Measured (defaults: 6000 training and 1000 test images, hidden 96, 20 epochs of batch 50, Adam
3e-3 decaying 0.9 per epoch, seed 1; 40 s -- 18 s of CPU -- on 2 cores at load 8-16, 2026-12-07): test accuracy 0.82
after 20 epochs (0.28 after the first; chance 0.25). `--tiny` (1500 images, 8x8 patches at 3
scales, 4 glimpses, 8 epochs) runs in a few seconds for CI and reaches about 0.5.

Run: python examples/recurrent_attention.py [--tiny] [--epochs N] [--seed S]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tapernn as tn
from tapernn import functional as F
from tapernn import nn
from tapernn.blas import blas_threads

GLYPHS = {  # 7x7, '#' = ink
    "box": ["#######", "#.....#", "#.....#", "#.....#", "#.....#", "#.....#", "#######"],
    "plus": ["...#...", "...#...", "...#...", "#######", "...#...", "...#...", "...#..."],
    "cross": ["#.....#", ".#...#.", "..#.#..", "...#...", "..#.#..", ".#...#.", "#.....#"],
    "tee": ["#######", "...#...", "...#...", "...#...", "...#...", "...#...", "...#..."],
}
SHAPES = np.array(
    [[[c == "#" for c in row] for row in rows] for rows in GLYPHS.values()], dtype=np.float64
)


def make_images(n: int, size: int, clutter: int, rng: np.random.Generator):
    """n canvases (size x size) with one glyph each among `clutter` 3x3 glyph fragments."""
    images = np.zeros((n, size, size))
    labels = rng.integers(0, len(SHAPES), n)
    g = SHAPES.shape[1]
    for img, label in zip(images, labels):
        for _ in range(clutter):
            r, c = rng.integers(0, g - 2, 2)
            frag = SHAPES[rng.integers(len(SHAPES))][r : r + 3, c : c + 3]
            r, c = rng.integers(0, size - 3, 2)
            img[r : r + 3, c : c + 3] = np.maximum(img[r : r + 3, c : c + 3], frag)
        r, c = rng.integers(0, size - g + 1, 2)
        img[r : r + g, c : c + g] = np.maximum(img[r : r + g, c : c + g], SHAPES[label])
    return images, labels


class Glimpse(nn.Module):
    """[images (B, S, S), locations (B, 2) in [-1, 1]] -> (B, depth * size^2): `depth` square
    patches centred on the location, patch k `size * scale^k` wide averaged down to size x size,
    zero outside the image.  Torch7: dpnn's nn.SpatialGlimpse (not differentiable w.r.t. the
    location). Each patch is R @ image @ Cᵀ with 0/(1/s) row and column selection matrices, so
    the whole glimpse is ordinary graph ops."""

    def __init__(self, size: int, depth: int, scale: int):
        super().__init__()
        self.size, self.depth, self.scale = size, depth, scale

    def build(self, xs):
        images, loc = xs
        S = images.shape[-1]
        centre = (F.stop_gradient(loc) + 1.0) * (S / 2.0)  # (B, 2) pixels
        pixel = np.arange(S, dtype=np.float64)[None, None, :]
        patches = []
        for k in range(self.depth):
            s = self.scale**k
            cell = (np.arange(self.size, dtype=np.float64) * s)[None, :, None]
            select = []
            for axis in (0, 1):
                top = F.reshape(centre[:, axis] - self.size * s / 2.0, (-1, 1, 1))
                u = pixel - top - cell  # position of each pixel inside output cell i
                inside = F.greater(u + 0.5, 0.0) * F.greater(s - 0.5 - u, 0.0)
                select.append(F.cast(inside, images.dtype) * (1.0 / s))
            patch = F.matmul(F.matmul(select[0], images), F.swap_last(select[1]))
            patches.append(F.reshape(patch, (-1, self.size * self.size)))
        return F.concat(patches, axis=-1)


class HardTanh(nn.Module):
    """Clamp to [-1, 1].  Torch7: nn.HardTanh."""

    def build(self, x):
        return F.minimum(F.maximum(x, -1.0), 1.0)


class Baseline(nn.Module):
    """The REINFORCE baseline: a Linear on the (gradient-stopped) hidden state, (B, H) -> (B, 1),
    trained by VRClassReward's MSE towards the reward."""

    def __init__(self, hidden: int):
        super().__init__()
        self.add_child("linear", nn.Linear(hidden, 1))

    def build(self, h):
        return self._children["linear"](F.stop_gradient(h))


def build_agent(n_classes: int, hidden: int, glimpse: int, depth: int, n_step: int, stdev: float):
    """RecurrentAttention(rnn, locator) -> last hidden state -> [log-probabilities, baseline]."""
    where = nn.Sequential(nn.SelectTable(1), nn.Linear(2, hidden // 4), nn.ReLU())
    what = nn.Sequential(
        Glimpse(glimpse, depth, 2), nn.Linear(depth * glimpse**2, hidden), nn.ReLU()
    )
    sensor = nn.Sequential(
        nn.ConcatTable(where, what),
        nn.JoinTable(-1),
        nn.Linear(hidden + hidden // 4, hidden),
        nn.ReLU(),
    )
    rnn = nn.Recurrent(hidden, sensor, nn.Linear(hidden, hidden), nn.ReLU())
    locator = nn.Sequential(nn.Linear(hidden, 2), HardTanh(), nn.ReinforceNormal(stdev), HardTanh())
    attention = nn.RecurrentAttention(rnn, locator, n_step, hidden)
    heads = nn.ConcatTable(
        nn.Sequential(nn.Linear(hidden, n_classes), nn.LogSoftMax()), Baseline(hidden)
    )
    return nn.Sequential(attention, nn.SelectTable(-1), heads)


def accuracy(agent: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int) -> float:
    agent.evaluate()
    hits = sum(
        int((agent.forward(images[k : k + batch])[0].argmax(1) == labels[k : k + batch]).sum())
        for k in range(0, len(images), batch)
    )
    agent.training()
    return hits / len(images)


def train(args) -> dict:
    tn.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_x, train_y = make_images(args.n_train, args.size, args.clutter, rng)
    test_x, test_y = make_images(args.n_test, args.size, args.clutter, rng)
    agent = build_agent(len(SHAPES), args.hidden, args.patch, args.depth, args.glimpses, args.stdev)
    nll, reward = nn.ClassNLLCriterion(), nn.VRClassReward(agent, scale=1.0)
    optimizer = tn.optim.Adam(agent.parameters(), lr=args.lr)
    history = {"loss": [], "reward": [], "test": []}
    for epoch in range(1, args.epochs + 1):
        started, order = time.perf_counter(), rng.permutation(args.n_train)
        losses, rewards = [], []
        for k in range(0, args.n_train - args.batch + 1, args.batch):
            x, y = train_x[order[k : k + args.batch]], train_y[order[k : k + args.batch]]
            agent.zero_grad_parameters()
            out = agent.forward(x)  # [log-probabilities (B, C), baseline (B, 1)]
            losses.append(nll.forward(out[0], y))
            rewards.append(-reward.forward(out, y))  # mean reward = training accuracy
            grad_reward = reward.backward(out, y)  # gives agent.reinforce(reward - baseline)
            agent.backward(x, [nll.backward(out[0], y) + grad_reward[0], grad_reward[1]])
            optimizer.step()
        optimizer.lr *= args.decay  # a decaying rate keeps the late epochs from wandering off
        history["loss"].append(float(np.mean(losses)))
        history["reward"].append(float(np.mean(rewards)))
        history["test"].append(accuracy(agent, test_x, test_y, 250))
        print(
            f"epoch {epoch:2d}  nll {history['loss'][-1]:.3f}  train reward "
            f"{history['reward'][-1]:.3f}  test accuracy {history['test'][-1]:.3f}  "
            f"({time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    return history


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a few seconds' run (CI)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    sizes = (
        {
            "n_train": 1500,
            "n_test": 300,
            "hidden": 48,
            "glimpses": 4,
            "epochs": 8,
            "lr": 5e-3,
            "patch": 8,
            "depth": 3,
            "decay": 1.0,
        }
        if args.tiny
        else {
            "n_train": 6000,
            "n_test": 1000,
            "hidden": 96,
            "glimpses": 5,
            "epochs": 20,
            "lr": 3e-3,
        }
    )
    if args.epochs is not None:
        sizes["epochs"] = args.epochs
    for key, value in {
        "size": 24,
        "clutter": 3,
        "batch": 50,
        "stdev": 0.22,
        "patch": 12,
        "depth": 2,
        "decay": 0.9,
        **sizes,
    }.items():
        setattr(args, key, value)
    return args


if __name__ == "__main__":
    with blas_threads(1):  # small matrices: one BLAS thread is several times faster
        history = train(parse())
    print(f"final test accuracy {history['test'][-1]:.3f} (chance {1 / len(SHAPES):.2f})")
