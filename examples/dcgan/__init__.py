"""MetisFL's DCGAN tutorial on fedchain."""
