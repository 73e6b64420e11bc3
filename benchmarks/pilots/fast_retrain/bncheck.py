import sys, torch, copy
sys.path.insert(0, "/work/main/benchmarks")
from suites import LITE0, V2_FASHION, V2_FLOWERS
import fastretrain as fr
from fastretrain import bench
from fastretrain.models import pooled_features
from fastretrain.strategies.mp_refine import MPRefine
torch.set_num_threads(1)
name = sys.argv[1]
base = {**LITE0, **(V2_FASHION if name == "fashion" else V2_FLOWERS)}
cfg = fr.make_config(**{**bench.cell_config(base, "sgdm"), "seed": 0}); cfg.out = None
e = fr.build_engine(cfg)
m = e.model
print("ridge head on ImageNet BN stats:", MPRefine(batch_size=64).fit_head(e), "test", e.evaluate(e.test_data)[1])
# re-estimate BN statistics on the training images (train mode, no grad, cumulative average), weights unchanged
for mod in m.modules():
    if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
        mod.reset_running_stats(); mod.momentum = None
m.train()
with torch.no_grad():
    for x, y in e.batches(train=True):
        m(x)
print("same head after BN re-estimation: test", e.evaluate(e.test_data)[1])
print("ridge head on re-estimated BN:", MPRefine(batch_size=64).fit_head(e), "test", e.evaluate(e.test_data)[1])
