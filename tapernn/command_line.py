"""Argument parsing shared by the `tapernn` commands (the CLI and its subcommand modules)."""
from __future__ import annotations

import argparse


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; errors here are one line, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
