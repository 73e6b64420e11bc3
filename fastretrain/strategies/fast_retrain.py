"""Fast retraining (Zhang, Yang et al., "Deep Networks with Fast Retraining", arXiv 2008.07387; "Fast
Transfer Learning Method Using Random Layer Freezing and Feature Refinement Strategy", IEEE
T-Cybernetics 2024; docs/fast_retrain.md): every epoch a frozen-in-part SGD epoch (`random-freeze`), then, when
due, an MP/ridge refinement of the FC head (`mp-refine`), then evaluation.

Default (issue 13: freezing that cuts the backward pass, a fitted head from the start, refinement only
while it pays): `random-freeze.policy=bottom` (a contiguous bottom block of drawn depth is frozen, with
everything below the lowest trainable conv, so autograd stops there), `mp-refine.init_head=True` (a
closed-form ridge linear probe written into the head before epoch 1) and `mp-refine.until=2` (refinements
after epochs 1 and 2 only). The authors' variant: `-o random-freeze.policy=uniform -o mp-refine.init_head=False
-o mp-refine.until=None -o mp-refine.C=4` with `--recipe authors` (their demo's optimisation settings: SGD
momentum 0.9, weight decay 1e-4, batch 32, 8 epochs, LR 1e-3 ×3, 1e-4 ×3, 1e-5 ×2; methods.RECIPES); the
method itself changes no optimisation setting. The comparison variants are the parts on their own: `sgdm`
(SGD only), `random-freeze` (SGD + freezing), `mp-refine` (SGD + refinement). docs/fast_retrain.md sets the
two side by side.
"""
from ..methods import register_method

HELP = ("bottom-block layer freezing + ridge head before epoch 1 + MP/ridge refinement of the FC head after epochs "
        "1-2 (the authors' variant: -o random-freeze.policy=uniform -o mp-refine.init_head=False "
        "-o mp-refine.until=None -o mp-refine.C=4 --recipe authors)")
register_method("fast-retrain", parts=("random-freeze", "mp-refine"), help=HELP)
