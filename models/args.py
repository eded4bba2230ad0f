"""Checked argument types of the training commands (argparse), pure Python."""

from __future__ import annotations

import argparse
import math

__all__ = ["number"]


def number(kind: type = float, at_least: float | None = None, above: float | None = None,
           below: float | None = None, at_most: float | None = None):
    """An argparse ``type``: a finite ``kind`` (int or float) within the bounds given, or a message
    saying which values the option takes."""
    bounds = [f"at least {at_least:g}" if at_least is not None else "", f"above {above:g}" if above is not None else "",
              f"below {below:g}" if below is not None else "", f"at most {at_most:g}" if at_most is not None else ""]
    wanted = ("a whole number" if kind is int else "a number") + "".join(f", {b}" for b in bounds if b)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if not (math.isfinite(value) and (at_least is None or value >= at_least) and (above is None or value > above)
                and (below is None or value < below) and (at_most is None or value <= at_most)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value

    parse.__name__ = "integer" if kind is int else "number"  # argparse names the type in its messages
    return parse
