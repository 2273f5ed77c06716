"""Tools to measure a defence: model-free poisons and a small victim training loop."""
