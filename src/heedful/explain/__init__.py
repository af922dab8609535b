"""Seeing what a model attends to."""

from heedful.explain.capture import Captured, attention_modules, capture

__all__ = ["Captured", "attention_modules", "capture"]
