"""A libFuzzer run (atheris) of the bounded decoder, run by test_codec_atheris.py in a process of its
own (libFuzzer exits the process when done): any exception but UndecodableEvent is a crash."""

import sys

import atheris

with atheris.instrument_imports():
    from refbus.contracts import codec


def one_input(data: bytes) -> None:
    try:
        codec.decode(data)
    except codec.UndecodableEvent:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
