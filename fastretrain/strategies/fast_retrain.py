"""Fast retraining (Zhang, Yang et al., "Deep Networks with Fast Retraining", arXiv 2008.07387; "Fast
Transfer Learning Method Using Random Layer Freezing and Feature Refinement Strategy", IEEE
T-Cybernetics 2024; METHODS.md §1c): every epoch a randomly-frozen SGD epoch (`random-freeze`), then an
MP/ridge refinement of the FC head (`mp-refine`), then evaluation.

Defaults follow the authors' demo (ImageNet ResNet-50 fine-tuning): SGD momentum 0.9, weight decay 1e-4,
batch 32, 8 epochs, LR 1e-3 for 3 epochs, 1e-4 for 3, 1e-5 for 2. The comparison variants are the parts
on their own: `sgdm` (SGD only), `random-freeze` (SGD + freezing), `mp-refine` (SGD + refinement).
"""
from ..methods import register_method

AUTHORS_DEFAULTS = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 32, "epochs": 8,
                    "lr": 1e-3, "schedule": "piecewise:1x3,0.1x3,0.01x2"}  # fmt: skip

register_method("fast-retrain", parts=("random-freeze", "mp-refine"), defaults=AUTHORS_DEFAULTS,
                help="random layer freezing + MP/ridge refinement of the FC head after every epoch "
                     "(authors' defaults: SGDM .9, wd 1e-4, batch 32, 8 epochs, LR 1e-3 x3, 1e-4 x3, 1e-5 x2)")  # fmt: skip
