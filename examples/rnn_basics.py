"""Every code cell of the Element-RNN tutorial (Torch7 `rnn`), in order, translated to tapernn.

The code lives in `tapernn/apps/tutorial.py` so that `tapernn demo` runs exactly the same walk-through;
read it there. Run: python examples/rnn_basics.py
"""

from tapernn.apps.tutorial import main

if __name__ == "__main__":
    main()
