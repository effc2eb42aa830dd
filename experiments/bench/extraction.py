"""Benchmark of activation extraction: throughput and bounded-memory streaming to disk.

Rows (one ``dict`` each, keys :data:`ROW_FIELDS`):

* ``throughput``: :func:`dpmodels.activations.extract` of all default layers
  (:func:`~dpmodels.activations.conv_layers`) of ``dpmodels.nets.SmallCNN`` (if that module is
  importable, else :class:`FallbackCNN`, a conv-bn-relu-pool net defined here; the ``net`` column
  says which) and ``torchvision.models.resnet18(weights=None)`` at 64 and 224 px, and the
  ImageNet-trained EfficientNet-Lite0 (the main job's default network, with its preprocessing) at
  224 px, in memory; with ``zoo`` (not in ``--quick``), the timm models ``resnet50``,
  ``convnext_tiny``, ``efficientnet_b0``, ``regnety_008``, ``vit_small_patch16_224``,
  ``deit_tiny_patch16_224``, ``swin_tiny_patch4_window7_224``, ``eva02_tiny_patch14_224`` and the
  Hugging Face encoders DINOv2-S/14, ViT-B/16, CLIP ViT-B/32 and SigLIP-B/16 (their default
  configs, random weights) at 224 px on their default layers (``net`` ``timm:<name>`` /
  ``hf:<class>``), when timm and transformers are installed.
  ``geometry_seconds`` is a first :func:`~dpmodels.activations.list_layers` call on an empty
  geometry cache (layer geometry derived from the graph, or probed where the graph does not say);
  ``wall_seconds`` is the ``extract`` call that follows, which finds that geometry cached, and
  ``images_per_s`` / ``positions_per_s`` use it (positions summed over layers). A first
  ``extract`` on a new architecture costs ``geometry_seconds + wall_seconds``.
* ``store``: ``extract(..., store=tmpdir)`` of ResNet-18's stem activation ``relu`` (64 x 64 x 64
  float32 = 1 MiB per image at 128 px) for ``store_images`` images, in a child process whose peak
  resident memory (``VmHWM``) is reported next to the layer's size on disk. The images are one
  random image broadcast (``expand``, no copy) so that the input itself costs no memory. The
  temporary directory is deleted afterwards.

Run ``python -m experiments.bench.extraction [--quick] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

from dpmodels.activations import clear_geometry_cache, conv_layers, extract, list_layers

__all__ = ["ROW_FIELDS", "FallbackCNN", "format_table", "main", "run", "small_cnn"]

ROW_FIELDS = (
    "kind net size n_images layers positions wall_seconds geometry_seconds images_per_s positions_per_s "
    "stored_gib peak_rss_mib"
).split()


class FallbackCNN(nn.Module):
    """Three conv-bn-relu-pool blocks (16, 32, 64 channels); used when ``dpmodels.nets`` is absent."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        blocks, c = [], in_channels
        for out in (16, 32, 64):
            blocks += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            c = out
        self.features = nn.Sequential(*blocks)

    def forward(self, x):
        return self.features(x)


def small_cnn() -> tuple[str, nn.Module]:
    """``("SmallCNN", model)`` from ``dpmodels.nets`` if available, else ``("FallbackCNN", ...)``."""
    try:
        from dpmodels.nets import SmallCNN
    except ImportError:
        return "FallbackCNN", FallbackCNN()
    return "SmallCNN", SmallCNN(in_channels=3, num_classes=8)


def _throughput(
    name: str, model: nn.Module, size: int, n_images: int, batch_size: int, max_layers: int | None
) -> dict:
    x = torch.rand(n_images, 3, size, size, generator=torch.Generator().manual_seed(0))
    layers = getattr(model, "default_layers", None) or conv_layers(model, (3, size, size))
    layers = list(layers)[:max_layers]
    clear_geometry_cache()  # the geometry of a first call: derived from the graph or probed
    t0 = time.perf_counter()
    list_layers(model, (3, size, size), layers=layers)
    geometry = time.perf_counter() - t0
    t0 = time.perf_counter()  # extract finds that geometry cached: its time is the forward passes
    acts = extract(model, x, layers, batch_size=batch_size, progress=False)
    wall = time.perf_counter() - t0
    positions = sum(a.num_points for a in acts.values())
    return dict(kind="throughput", net=name, size=size, n_images=n_images, layers=len(layers), positions=positions,
                wall_seconds=wall, geometry_seconds=geometry, images_per_s=n_images / wall,
                positions_per_s=positions / wall)  # fmt: skip


