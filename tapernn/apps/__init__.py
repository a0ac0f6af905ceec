"""The applications built on tapernn: the command line, training, checkpoints, the benchmark,
the tutorial and the corpus. Nothing in the library below imports them."""
