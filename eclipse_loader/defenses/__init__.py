"""Neighbouring data-poisoning defences, each as a data-loading piece (plain torch/numpy cores).

* `epic`: EPIC (ICML 2022) — drop examples isolated in gradient space during training
  (`EpicSelector` + `EpicSampler`; the Lightning glue is `epic_callback.EpicCallback`).
* `cgd`: CGD (ACM MM 2025) — score samples with a guide and suspicious models, then
  fine-tune the backdoored model with the guided loss (Lightning glue: `cgd_module`).
* `dataelixir`: DataElixir (AAAI 2024) — offline sanitisation by rounds of
  noise-and-denoise with our `Purifier`, target-label detection and relabelling; writes a beton.

Submodules are imported on demand, so ``import eclipse_loader.defenses`` pulls in neither
Lightning nor diffusers.
"""
