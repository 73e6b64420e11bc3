"""Models: registry, shipped pretrained weights (ImageNet sanity check), helpers."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastretrain import FastRetrainError, create_model
from fastretrain.models import classifier, conv_layers, final_linears, load_weights, pooled_features


def _imagenet_input(img, size=224):
    """RGB uint8 HWC -> the Lite preprocessing: bicubic short side to size/0.875, centre crop, (x-0.5)/0.5."""
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    k = size / 0.875 / min(h, w)
    x = F.interpolate(x, size=(round(h * k), round(w * k)), mode="bicubic", antialias=True, align_corners=False)
    t, l = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return (x[..., t : t + size, l : l + size] - 0.5) / 0.5


def test_shipped_lite0_weights_pass_the_cat_and_espresso_check():
    skimage_data = pytest.importorskip("skimage.data")
    model = create_model("tf_efficientnet_lite0", 1000, pretrained=True).eval()
    with torch.no_grad():
        cat = model(_imagenet_input(skimage_data.chelsea())).softmax(-1)[0]
        coffee = model(_imagenet_input(skimage_data.coffee())).softmax(-1)[0]
    assert set(cat.topk(5).indices.tolist()) >= {282, 285, 281}  # tiger cat, Egyptian cat, tabby
    assert coffee.argmax().item() == 967 and coffee[967] > 0.9  # espresso, p ≈ 0.95


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_other_shipped_weights_load_strictly(name):
    model = create_model(name, 7, pretrained=True)
    assert classifier(model).out_features == 7


def test_pretrained_head_is_replaced_and_seeded():
    torch.manual_seed(0)
    a = create_model("tf_efficientnet_lite0", 5, pretrained=True)
    torch.manual_seed(0)
    b = create_model("tf_efficientnet_lite0", 5, pretrained=True)
    assert classifier(a).weight.shape == (5, 1280)
    assert torch.equal(classifier(a).weight, classifier(b).weight)


def test_errors_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # empty caches: nothing found offline
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FastRetrainError, match="did you mean: resnet18"):
        create_model("resnet19", 3)
    with pytest.raises(FastRetrainError, match="no local pretrained weights for 'resnet18' .*timm/resnet18.a1_in1k"):
        create_model("resnet18", 3, pretrained=True)


@pytest.mark.parametrize("name", ["tiny-cnn", "tiny-resnet", "resnet10t", "tv:resnet18"])
def test_registry_helpers(name):
    model = create_model(name, 4).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 4)
    convs = conv_layers(model)
    assert convs and all(isinstance(m, nn.Conv2d) for _, m in convs)
    head = classifier(model)
    assert isinstance(head, nn.Linear) and head.out_features == 4
    assert final_linears(model)[-1][1] is head
    feats = pooled_features(model, x)
    assert feats.shape == (2, head.in_features)
    assert torch.allclose(head(feats), model(x), atol=1e-5)  # the tapped features are what the head sees


def test_final_linears_finds_a_multi_fc_head():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 8), nn.ReLU(),
                          nn.Linear(8, 2))
    assert [n for n, _ in final_linears(model)] == ["3", "5"]


def test_weight_file_roundtrip_skips_a_head_of_another_size(tmp_path):
    from fastretrain.checkpoint import save_weights

    src = create_model("tiny-cnn", 5)
    save_weights(src, tmp_path / "w.safetensors")
    dst = create_model("tiny-cnn", 3)
    load_weights(dst, tmp_path / "w.safetensors")
    assert torch.equal(dst.features[0][0].weight, src.features[0][0].weight)
    assert dst.fc.weight.shape == (3, 32)
    with pytest.raises(FastRetrainError, match="not found"):
        load_weights(dst, tmp_path / "missing.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FastRetrainError, match="cannot read weights file"):
        load_weights(dst, tmp_path / "junk.pt")


# ------------------------------------------------------------------------------------------------ local weights


def _hf_cache_file(cache, repo, filename, commit="0" * 40):
    """Where huggingface_hub keeps `filename` of model repo `repo` (its cache layout: refs/main -> a snapshot)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    """Empty Hugging Face and torch hub caches of this test's own (nothing on the machine is found)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and should anything try the network, it fails at once
    return tmp_path


def test_timm_weights_from_the_hugging_face_cache(offline_caches):
    import timm
    from safetensors.torch import save_file

    from fastretrain.models import find_pretrained, pretrained_available

    assert not pretrained_available("test_resnet")
    torch.manual_seed(1)
    src = timm.create_model("test_resnet", num_classes=1000)  # stands in for the published weights
    path = _hf_cache_file(offline_caches / "hf", "timm/test_resnet.r160_in1k", "model.safetensors")
    save_file(src.state_dict(), str(path))
    assert pretrained_available("test_resnet") and find_pretrained("test_resnet").path == path
    model = create_model("test_resnet", 4, pretrained=True)
    own, ref = model.state_dict(), src.state_dict()
    body = [k for k in ref if not k.startswith("fc.")]
    assert body and all(torch.equal(own[k], ref[k]) for k in body)
    assert classifier(model).out_features == 4  # a new head
    assert create_model("test_resnet", 1000, pretrained=True).state_dict()["fc.weight"].equal(ref["fc.weight"])


def test_timm_weights_from_the_torch_hub_cache_and_a_given_file(offline_caches):
    import timm

    from fastretrain.models import find_pretrained

    url = timm.models.get_pretrained_cfg("lcnet_050").url  # timm's older weights: a release URL, torch hub's cache
    torch.manual_seed(4)
    lc = timm.create_model("lcnet_050", num_classes=1000)
    hub = offline_caches / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    hub.parent.mkdir(parents=True)
    torch.save(lc.state_dict(), hub)
    assert find_pretrained("lcnet_050").kind == "torch-hub"
    assert torch.equal(create_model("lcnet_050", 2, pretrained=True).conv_stem.weight, lc.conv_stem.weight)
    torch.manual_seed(2)
    src = timm.create_model("test_efficientnet", num_classes=1000)
    f = offline_caches / "mine.pth"
    torch.save({"state_dict": src.state_dict()}, f)  # a wrapped checkpoint: timm's loader unwraps it
    model = create_model("test_efficientnet", 3, pretrained_file=f)
    assert torch.equal(model.conv_stem.weight, src.conv_stem.weight) and classifier(model).out_features == 3
    assert find_pretrained("test_efficientnet", f).kind == "file"
    with pytest.raises(FastRetrainError, match="pretrained weights file not found"):
        create_model("test_efficientnet", 3, pretrained_file=offline_caches / "nope.pth")


def test_torchvision_weights_from_a_local_file(offline_caches):
    import torchvision

    from fastretrain.models import pretrained_available, pretrained_missing

    name = "tv:shufflenet_v2_x0_5"
    assert not pretrained_available(name)
    url = torchvision.models.get_model_weights("shufflenet_v2_x0_5").DEFAULT.url
    assert f"{url.rsplit('/', 1)[1]} not found" in pretrained_missing(name)
    torch.manual_seed(3)
    src = torchvision.models.get_model("shufflenet_v2_x0_5", weights=None)
    hub = offline_caches / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    hub.parent.mkdir(parents=True)
    torch.save(src.state_dict(), hub)
    assert pretrained_available(name)
    model = create_model(name, 5, pretrained=True)
    assert torch.equal(model.conv1[0].weight, src.conv1[0].weight) and model.fc.out_features == 5
    other = offline_caches / "other.pth"  # any file, given explicitly
    torch.save(src.state_dict(), other)
    assert torch.equal(create_model(name, 5, pretrained_file=other).conv1[0].weight, src.conv1[0].weight)
    bad = offline_caches / "bad.pth"
    torch.save({"nothing": torch.zeros(1)}, bad)
    with pytest.raises(FastRetrainError, match=f"cannot load {bad} into {name}"):
        create_model(name, 5, pretrained_file=bad)


def test_pretrained_default_and_offline_errors_in_the_config(offline_caches):
    from fastretrain import TrainConfig

    assert not TrainConfig(model="test_resnet").use_pretrained()
    with pytest.raises(FastRetrainError, match="no local pretrained weights for 'test_resnet' .*Hugging Face cache"):
        TrainConfig(model="test_resnet", pretrained=True).validate()
    import timm
    from safetensors.torch import save_file

    path = _hf_cache_file(offline_caches / "hf", "timm/test_resnet.r160_in1k", "model.safetensors")
    save_file(timm.create_model("test_resnet").state_dict(), str(path))
    assert TrainConfig(model="test_resnet").use_pretrained()  # on by default once the weights are there
    TrainConfig(model="test_resnet", pretrained=True).validate()
