"""The CNN quickstart (Flower, NVIDIA FLARE) on fedchain."""
