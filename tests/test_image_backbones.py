"""The default models' pretrained backbones are faithful ports: EfficientNet-Lite0 against an independent PyTorch
definition, our torch-free state-dict reader against torch.load, the nsfwjs loader on the real npm package."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from acg2vec_models.image import efficientnet_lite, nsfwjs
from acg2vec_models.image.features import extract
from acg2vec_models.image.torch_state_dict import load_state_dict
from acg2vec_testing.paths import ROOT, SHARED_IMAGES
from tests.support.lite0_reference import Lite0

CACHE = ROOT / ".cache"


def test_state_dict_reader_matches_torch_in_both_file_formats(tmp_path: Path):
    published = efficientnet_lite.published_weights_path()  # torch's legacy (pre-zip) format
    ours, theirs = load_state_dict(published), torch.load(published, map_location="cpu", weights_only=True)
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k].numpy()) for k in theirs)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"w": base.t(), "b": torch.tensor([1, -2], dtype=torch.int64), "h": torch.ones(3, dtype=torch.float16)}
    torch.save(state, tmp_path / "zip.pt")  # the zip format, with a non-contiguous (transposed) tensor
    read = load_state_dict(tmp_path / "zip.pt")
    assert all(np.array_equal(read[k], v.numpy()) and read[k].dtype == v.numpy().dtype for k, v in state.items())


def test_lite0_port_matches_the_pytorch_reference():
    reference = Lite0()
    reference.load_state_dict(
        torch.load(efficientnet_lite.published_weights_path(), map_location="cpu", weights_only=True), strict=True
    )
    reference.eval()
    port = efficientnet_lite.pretrained_lite0(classifier=True)
    # a real picture (normalised as the port's preprocessing does) and noise, at an odd size to exercise padding
    # an anime illustration from ../shared when the checkout has it beside it, else the committed sample picture
    chika = SHARED_IMAGES / "chika.jpg"
    source = chika if chika.is_file() else ROOT / "tests" / "data" / "sample.png"
    picture = extract(lambda x: x, [str(source)], efficientnet_lite.PREPROCESSING)["output"]
    batch = np.concatenate([picture, np.random.default_rng(0).uniform(-1, 1, picture.shape).astype(np.float32)])
    with torch.no_grad():
        head, logits = reference(torch.from_numpy(batch.transpose(0, 3, 1, 2)))
    out = port(batch, training=False)
    np.testing.assert_allclose(out["logits"].numpy(), logits.numpy(), atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(out["head"].numpy(), head.numpy().transpose(0, 2, 3, 1), atol=2e-3, rtol=1e-3)
    assert np.argmax(out["logits"].numpy(), axis=1).tolist() == logits.argmax(dim=1).tolist()


def _tiny_bundle(folder: Path, kernel_q: np.ndarray, bias: np.ndarray) -> None:
    """A TF.js layers model in nsfwjs' bundle format: a Dense layer with a uint8-quantised kernel."""
    topology = {
        "keras_version": "2.2.4",
        "model_config": {
            "class_name": "Model",
            "config": {
                "name": "tiny",
                "layers": [
                    {"name": "in", "class_name": "InputLayer", "config": {"batch_input_shape": [None, 3], "name": "in"},
                     "inbound_nodes": []},
                    {"name": "d", "class_name": "Dense",
                     "config": {"name": "d", "units": 2, "activation": "linear", "use_bias": True, "trainable": True},
                     "inbound_nodes": [[["in", 0, 0, {}]]]},
                ],
                "input_layers": [["in", 0, 0]],
                "output_layers": [["d", 0, 0]],
            },
        },
    }  # fmt: skip
    manifest = [
        {
            "paths": ["group1-shard1of1"],
            "weights": [
                {"name": "d/kernel", "shape": [3, 2], "dtype": "float32",
                 "quantization": {"min": -1.0, "scale": 0.01, "dtype": "uint8"}},
                {"name": "d/bias", "shape": [2], "dtype": "float32"},
            ],
        }
    ]  # fmt: skip
    shard = kernel_q.astype(np.uint8).tobytes() + bias.astype("<f4").tobytes()
    folder.mkdir()
    wrap = "module.exports = {};\n"
    (folder / "model.min.js").write_text(
        wrap.replace("{}", json.dumps({"modelTopology": topology, "weightsManifest": manifest}))
    )
    (folder / "group1-shard1of1.min.js").write_text(wrap.replace("{}", json.dumps(base64.b64encode(shard).decode())))


def test_nsfwjs_loader_dequantises_and_rebuilds_a_bundle(tmp_path: Path):
    kernel_q = np.array([[0, 100], [200, 255], [50, 150]])
    bias = np.array([0.5, -0.25], dtype=np.float32)
    _tiny_bundle(tmp_path / "tiny", kernel_q, bias)
    model = nsfwjs.build_keras(nsfwjs.read_bundle(tmp_path / "tiny"))
    x = np.array([[1.0, 2.0, -1.0]], dtype=np.float32)
    expected = x @ (kernel_q * 0.01 - 1.0) + bias
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason="the shared anime images are not here")
def test_nsfwjs_mobilenet_from_the_npm_package_calls_anime_illustrations_drawings():
    model = nsfwjs.load_model("mobilenet_v2", CACHE / "packages" / "npm")
    images = sorted(str(p) for p in SHARED_IMAGES.glob("*.jpg"))
    assert images
    probs = extract(lambda x: model(x, training=False)[0], images, nsfwjs.preprocessing("mobilenet_v2"))["output"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    drawing, hentai = nsfwjs.CLASSES.index("Drawing"), nsfwjs.CLASSES.index("Hentai")
    assert (probs.argmax(axis=1) == drawing).all(), probs
    assert (probs[:, drawing] + probs[:, hentai] > 0.9).all(), probs
