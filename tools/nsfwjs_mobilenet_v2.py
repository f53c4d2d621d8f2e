"""Convert the MobileNetV2 bundled in the npm package nsfwjs into a torchvision ``mobilenet_v2`` state dict.

Why: pretrained starts (docs/training.md) need ImageNet-style weights, and a
machine without access to model hubs can still reach npm. ``nsfwjs@4.4.0``
ships a Keras 2.2.4 MobileNetV2 (alpha 1.0, 224 px) as a TF.js layers model,
fine-tuned for a 5-class NSFW head:

- ``dist/models/mobilenet_v2/model.min.js``: the Keras topology and the
  weights manifest (names, shapes, per-tensor uint8 quantization min/scale),
  as a JavaScript object literal inside a UMD wrapper;
- ``dist/models/mobilenet_v2/group1-shard1of1.min.js``: the weights, one
  base64 string of uint8 values (``value = min + scale * q``).

Its layers up to ``block_10`` are frozen (``trainable: false``), so their
weights are Keras's ImageNet MobileNetV2 weights, 8-bit quantized (Keras
2.2.4 does not update the moving statistics of a frozen batch norm either); ``block_11`` to ``Conv_1`` were
fine-tuned on the NSFW task (from those ImageNet weights). The dense head is
dropped: only torchvision's ``features.*`` is written (the classifier head is
the training project's).

What the conversion does:

- kernels: conv HWIO -> OIHW, depthwise [H, W, C, 1] -> [C, 1, H, W];
- batch norm: Keras eps is 1e-3, torch's 1e-5: 1e-3 - 1e-5 is added to the
  moving variance, so eval-mode outputs are the same;
- input: the conversion folds the input scaling into the first conv, so the
  weights take what edgeloop's trainer feeds torchvision models,
  ``(p - mean) / std`` with p in [0, 1] and ImageNet's mean/std
  (trainer/train/models.py). Which scaling to fold: ``--input-scaling
  nsfwjs`` (the default) is ``p`` itself, what nsfwjs feeds the whole model,
  so what its fine-tuned blocks were trained on; ``keras`` is ``2p - 1``,
  Keras's ImageNet preprocessing (``x / 127.5 - 1``), what the frozen blocks
  were trained on. On the hymenoptera photos a linear probe on the pooled
  features does better with ``nsfwjs``; fine-tuned in replay, the two end
  within noise of each other (docs/training.md). Folding: with
  Keras's input ``a * p + c`` and ``p = std * x + mean``, the kernel is
  scaled by ``a * std`` per input channel and the constant's response,
  ``sum(W * (a * mean + c))``, moves into the batch norm's moving mean;
  exact, except at the padded border, where a zero pad means a different
  pixel in each scaling;
- padding: Keras pads its five stride-2 convs by (0, 1) on each axis
  (ZeroPadding2D then a valid conv); torchvision pads (1, 1). With the same
  weights torchvision's taps sit one pixel up-left of Keras's at those five
  layers, so the pooled features differ (cosine to TF.js's 0.87-0.90 on
  average over 8 hymenoptera photos, 0.72 at worst; tools/nsfwjs_check.py);
  fine-tuning absorbs it.
  ``keras_padding(model)`` below patches a torchvision model to pad like
  Keras, for checking the conversion itself.

Usage (the script is standalone; the edgeloop package never imports it)::

    npm pack nsfwjs@4.4.0            # or use an unpacked copy
    python tools/nsfwjs_mobilenet_v2.py nsfwjs-4.4.0.tgz mobilenet_v2_nsfwjs.pt
    # then, in a training config: model = "mobilenet_v2", weights = "mobilenet_v2_nsfwjs.pt"

tools/nsfwjs_check.py compares the converted weights with the package run
by TF.js itself (docs/training.md "Pretrained starts").
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODEL_JS = "dist/models/mobilenet_v2/model.min.js"
SHARD_JS = "dist/models/mobilenet_v2/group1-shard1of1.min.js"
KERAS_EPS, TORCH_EPS = 1e-3, 1e-5
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the trainer's normalization for torchvision models
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConversionError(Exception):
    """The package is not the expected nsfwjs MobileNetV2, or its contents do not parse."""


def read_package(path: Path) -> tuple[str, str]:
    """The text of model.min.js and of the weights shard, from an unpacked package dir or the npm .tgz."""
    if path.is_dir():
        root = path / "package" if (path / "package" / MODEL_JS).exists() else path
        try:
            return (root / MODEL_JS).read_text(encoding="utf-8"), (root / SHARD_JS).read_text(encoding="utf-8")
        except OSError as e:
            raise ConversionError(f"{path} is not an unpacked nsfwjs package: {e}") from e
    try:
        with tarfile.open(path) as tar:
            return tuple(tar.extractfile(f"package/{p}").read().decode("utf-8") for p in (MODEL_JS, SHARD_JS))
    except (OSError, tarfile.TarError, KeyError, AttributeError) as e:
        raise ConversionError(f"cannot read {MODEL_JS} and {SHARD_JS} from {path}: {e}") from e


def js_object_to_json(js: str) -> str:
    """Rewrite a minified JS object literal as JSON: quote bare keys, !0/!1 -> true/false, .5 -> 0.5."""
    out, i, n = [], 0, len(js)
    while i < n:
        c = js[i]
        if c in "\"'":  # copy a string literal whole, so nothing inside it is rewritten
            j = i + 1
            while js[j] != c:
                j += 2 if js[j] == "\\" else 1
            body = js[i + 1:j]
            out.append(json.dumps(body) if c == "'" else f'"{body}"')
            i = j + 1
        elif c == "!" and js[i + 1] in "01":
            out.append("true" if js[i + 1] == "0" else "false")
            i += 2
        elif c.isalpha() or c in "_$":
            m = re.match(r"[A-Za-z_$][\w$]*", js[i:])
            word = m.group(0)
            i += len(word)
            out.append(f'"{word}"' if js[i:i + 1] == ":" else word)
        elif c.isdigit() or (c == "." and js[i + 1:i + 2].isdigit()):
            num = re.match(r"\d*\.?\d*(?:[eE][+-]?\d+)?", js[i:]).group(0)
            i += len(num)
            out.append(("0" if num[0] == "." else "") + num + ("0" if num.endswith(".") else ""))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _balanced(text: str, start: int) -> str:
    """The {...} literal starting at text[start], skipping braces inside strings."""
    depth, i, quote = 0, start, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
        i += 1
    raise ConversionError("unbalanced object literal in model.min.js")


def parse_model(model_js: str, shard_js: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(Keras topology, {weight name: dequantized float32 array in Keras layout})."""
    at = model_js.find("exports={modelTopology")
    if at < 0:
        raise ConversionError("model.min.js holds no modelTopology export")
    try:
        model = json.loads(js_object_to_json(_balanced(model_js, at + len("exports="))))
    except ValueError as e:
        raise ConversionError(f"cannot parse the model literal: {e}") from e
    blobs = re.findall(r'"([A-Za-z0-9+/=]{1000,})"', shard_js)
    if len(blobs) != 1:
        raise ConversionError(f"expected one base64 weights string in the shard, found {len(blobs)}")
    data = np.frombuffer(base64.b64decode(blobs[0]), dtype=np.uint8)
    weights, offset = {}, 0
    for spec in model["weightsManifest"][0]["weights"]:
        q = spec.get("quantization")
        if not q or q.get("dtype") != "uint8":
            raise ConversionError(f"{spec['name']}: expected uint8 quantization, got {q}")
        size = int(np.prod(spec["shape"]))
        raw = data[offset:offset + size].astype(np.float64)
        weights[spec["name"]] = (q["min"] + q["scale"] * raw).astype(np.float32).reshape(spec["shape"])
        offset += size
    if offset != data.size:
        raise ConversionError(f"the manifest accounts for {offset} bytes, the shard holds {data.size}")
    return model["modelTopology"], weights


