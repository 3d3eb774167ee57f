"""Aggregation: pure rules over model updates (`rules`) and the strategies that use them."""
