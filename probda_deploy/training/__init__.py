"""Losses, the shared training loop, source training and adaptation strategies."""
