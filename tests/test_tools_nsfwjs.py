"""tools/nsfwjs_mobilenet_v2.py: parse a TF.js package like nsfwjs's and convert it to torchvision's layout.

The package here is written by the test from a torchvision model's own
weights (as Keras would hold them, quantized to uint8 like TF.js does), so no
npm download is needed; the check against TF.js itself is in
docs/training.md "Pretrained starts".
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

TOOL = Path(__file__).resolve().parents[1] / "tools" / "nsfwjs_mobilenet_v2.py"
_spec = importlib.util.spec_from_file_location("nsfwjs_mobilenet_v2", TOOL)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def minify(obj) -> str:
    """JSON -> the minified JS object style of the npm bundle (bare keys, !0 / !1, .5)."""
    text = re.sub(r'"(\w+)":', r"\1:", json.dumps(obj, separators=(",", ":")))
    return re.sub(r"\b0\.(\d)", r".\1", text.replace("true", "!0").replace("false", "!1"))


def test_a_minified_object_literal_reads_as_json():
    js = 'a.exports={name:"x:{y}",n:.5,m:-.25,k:1e-3,f:4.058,ok:!0,no:!1,z:null,l:[1,{b:"c"}],q:\'it"s\'}'
    got = json.loads(tool.js_object_to_json(tool._balanced(js, js.index("{"))))
    assert got == {"name": "x:{y}", "n": 0.5, "m": -0.25, "k": 1e-3, "f": 4.058, "ok": True, "no": False,
                   "z": None, "l": [1, {"b": "c"}], "q": 'it"s'}
    obj = {"v": 0.75, "w": [0.001, 10.5]}
    assert json.loads(tool.js_object_to_json(minify(obj))) == obj


def write_package(root: Path, donor: torch.nn.Module, eps: float = 1e-3) -> None:
    """A fake nsfwjs package holding ``donor``'s features as Keras would, uint8-quantized like TF.js."""
    state = donor.state_dict()
    manifest, blobs = [], []

    def add(name: str, value: np.ndarray) -> None:
        lo, hi = float(value.min()), float(value.max())
        scale = (hi - lo) / 255 or 1.0
        q = np.round((value - lo) / scale).astype(np.uint8)
        manifest.append({"name": name, "shape": list(value.shape), "dtype": "float32",
                         "quantization": {"min": lo, "scale": scale, "dtype": "uint8"}})
        blobs.append(q.tobytes())

    for conv, k_conv, k_bn in tool.keras_layer_names():
        w = state[f"{conv}.weight"].numpy()
        if "depthwise" in k_conv:
            add(f"{k_conv}/depthwise_kernel", w.transpose(2, 3, 0, 1))
        else:
            add(f"{k_conv}/kernel", w.transpose(2, 3, 1, 0))
        bn = tool._bn_prefix(conv)
        add(f"{k_bn}/gamma", state[f"{bn}.weight"].numpy())
        add(f"{k_bn}/beta", state[f"{bn}.bias"].numpy())
        add(f"{k_bn}/moving_mean", state[f"{bn}.running_mean"].numpy())
        add(f"{k_bn}/moving_variance", state[f"{bn}.running_var"].numpy())
    layers = [{"name": "bn_Conv1", "class_name": "BatchNormalization", "config": {"epsilon": eps, "trainable": False}}]
    model = {"modelTopology": {"keras_version": "2.2.4", "model_config": {"config": {"layers": layers}}},
             "weightsManifest": [{"paths": ["group1-shard1of1"], "weights": manifest}]}
    folder = root / "package" / "dist" / "models" / "mobilenet_v2"
    folder.mkdir(parents=True)
    (folder / "model.min.js").write_text("!function(e){}({1:[function(e,a,n){a.exports=" + minify(model) + "},{}]})")
    b64 = base64.b64encode(b"".join(blobs)).decode()
    (folder / "group1-shard1of1.min.js").write_text('!function(e){}({1:[function(e,h,n){h.exports="' + b64 + '"}]})')


def test_a_package_converts_to_torchvision_with_the_trainers_normalization_folded_in(tmp_path: Path):
    torch.manual_seed(0)
    donor = torchvision.models.mobilenet_v2(weights=None).eval()
    with torch.no_grad():  # statistics that are not the 0 / 1 of a fresh model, so the folding shows
        for m in donor.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    write_package(tmp_path, donor)
    assert tool.main([str(tmp_path), str(tmp_path / "w.pt"), "--input-scaling", "keras"]) == 0
    got = torch.load(tmp_path / "w.pt", weights_only=True)
    want = donor.state_dict()
    assert set(got) == {k for k in want if k.startswith("features.")}
    # away from the first layer: a transpose, 8-bit steps, and Keras's larger eps added to the variance
    w, ref = got["features.5.conv.1.0.weight"], want["features.5.conv.1.0.weight"]
    assert float((w - ref).abs().max()) <= float(ref.max() - ref.min()) / 255
    var = want["features.18.1.running_var"] + (1e-3 - 1e-5)
    assert torch.allclose(got["features.18.1.running_var"], var, atol=float(var.max() - var.min()) / 255 + 1e-6)
    # the first layer takes the trainer's (p - mean) / std and gives what Keras's gets from 2p - 1
    model = torchvision.models.mobilenet_v2(weights=None)
    model.load_state_dict(got, strict=False)
    model.eval()
    kw = {k: torch.from_numpy(v) for k, v in tool.parse_model(*tool.read_package(tmp_path))[1].items()}
    keras_first = torchvision.models.mobilenet_v2(weights=None).features[0]  # Conv1 + bn_Conv1 as Keras has them
    keras_first.load_state_dict({"0.weight": kw["Conv1/kernel"].permute(3, 2, 0, 1), "1.weight": kw["bn_Conv1/gamma"],
                                 "1.bias": kw["bn_Conv1/beta"], "1.running_mean": kw["bn_Conv1/moving_mean"],
                                 "1.running_var": kw["bn_Conv1/moving_variance"] + (1e-3 - 1e-5),
                                 "1.num_batches_tracked": torch.tensor(0)})
    keras_first.eval()
    p = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(tool.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(tool.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = model.features[0]((p - mean) / std)
        theirs = keras_first(2 * p - 1)
    assert torch.allclose(ours[..., 1:, 1:], theirs[..., 1:, 1:], atol=1e-4)  # exact but for the padded border
    assert not torch.allclose(ours[..., 0, :], theirs[..., 0, :], atol=1e-4)


def test_a_package_of_another_kind_is_refused(tmp_path: Path, capsys):
    torch.manual_seed(0)
    write_package(tmp_path, torchvision.models.mobilenet_v2(weights=None), eps=1e-5)
    assert tool.main([str(tmp_path), str(tmp_path / "w.pt")]) == 2
    assert "epsilon" in capsys.readouterr().err and not (tmp_path / "w.pt").exists()
    with pytest.raises(tool.ConversionError, match="cannot read"):
        tool.read_package(tmp_path / "nothing")


def test_the_tools_docs_training_names_exist():
    root = Path(__file__).resolve().parents[1]
    named = set(re.findall(r"tools/[\w./-]+\.(?:py|js)", (root / "docs" / "training.md").read_text()))
    assert {"tools/nsfwjs_mobilenet_v2.py", "tools/nsfwjs_check.py"} <= named
    assert all((root / path).exists() for path in named), named
