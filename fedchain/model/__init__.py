"""Models as data: the weights codec, torch conversion, and the plan published at genesis."""
