"""fedchain's examples: ports of the MetisFL, Flower and NVIDIA FLARE tutorials."""
