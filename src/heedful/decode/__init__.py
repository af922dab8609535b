"""Search: turning a sequence model's next-token distributions into outputs."""

from heedful.decode.beam import Hypothesis, beam_search
from heedful.decode.greedy import greedy_decode

__all__ = ["Hypothesis", "beam_search", "greedy_decode"]
