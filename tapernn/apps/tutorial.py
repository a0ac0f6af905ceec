"""The Element-RNN tutorial (Torch7 `rnn`), cell by cell, in tapernn: what `tapernn demo` runs.

Lua is 1-based, Python 0-based: `lstm.outputs[1]` there is `lstm.outputs[0]` here, `SplitTable(1)`
is `SplitTable(0)`, `SelectTable(-1)` is unchanged; Lua tables are Python lists.
"""

from __future__ import annotations

import textwrap

import numpy as np

import tapernn as tn
from tapernn import nn

NOTES = {
    "Stepping an LSTM": "A recurrent module keeps its state between forward calls: call forward "
    "once per element of the sequence and it tracks h_t and c_t for you.",
    "lstm.outputs and lstm.cells (h_t and c_t, 0-based)": "The states of every step are kept: "
    "`outputs` are the h_t, `cells` the c_t.",
    "Step-wise BPTT": "backward runs once per step in reverse order; the gradient w.r.t. the state "
    "is carried to the earlier step for you.",
    "Sequencer over a Linear": "A Sequencer applies a module to every element of a list (a Torch "
    "table) and returns the list of outputs.",
    "Sequencer over an LSTM": "Over a recurrent module it carries the state from step to step: "
    "the step is traced and compiled once and run as a loop (`tapernn graph` draws it unrolled, "
    "one cluster per timestep).",
    "Acceptor backward: gradient only at the last step (MSE)": "An acceptor predicts from the last "
    "state only: every other step's gradient is zero.",
    "SplitTable in front of a Sequencer": "SplitTable turns an array into a list of steps.",
    "SelectTable(-1): an acceptor returns the last state": "SelectTable(-1) keeps the last step; "
    "backward passes zeros to the others implicitly.",
    "JoinTable: a transducer's outputs back into one array": "JoinTable concatenates a list back "
    "into one array.",
    "Song-lyrics acceptor (LookupTable -> LSTM -> Linear -> Sigmoid)": "Is a song-lyric 5-gram "
    "from a timeless masterpiece? Word ids go through a LookupTable (0-based ids).",
    "Batching: each step is a (batch, features) matrix": "Batching puts the batch on the first "
    "dimension of every step.",
    "Batched song acceptor (time-major ids: (5, 3))": "Time-major ids (T, B) -> LookupTable -> "
    "(T, B, E) -> SplitTable(0, 3) -> T steps of (B, E).",
    "FastLSTM: no peepholes, fused gates": "FastLSTM drops the peepholes and fuses the four gate "
    "projections into one matrix [i, g, f, o].",
    "Transducer: a prediction at every step, SequencerCriterion(ClassNLL)": "A transducer predicts "
    "at every step; SequencerCriterion sums the per-step losses.",
    "Stacked LSTMs": "Stacking: layer l at step t reads layer l-1 at step t.",
    "Stacked LSTMs with Dropout between layers": "Dropout between layers draws a new mask per step.",
    "remember('both'): the next forward starts from the last state": "With remember, the next "
    "forward starts from the last state (truncated BPTT for long sequences).",
    "forget()": "forget() drops the remembered state.",
    "remember('neither'): forget before every forward": "The default: forget before every forward.",
}


def section(title: str) -> None:
    print(f"\n=== {title} ===")
    note = NOTES.get(title)
    if note:
        print(textwrap.fill(note, 96))


