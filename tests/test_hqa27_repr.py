"""QA round as a user (hqa27): `print(model)` is the Torch7-style tree (API.md, section 1). An
nn.Recurrent printed as the bare name "nn.Recurrent" (none of its start / input / feedback /
transfer / merge modules), and nn.Recursor printed the one-line name of its module ("nn.Recursor
@ nn.Sequential") where a Sequencer of the same module prints the module's tree."""

from tapernn import nn


def test_recurrent_prints_its_modules():
    rnn = nn.Recurrent(4, nn.Linear(3, 4), nn.Linear(4, 4), nn.Tanh())
    assert repr(rnn) == (
        "nn.Recurrent {\n"
        "  (start): bias (4,)\n"
        "  (input): nn.Linear(3 -> 4)\n"
        "  (feedback): nn.Linear(4 -> 4)\n"
        "  (transfer): nn.Tanh\n"
        "  (merge): nn.CAddTable\n"
        "}"
    )
    assert rnn.describe() == "nn.Recurrent"  # (error messages keep the one-line name)


def test_recurrent_with_a_start_module_inside_a_container():
    start = nn.Sequential().add(nn.Linear(4, 4)).add(nn.ReLU())
    model = nn.Sequencer(nn.Recurrent(start, nn.Linear(3, 4), nn.Linear(4, 4)))
    assert repr(model) == (
        "nn.Sequencer @ nn.Recurrent {\n"
        "  (start): nn.Sequential {\n"
        "    (0): nn.Linear(4 -> 4)\n"
        "    (1): nn.ReLU\n"
        "  }\n"
        "  (input): nn.Linear(3 -> 4)\n"
        "  (feedback): nn.Linear(4 -> 4)\n"
        "  (transfer): nn.Sigmoid\n"
        "  (merge): nn.CAddTable\n"
        "}"
    )


def test_recursor_prints_its_modules_tree_as_a_sequencer_does():
    stack = nn.Sequential().add(nn.Linear(3, 4)).add(nn.RNN(4, 4))
    tree = "nn.Sequential {\n  (0): nn.Linear(3 -> 4)\n  (1): nn.RNN(4 -> 4)\n}"
    assert repr(nn.Recursor(stack)) == "nn.Recursor @ " + tree
    assert repr(nn.Sequencer(stack)) == "nn.Sequencer @ " + tree
    assert nn.Recursor(stack).describe() == "nn.Recursor @ nn.Sequential"
