"""Models: the frozen main model and the hypernetwork."""
