"""Compare the converted nsfwjs MobileNetV2 (tools/nsfwjs_mobilenet_v2.py) with TF.js running the package itself.

Runs tools/nsfwjs_features.js in node on a few photos (224 px, the size the
model was built for) and the converted weights in torch on the same pixels,
and prints the cosine similarity and largest difference of the pooled
1280-d features, three ways:

- ``mapping``: the Keras input scaling, Keras's padding, the first conv left
  unfolded: checks the weight mapping alone (transposes, batch-norm eps);
- ``folded, keras padding``: the converted file as the trainer uses it (its
  normalization folded in) on a model padded like Keras: adds the border
  effect of the folding;
- ``folded, torchvision padding``: what training starts from.

Usage::

    cd /tmp/tfjs && npm install @tensorflow/tfjs@4.22.0
    NODE_PATH=/tmp/tfjs/node_modules python tools/nsfwjs_check.py PACKAGE_DIR IMAGE...
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import nsfwjs_mobilenet_v2 as conv  # noqa: E402


def pooled(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model.features(x).mean(dim=(2, 3)).numpy()


def report(name: str, ours: np.ndarray, ref: np.ndarray) -> None:
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"{name:28s} cosine min {cos.min():.4f} mean {cos.mean():.4f}, max |diff| {np.abs(ours - ref).max():.3g}"
          f" (features up to {np.abs(ref).max():.3g})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("package", type=Path, help="the unpacked nsfwjs package (the folder holding dist/)")
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--input-scaling", choices=["keras", "nsfwjs"], default="nsfwjs")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR))
                       for p in args.images])
    n = len(pixels)
    with tempfile.TemporaryDirectory() as tmp:
        pixels.tofile(Path(tmp) / "images.u8")
        subprocess.run(["node", str(Path(__file__).parent / "nsfwjs_features.js"), str(args.package.resolve()),
                        str(Path(tmp) / "images.u8"), str(n), str(Path(tmp) / "features.f32"), args.input_scaling],
                       check=True)
        ref = np.fromfile(Path(tmp) / "features.f32", dtype=np.float32).reshape(n, 1280)
    _, weights = conv.parse_model(*conv.read_package(args.package))
    state = conv.convert(weights, args.input_scaling)
    p = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    a, c = {"keras": (2.0, -1.0), "nsfwjs": (1.0, 0.0)}[args.input_scaling]
    mean, std = torch.tensor(conv.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(conv.IMAGENET_STD).view(1, 3, 1, 1)

    unfolded = dict(state)  # the first conv and BN as Keras has them (only the eps moved)
    unfolded["features.0.0.weight"] = torch.from_numpy(weights["Conv1/kernel"]).permute(3, 2, 0, 1).contiguous()
    unfolded["features.0.1.running_mean"] = torch.from_numpy(weights["bn_Conv1/moving_mean"])
    for name, sd, keras_pad, x in [("mapping", unfolded, True, a * p + c),
                                   ("folded, keras padding", state, True, (p - mean) / std),
                                   ("folded, torchvision padding", state, False, (p - mean) / std)]:
        model = torchvision.models.mobilenet_v2(weights=None)
        model.load_state_dict(sd, strict=False)
        report(name, pooled(conv.keras_padding(model) if keras_pad else model, x), ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
