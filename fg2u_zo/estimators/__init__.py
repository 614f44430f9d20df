"""Meta-gradient estimators, one idea a module.

``base`` (the Estimator protocol and the projection combine), ``directions`` (the
direction families), ``reductions`` (what a finite-difference estimate keeps of each
perturbed solve: the projection, the value difference, or the outputs for the
sketch), ``zeroth_order`` (FG2U-ZO, black-box ES, coordinate differences),
``exact`` (FG2U and reverse-mode RGU on a torch inner solver), ``truncated`` (TRGU),
``implicit`` (Neumann). Nothing is imported here: ``fg2u_zo`` re-exports the public
names lazily, so a parallel worker never pays for torch.
"""
