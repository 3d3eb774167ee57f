"""MetisFL's quickstart (a dense network) on fedchain."""
