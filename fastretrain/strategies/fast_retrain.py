"""Fast retraining (Zhang, Yang et al., "Deep Networks with Fast Retraining", arXiv 2008.07387; "Fast
Transfer Learning Method Using Random Layer Freezing and Feature Refinement Strategy", IEEE
T-Cybernetics 2024; METHODS.md §1c): every epoch a randomly-frozen SGD epoch (`random-freeze`), then an
MP/ridge refinement of the FC head (`mp-refine`), then evaluation.

The authors' demo settings (ImageNet ResNet-50 fine-tuning: SGD momentum 0.9, weight decay 1e-4, batch 32,
8 epochs, LR 1e-3 for 3 epochs, 1e-4 for 3, 1e-5 for 2) are the recipe `authors` (`--recipe authors`,
methods.RECIPES); the method itself changes no optimisation setting. The comparison variants are the parts
on their own: `sgdm` (SGD only), `random-freeze` (SGD + freezing), `mp-refine` (SGD + refinement).
"""
from ..methods import register_method

register_method("fast-retrain", parts=("random-freeze", "mp-refine"),
                help="random layer freezing + MP/ridge refinement of the FC head after every epoch "
                     "(the authors' settings: --recipe authors)")  # fmt: skip