def main() -> nn.Module:
    np.set_printoptions(precision=4, suppress=True)
    tn.manual_seed(0)
    rng = np.random.default_rng(0)

    # --- Element RNN basics: an LSTM keeps its state between forward calls ---------------------
    section("Stepping an LSTM")
    n, d_in, d_hid = 3, 5, 5  # sequence length, input size, hidden size
    lstm = nn.LSTM(d_in, d_hid)  # expects inputs in R^d_in, outputs in R^d_hid
    data = rng.standard_normal((n, d_in))  # a sequence x_0, x_1, x_2
    outputs = np.zeros((n, d_hid))
    for i in range(n):
        outputs[i] = lstm.forward(data[i])  # no need to track the states s_i ourselves
    print(outputs)

    section("lstm.outputs and lstm.cells (h_t and c_t, 0-based)")
    print([o.shape for o in lstm.outputs], [c.shape for c in lstm.cells])
    for t in range(n):
        print(f"outputs[{t}] =", lstm.outputs[t])
    assert np.allclose(np.stack(lstm.outputs), outputs)

    # --- BPTT by hand: backward once per step, in reverse order ------------------------------
    section("Step-wise BPTT")
    for i in reversed(range(n)):  # gradients w.r.t. h_t flow back through the state
        lstm.backward(data[i], np.ones(d_hid) if i == n - 1 else np.zeros(d_hid))
    print("grad of w_xi after BPTT, norm:", np.linalg.norm(lstm.w_xi.grad))

    # --- Sequencers ----------------------------------------------------------------------------
    section("Sequencer over a Linear")
    seq_lin = nn.Sequencer(nn.Linear(d_in, d_hid))
    t_i = np.split(data, n)  # a list of three (1, d_in) arrays (torch.split)
    t_o = seq_lin.forward(t_i)
    print([o.shape for o in t_o])

    section("Sequencer over an LSTM")
    seq_lstm = nn.Sequencer(nn.LSTM(d_in, d_hid))
    t_o = seq_lstm.forward(t_i)
    print([o.shape for o in t_o])

    section("Acceptor backward: gradient only at the last step (MSE)")
    grad_output = [np.zeros((1, d_hid)) for _ in range(n)]
    mse = nn.MSECriterion()
    rand_target = rng.standard_normal(t_o[-1].shape)
    print("loss:", mse.forward(t_o[-1], rand_target))
    grad_output[-1] = mse.backward(t_o[-1], rand_target)
    grad_input = seq_lstm.backward(t_i, grad_output)  # BPTT with a single call
    print("grad_input shapes:", [g.shape for g in grad_input])

    # --- Avoiding tables -------------------------------------------------------------------------
    section("SplitTable in front of a Sequencer")
    seq_lstm2 = nn.Sequential().add(nn.SplitTable(0)).add(nn.Sequencer(nn.LSTM(d_in, d_hid)))
    print([o.shape for o in seq_lstm2.forward(data)])

    section("SelectTable(-1): an acceptor returns the last state")
    seq_lstm3 = nn.Sequential().add(nn.SplitTable(0)).add(nn.Sequencer(nn.LSTM(d_in, d_hid)))
    seq_lstm3.add(nn.SelectTable(-1))
    print(seq_lstm3.forward(data))
    seq_lstm3.backward(data, grad_output[-1][0])  # a plain array: the selected step's gradient

    section("JoinTable: a transducer's outputs back into one array")
    joined = nn.Sequential().add(nn.SplitTable(0)).add(nn.Sequencer(nn.LSTM(d_in, d_hid)))
    joined.add(nn.JoinTable(0))
    print(joined.forward(data).shape)

    # --- A more realistic example: song lyrics 5-grams ------------------------------------------
    section("Song-lyrics acceptor (LookupTable -> LSTM -> Linear -> Sigmoid)")
    # the tutorial's vocabulary, its ids minus one (0-based); its table lists "just" twice
    # (ids 9 and 12) and the later entry wins, as in Lua: id 8 is unused, vocab_size is 16
    V = {"I": 0, "you": 1, "the": 2, "this": 3, "to": 4, "fire": 5, "Hey": 6, "is": 7}
    V |= {"just": 11, "zee": 9, "And": 10, "rain": 12, "cray": 13, "met": 14, "Set": 15}
    song_data = np.array(
        [
            [V["Hey"], V["I"], V["just"], V["met"], V["you"]],
            [V["And"], V["this"], V["is"], V["cray"], V["zee"]],
            [V["Set"], V["fire"], V["to"], V["the"], V["rain"]],
        ]
    )
    masterpiece_or_not = np.array([[1.0], [1.0], [0.0]])  # #carlyrae4ever
    print(song_data)
    vocab_size, embed_dim = 16, 6
    LT = nn.LookupTable(vocab_size, embed_dim)
    song_lstm = nn.Sequential()
    song_lstm.add(LT)  # one sequence: (5,) ids -> (5, 6)
    song_lstm.add(nn.SplitTable(0))  # -> list of five (6,) vectors
    song_lstm.add(nn.Sequencer(nn.LSTM(embed_dim, embed_dim)))
    song_lstm.add(nn.SelectTable(-1))  # the last state
    song_lstm.add(nn.Linear(embed_dim, 1))  # a score
    song_lstm.add(nn.Sigmoid())  # a probability
    first_song_pred = song_lstm.forward(song_data[0])
    print(first_song_pred)

    bce = nn.BCECriterion()
    loss = bce.forward(first_song_pred, masterpiece_or_not[0])
    dl_dpred = bce.backward(first_song_pred, masterpiece_or_not[0])
    song_lstm.backward(song_data[0], dl_dpred)
    print("BCE loss:", loss)

    # --- Batching --------------------------------------------------------------------------------
    section("Batching: each step is a (batch, features) matrix")
    batch_size = 2
    batch_seq_data = [rng.standard_normal((batch_size, d_in)) for _ in range(3)]
    print([x.shape for x in batch_seq_data])
    print([o.shape for o in nn.Sequencer(nn.LSTM(d_in, d_hid)).forward(batch_seq_data)])

    section("Batched song acceptor (time-major ids: (5, 3))")
    song_data_t = song_data.T
    batch_song_lstm = nn.Sequential()
    batch_song_lstm.add(LT)  # (5, 3) ids -> (5, 3, 6)
    batch_song_lstm.add(nn.SplitTable(0, 3))  # -> five (3, 6) steps
    print([o.shape for o in batch_song_lstm.forward(song_data_t)])
    batch_song_lstm.add(nn.Sequencer(nn.LSTM(embed_dim, embed_dim)))
    batch_song_lstm.add(nn.SelectTable(-1))
    batch_song_lstm.add(nn.Linear(embed_dim, 1))
    batch_song_lstm.add(nn.Sigmoid())
    song_preds = batch_song_lstm.forward(song_data_t)
    print(song_preds)
    loss = bce.forward(song_preds, masterpiece_or_not)
    dl_dpreds = bce.backward(song_preds, masterpiece_or_not)
    batch_song_lstm.backward(song_data_t, dl_dpreds)
    print("batched BCE loss:", loss)

    # --- FastLSTM --------------------------------------------------------------------------------
    section("FastLSTM: no peepholes, fused gates")
    print(
        [
            o.shape
            for o in nn.Sequencer(nn.FastLSTM(d_in, d_hid)).forward(
                [rng.standard_normal((batch_size, d_in)), rng.standard_normal((batch_size, d_in))]
            )
        ]
    )

    # --- Transducers -----------------------------------------------------------------------------
    section("Transducer: a prediction at every step, SequencerCriterion(ClassNLL)")
    n_class = 4
    transducer = nn.Sequential().add(LT).add(nn.SplitTable(0, 3))
    transducer.add(nn.Sequencer(nn.LSTM(embed_dim, embed_dim)))
    transducer.add(nn.Sequencer(nn.Linear(embed_dim, n_class)))
    transducer.add(nn.Sequencer(nn.LogSoftMax()))
    crit = nn.SequencerCriterion(nn.ClassNLLCriterion())
    targets = [rng.integers(0, n_class, size=3) for _ in range(5)]  # 0-based classes
    preds = transducer.forward(song_data_t)
    print("loss summed over steps:", crit.forward(preds, targets))
    transducer.backward(song_data_t, crit.backward(preds, targets))  # non-zero at every step

    # --- Stacking --------------------------------------------------------------------------------
    section("Stacked LSTMs")
    stacked = nn.Sequential().add(LT).add(nn.SplitTable(0, 3))
    stacked.add(nn.Sequencer(nn.LSTM(embed_dim, embed_dim)))  # first layer
    stacked.add(nn.Sequencer(nn.LSTM(embed_dim, embed_dim)))  # second layer
    print([o.shape for o in stacked.forward(song_data_t)])
    embedded = LT.forward(song_data_t)
    print("embeddings sent into the LSTM:\n", embedded)
    first_layer = stacked.get(2).get(0)  # Torch: stackedSongLSTM:get(3):get(1)
    print("first layer input at step 2:\n", first_layer.inputs[2])
    assert np.allclose(first_layer.inputs[2], embedded[2])
    print("first layer output at step 2:\n", first_layer.outputs[2])
    second_layer = stacked.get(3).get(0)
    print("second layer input at step 2 (= first layer output):\n", second_layer.inputs[2])
    assert np.allclose(second_layer.inputs[2], first_layer.outputs[2])

    section("Stacked LSTMs with Dropout between layers")
    stacked_do = nn.Sequential().add(LT).add(nn.SplitTable(0, 3))
    stacked_do.add(nn.Sequencer(nn.LSTM(embed_dim, embed_dim)))
    stacked_do.add(nn.Sequencer(nn.Dropout(0.5)))
    stacked_do.add(nn.Sequencer(nn.LSTM(embed_dim, embed_dim)))
    print([o.shape for o in stacked_do.forward(song_data_t)])

    # --- Remembering and forgetting -------------------------------------------------------------
    section("remember('both'): the next forward starts from the last state")
    remember_lstm = nn.Sequential().add(LT).add(nn.SplitTable(0, 3))
    seq = nn.Sequencer(nn.LSTM(embed_dim, embed_dim))
    seq.remember("both")
    remember_lstm.add(seq)
    first = remember_lstm.forward(song_data_t)[4]
    print(first)
    second = remember_lstm.forward(song_data_t)[4]
    print(second, "(differs: it started from the previous final state)")
    assert not np.allclose(first, second)

    section("forget()")
    seq.forget()
    again = remember_lstm.forward(song_data_t)[4]
    print(again)
    assert np.allclose(again, first)

    section("remember('neither'): forget before every forward")
    seq.remember("neither")
    a = remember_lstm.forward(song_data_t)[4]
    b = remember_lstm.forward(song_data_t)[4]
    print(a)
    print(b)
    assert np.allclose(a, b) and np.allclose(a, first)
    print("\nThe tutorial ran end to end.")
    return song_lstm


if __name__ == "__main__":
    main()
