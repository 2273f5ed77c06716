"""Tools to measure a defence: baseline defences, the defences compared, and victim training."""
