"""``absdsl ir``: the IR of a traced model and, with ``--domain``, its generated program.

    absdsl ir --model pkg.mod:factory --input-shape 1,28,28 [--domain deeppoly]
"""

from __future__ import annotations

import argparse

import absdsl
from absdsl.commands.bounds import input_shape, load_model


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="module:factory, an absdsl training checkpoint (.pt) or an ONNX file")
    parser.add_argument("--weights", default=None, help="state_dict or checkpoint for the factory")
    parser.add_argument("--input-shape", default=None,
                        help="input shape without the batch axis, e.g. 1,28,28 (a checkpoint "
                             "knows its own)")
    parser.add_argument("--domain", default=None,
                        help="also print the program generated for this domain")


def run(args: argparse.Namespace) -> int:
    model, ck_shape = load_model(args.model, args.weights)
    shape = input_shape(args.input_shape, ck_shape)
    prog = absdsl.compile(model, args.domain or "box", input_shape=shape)
    print(f"# IR of {type(model).__name__} on input [batch, {', '.join(map(str, shape))}]")
    print(prog.ir)
    if args.domain is not None:
        print()
        print(f"# generated {prog.domain} program")
        print(prog.code)
    return 0