def keras_layer_names() -> list[tuple[str, str, str]]:
    """(torchvision conv prefix, Keras conv layer, Keras BN layer), in network order."""
    pairs = [("features.0.0", "Conv1", "bn_Conv1"),
             ("features.1.conv.0.0", "expanded_conv_depthwise", "expanded_conv_depthwise_BN"),
             ("features.1.conv.1", "expanded_conv_project", "expanded_conv_project_BN")]
    for b in range(1, 17):
        t = f"features.{b + 1}.conv"
        pairs += [(f"{t}.0.0", f"block_{b}_expand", f"block_{b}_expand_BN"),
                  (f"{t}.1.0", f"block_{b}_depthwise", f"block_{b}_depthwise_BN"),
                  (f"{t}.2", f"block_{b}_project", f"block_{b}_project_BN")]
    return pairs + [("features.18.0", "Conv_1", "Conv_1_bn")]


def _bn_prefix(conv: str) -> str:
    """The torchvision BN that follows a conv: same parent, next index."""
    parent, _, idx = conv.rpartition(".")
    return f"{parent}.{int(idx) + 1}"


def convert(weights: dict[str, np.ndarray], scaling: str = "nsfwjs") -> dict[str, torch.Tensor]:
    """Keras MobileNetV2 weights -> torchvision ``mobilenet_v2`` ``features.*`` state dict (see module doc)."""
    state: dict[str, torch.Tensor] = {}
    for conv, k_conv, k_bn in keras_layer_names():
        if f"{k_conv}/kernel" in weights:
            w = torch.from_numpy(weights[f"{k_conv}/kernel"]).permute(3, 2, 0, 1)  # HWIO -> OIHW
        else:
            w = torch.from_numpy(weights[f"{k_conv}/depthwise_kernel"]).permute(2, 3, 0, 1)  # HWC1 -> C1HW
        bn = _bn_prefix(conv)
        mean = torch.from_numpy(weights[f"{k_bn}/moving_mean"]).clone()
        if conv == "features.0.0":
            w, mean = _fold_input(w, mean, scaling)
        state[f"{conv}.weight"] = w.contiguous()
        state[f"{bn}.weight"] = torch.from_numpy(weights[f"{k_bn}/gamma"])
        state[f"{bn}.bias"] = torch.from_numpy(weights[f"{k_bn}/beta"])
        state[f"{bn}.running_mean"] = mean
        state[f"{bn}.running_var"] = torch.from_numpy(weights[f"{k_bn}/moving_variance"]) + (KERAS_EPS - TORCH_EPS)
        state[f"{bn}.num_batches_tracked"] = torch.tensor(0)
    return state


