"""Training/evaluation loaders: shared semantics (`config`), the torch fallback (`torch_loader`)."""
