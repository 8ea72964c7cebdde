"""Training: losses, optimizer, train state, train step, loop."""
