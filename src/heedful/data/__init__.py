"""Data sources, vocabularies and batching shared by the tasks."""