def _store_child(job: dict) -> None:
    """Runs in a child process: extract to the store, print a JSON line with timings and memory."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    image = torch.rand(1, 3, job["size"], job["size"], generator=torch.Generator().manual_seed(0))
    x = image.expand(job["n_images"], -1, -1, -1)  # (I, 3, H, W) view: no memory per image
    t0 = time.perf_counter()
    acts = extract(model, x, ["relu"], batch_size=job["batch_size"], store=job["store"], progress=False)
    wall = time.perf_counter() - t0
    hwm = next(
        line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM")
    )
    print(json.dumps({"wall_seconds": wall, "peak_rss_mib": int(hwm.split()[1]) / 1024,
                      "positions": acts["relu"].num_points}))  # fmt: skip


def _store(n_images: int, size: int, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="dpmodels-bench-") as tmp:
        job = {
            "n_images": n_images,
            "size": size,
            "batch_size": batch_size,
            "store": str(Path(tmp) / "store"),
        }
        cmd = [sys.executable, "-m", "experiments.bench.extraction", "--child", json.dumps(job)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"store benchmark child failed:\n{proc.stderr[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        stored = (Path(tmp) / "store" / "relu.npy").stat().st_size / 2**30
    return dict(kind="store", net="resnet18:relu", size=size, n_images=n_images, layers=1,
                positions=out["positions"], wall_seconds=out["wall_seconds"],
                images_per_s=n_images / out["wall_seconds"], positions_per_s=out["positions"] / out["wall_seconds"],
                stored_gib=stored, peak_rss_mib=out["peak_rss_mib"])  # fmt: skip


ZOO_TIMM = ("resnet50 convnext_tiny efficientnet_b0 regnety_008 vit_small_patch16_224 deit_tiny_patch16_224 "
            "swin_tiny_patch4_window7_224 eva02_tiny_patch14_224").split()  # fmt: skip


def zoo_models():
    """``(label, builder)`` of the zoo rows: timm models and Hugging Face encoders, random weights."""
    from dpmodels.nets import build_net

    for name in ZOO_TIMM:
        yield f"timm:{name}", lambda name=name: build_net(name, source="timm", weights=None)
    import transformers as t

    from dpmodels.nets.external import HFVisionNet

    configs = {
        "Dinov2Model": t.Dinov2Config(hidden_size=384, num_attention_heads=6, patch_size=14, image_size=224),
        "ViTModel": t.ViTConfig(),
        "CLIPVisionModel": t.CLIPVisionConfig(),
        "SiglipVisionModel": t.SiglipVisionConfig(),
    }
    for kind, config in configs.items():
        yield (
            f"hf:{kind}",
            lambda kind=kind, config=config: HFVisionNet(getattr(t, kind)(config).eval(), kind, None),
        )


def run(
    quick: bool = False, store_images: int | None = None, log=print, zoo: bool = True, zoo_images: int = 8
) -> list[dict]:
    """All rows; ``quick`` shrinks every case to seconds (for tests): 32 px, 4 images, the first two
    default layers only (deep layers' geometry probes dominate at tiny sizes), 40 stored images."""
    sizes = (32,) if quick else (64, 224)
    n_images = {32: 4, 64: 64, 224: 16}
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        for name, model in (small_cnn(), ("resnet18", torchvision.models.resnet18(weights=None))):
            rows.append(_throughput(name, model, size, n_images[size], 16, 2 if quick else None))
            log(f"  {name} {size}px: {rows[-1]['images_per_s']:.1f} images/s")
    for size in (32,) if quick else (224,):
        from dpmodels.nets import build_net

        lite = build_net("efficientnet_lite0", weights="DEFAULT")
        rows.append(
            _throughput("efficientnet_lite0", lite, size, 4 if quick else 32, 16, 2 if quick else None)
        )
        log(f"  efficientnet_lite0 (ImageNet) {size}px: {rows[-1]['images_per_s']:.1f} images/s")
    if zoo and not quick:
        try:
            import timm  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            log('  zoo rows skipped: timm/transformers not installed (pip install -e ".[zoo]")')
        else:
            for label, builder in zoo_models():
                torch.manual_seed(0)
                rows.append(_throughput(label, builder(), 224, zoo_images, 8, None))
                log(
                    f"  {label} 224px: {rows[-1]['images_per_s']:.3g} images/s, extract call "
                    f"{rows[-1]['wall_seconds']:.1f} s (geometry {rows[-1]['geometry_seconds']:.1f} s)"
                )
    n_store = store_images if store_images is not None else (40 if quick else 10_000)
    rows.append(_store(n_store, 32 if quick else 128, batch_size=8 if quick else 64))
    log(f"  store: {rows[-1]['stored_gib']:.2f} GiB on disk, peak RSS {rows[-1]['peak_rss_mib']:.0f} MiB")
    return [{k: row.get(k) for k in ROW_FIELDS} for row in rows]


def format_table(rows: list[dict]) -> str:
    """A readable table of the rows."""
    cells = [ROW_FIELDS] + [[_fmt(r[k]) for k in ROW_FIELDS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(ROW_FIELDS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> dict:
    """Command line: runs the benchmark, writes ``--out`` (JSON) and prints the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny cases (seconds), for tests")
    p.add_argument("--store-images", type=int, default=None, help="images for the on-disk case")
    p.add_argument("--out", default="bench_extraction.json", help="JSON output file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        _store_child(json.loads(args.child))
        return {}
    rows = run(args.quick, args.store_images, log=lambda s: print(s, file=sys.stderr))
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "machine": platform.machine(), "note": "CPU timings; shared machines are noisy"}  # fmt: skip
    payload = {"environment": env, "quick": args.quick, "rows": rows}
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    shutil.move(tmp, out)
    print(format_table(rows))
    return payload


if __name__ == "__main__":
    main()