def _fold_input(w: torch.Tensor, mean: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the first conv take the trainer's x = (p - m) / s, p in [0, 1], instead of a * p + c.

    a = 2, c = -1 for ``keras``; a = 1, c = 0 for ``nsfwjs``. p = s * x + m, so a * p + c =
    (a * s) * x + (a * m + c): scale the kernel by a * s and move the constant's response,
    sum(W * (a * m + c)), into the BN's moving mean (the conv has no bias).
    """
    a, c = {"keras": (2.0, -1.0), "nsfwjs": (1.0, 0.0)}[scaling]
    m, s = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    const = (w.double() * (a * m + c).double().view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    return (w * (a * s).view(1, 3, 1, 1)).float(), (mean.double() - const).float()


def keras_padding(model: nn.Module) -> nn.Module:
    """Patch a torchvision mobilenet_v2 in place so its stride-2 convs pad (0, 1) like Keras (checks only)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.padding = (0, 0)
            module.register_forward_pre_hook(lambda _m, args: (nn.functional.pad(args[0], (0, 1, 0, 1)),))
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", type=Path, help="nsfwjs-4.4.0.tgz (npm pack nsfwjs@4.4.0) or its unpacked dir")
    ap.add_argument("out", type=Path, help="the .pt state dict to write (torchvision mobilenet_v2 features.*)")
    ap.add_argument("--input-scaling", choices=["keras", "nsfwjs"], default="nsfwjs",
                    help="the input scaling to fold into the first conv: nsfwjs = x/255 (default), keras = x/127.5 - 1")
    args = ap.parse_args(argv)
    try:
        topology, weights = parse_model(*read_package(args.package))
        eps = {layer["config"]["epsilon"] for layer in topology["model_config"]["config"]["layers"]
               if layer["class_name"] == "BatchNormalization"}
        if eps != {KERAS_EPS}:
            raise ConversionError(f"expected batch-norm epsilon {KERAS_EPS}, the topology has {sorted(eps)}")
        state = convert(weights, args.input_scaling)
    except (ConversionError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torchvision

    own = torchvision.models.mobilenet_v2(weights=None).state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k.startswith("features.") and k not in state]
    if bad or missing:
        print(f"error: tensors that do not fit torchvision's mobilenet_v2: {bad[:5]}, missing {missing[:5]}",
              file=sys.stderr)
        return 2
    tmp = args.out.with_name(args.out.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(args.out)  # never a half-written weights file under the final name
    print(f"wrote {len(state)} tensors ({sum(v.numel() for v in state.values())} values) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
