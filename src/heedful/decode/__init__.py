"""Search: turning a sequence model's next-token distributions into outputs."""

from heedful.decode.greedy import greedy_decode

__all__ = ["greedy_decode"]
