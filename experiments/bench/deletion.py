"""Deletion test of concept importance, and the speed of applying a run to new images.

    python -m experiments.bench.deletion [--images 6] [--apply-images 100] [--out DIR]

1. Reference runs of the default network (ImageNet-trained EfficientNet-Lite0) made with
   ``experiments.analyze``: on the real-texture mosaics (``data=real_textures``, ``--ref-images``
   of them) and on the histology image (``data=ihc``, the seed paper's image), both small
   (``infer.fit_points``, no figures).
2. **Deletion test** per run and layer: for each image and its top-1 class, the image's concepts
   are removed cumulatively (positions replaced by the layer's reference mean) in four kinds of
   order: by occlusion score, by Sobol total index, by area (largest first), and at random
   (``--random-orders`` seeds). The curve is the normalised logit ``(f_t - f_K) / (f_0 - f_K)``
   against the share of concepts removed; its area (trapezoid over [0, 1]) is lower when the
   logit falls sooner. Reported: mean AUC over images per layer and order, and the share of
   images where the importance order beats the mean random order.
3. **Apply speed**: ``RunOutputs.apply`` on ``--apply-images`` new 224 px mosaics against
   ``extract`` of the same layers of the same images (the extraction benchmark's measure), side
   by side in this process; the ratio is apply's time over extraction's, by the wall clock and by
   this process's CPU time (which other jobs on a shared machine do not inflate).

Writes ``deletion.json`` and ``deletion.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["auc", "deletion_study", "main"]


def auc(curve: np.ndarray) -> float:
    """Trapezoid area under a deletion curve ``(K + 1,)`` over the share of concepts removed."""
    x = np.linspace(0.0, 1.0, len(curve))
    return float(np.sum((curve[1:] + curve[:-1]) * np.diff(x)) / 2.0)


def reference_run(out: Path, name: str, overrides: list[str]) -> Path:
    """A finished ``experiments.analyze`` run under ``out/name`` (made once, then reused)."""
    run_dir = out / name
    if not (run_dir / "run_complete.json").is_file():
        cmd = [sys.executable, "-m", "experiments.analyze", *overrides, f"hydra.run.dir={run_dir}"]
        print("running", " ".join(cmd[2:]), file=sys.stderr)
        subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return run_dir


def deletion_study(
    run_dir: Path,
    images,
    *,
    max_images: int,
    sobol_masks: int,
    random_orders: int,
    seed: int = 0,
    layers=None,
    save_dir: Path | None = None,
):
    """Per layer of ``run_dir``: mean deletion AUC per order over the images.

    With ``save_dir``, each layer's row is written to ``save_dir/<layer>.json`` (with the per-image
    AUCs) and ``save_dir/<layer>_per_image.csv`` as soon as the layer is done, and a layer whose
    file exists is read back instead of recomputed (a long run can be resumed; partial results
    survive an interruption).
    """
    from dpmodels.analysis import RunOutputs
    from dpmodels.analysis.apply import run_network
    from dpmodels.concepts.importance import ConceptOcclusion, concept_importance, deletion_curves

    run = RunOutputs(run_dir)
    model, _ = run_network(run)
    x = images.images[:max_images]
    out = {}
    for layer in layers or run.layers:
        done = save_dir / f"{layer}.json" if save_dir is not None else None
        if done is not None and done.is_file():
            out[layer] = json.loads(done.read_text())["summary"]
            print(f"{run_dir.name} {layer}: read back from {done}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        fit = run.fit(layer)
        frame, kept = concept_importance(model, x, layer, fit, sobol_masks=sobol_masks, seed=seed,
                                         return_images=True)  # fmt: skip
        hook = ConceptOcclusion(model, layer, fit.reference_mean, tuple(x.shape[1:]))
        rng = np.random.default_rng(seed)
        aucs: dict[str, list[float]] = {}
        scored: list[int] = []
        try:
            with torch.no_grad():
                model.eval()
                for i, img in enumerate(kept):
                    rows = frame[frame.image == i]
                    c = int(rows["class"].iloc[0])
                    concepts = rows["concept"].to_numpy()
                    if len(concepts) < 2:
                        continue
                    orders = {
                        "occlusion": concepts[np.argsort(-rows["occlusion"].to_numpy(), kind="stable")],
                        "sobol": concepts[np.argsort(-np.nan_to_num(rows["sobol_total"].to_numpy(), nan=-1.0), kind="stable")],
                        "area": concepts[np.argsort(-rows["area"].to_numpy(), kind="stable")],
                    }  # fmt: skip
                    for r in range(random_orders):
                        orders[f"random{r}"] = rng.permutation(concepts)
                    curves = deletion_curves(
                        model, hook, img, c, {k: list(map(int, v)) for k, v in orders.items()}
                    )
                    if not np.isfinite(curves["area"]).all():
                        continue  # removing every concept leaves the logit unchanged: no curve
                    scored.append(i)
                    for k, v in curves.items():
                        aucs.setdefault(k, []).append(auc(v))
        finally:
            hook.remove()
        rand = np.mean([aucs[k] for k in aucs if k.startswith("random")], axis=0) if aucs else np.array([])
        row = {k: float(np.mean(v)) for k, v in aucs.items() if not k.startswith("random")}
        row["random"] = float(np.mean(rand)) if len(rand) else float("nan")
        row["images"] = len(rand)
        row["occlusion_beats_random"] = (
            float(np.mean(np.array(aucs["occlusion"]) < rand)) if len(rand) else float("nan")
        )
        row["occlusion_beats_area"] = (
            float(np.mean(np.array(aucs["occlusion"]) < np.array(aucs["area"])))
            if len(rand)
            else float("nan")
        )
        row["mean_concepts"] = float(frame.groupby("image")["concept"].nunique().mean())
        row["seconds"] = time.perf_counter() - t0
        row["occlusion_below_random_and_area"] = bool(
            len(rand) and row["occlusion"] < row["random"] and row["occlusion"] < row["area"]
        )
        out[layer] = row
        print(f"{run_dir.name} {layer}: {row}", file=sys.stderr)
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            per_image = {"image": scored, **aucs}
            (save_dir / f"{layer}_per_image.csv").write_text(
                ",".join(per_image) + "\n"
                + "".join(",".join(str(per_image[k][j]) for k in per_image) + "\n" for j in range(len(scored)))
            )  # fmt: skip
            done.write_text(json.dumps({"summary": row, "per_image_auc": per_image}, indent=2))
    return out


def apply_speed(run_dir: Path, n_images: int) -> dict:
    """Seconds of ``RunOutputs.apply`` and of ``extract`` (same layers, same images) side by side."""
    from dpmodels.activations import extract
    from dpmodels.analysis import RunOutputs
    from dpmodels.analysis.apply import run_network

    run = RunOutputs(run_dir)
    model, _ = run_network(run)
    images = _textures(n_images, seed=101)
    extract(model, images.images[:2], run.layers, progress=False)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    extract(model, images, run.layers, progress=False)
    t_extract, c_extract = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    applied = run.apply(images, model=model)
    t_apply, c_apply = time.perf_counter() - t0, time.process_time() - c0
    return {
        "images": n_images,
        "extract_seconds": t_extract,
        "apply_seconds": t_apply,
        "extract_images_per_s": n_images / t_extract,
        "apply_images_per_s": n_images / t_apply,
        "ratio": t_apply / t_extract,
        # CPU seconds of this process: on a shared machine the wall-clock ratio also measures the
        # other jobs' load, which may differ between the two phases
        "extract_cpu_seconds": c_extract,
        "apply_cpu_seconds": c_apply,
        "cpu_ratio": c_apply / c_extract,
        "apply_parts_seconds": {k: v for k, v in applied.timings.items() if k.endswith("_seconds")},
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }


def _textures(n: int, seed: int):
    """``n`` new 224 px real-texture mosaics (the sources of ``data=real_textures``, another seed)."""
    from dpmodels.data import load_dataset

    names = ["brick", "grass", "gravel", "immunohistochemistry"]
    return load_dataset("skimage_mosaics", names=names, num_images=n, size=224, seed=seed)


def _markdown(results: dict) -> str:
    lines = ["| run | layer | images | concepts | AUC occlusion | AUC Sobol | AUC area | AUC random | occl. < random | occl. < area | rule |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run, layers in results["deletion"].items():
        for layer, r in layers.items():
            lines.append(
                f"| {run} | {layer} | {r['images']} | {r['mean_concepts']:.1f} | {r.get('occlusion', float('nan')):.3f} | "
                f"{r.get('sobol', float('nan')):.3f} | {r.get('area', float('nan')):.3f} | {r['random']:.3f} | "
                f"{r['occlusion_beats_random']:.2f} | {r['occlusion_beats_area']:.2f} | "
                f"{'met' if r.get('occlusion_below_random_and_area') else 'not met'} |"
            )
    s = results.get("apply_speed")
    if s:
        lines.append(
            f"\nApply: {s['images']} images at 224 px in {s['apply_seconds']:.1f} s ({s['apply_images_per_s']:.2f} img/s) "
            f"against extraction's {s['extract_seconds']:.1f} s ({s['extract_images_per_s']:.2f} img/s): "
            f"ratio {s['ratio']:.2f} ({s['threads']} threads); CPU time ratio {s['cpu_ratio']:.2f} "
            f"(apply's parts: {', '.join(f'{k} {v:.1f}' for k, v in s['apply_parts_seconds'].items())}); "
            f"load average at the end {', '.join(f'{v:.1f}' for v in s['load_average'])}."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/bench/deletion")
    p.add_argument("--ref-images", type=int, default=16)
    p.add_argument("--images", type=int, default=6, help="images scored per run (deletion test)")
    p.add_argument("--sobol-masks", type=int, default=4)
    p.add_argument("--random-orders", type=int, default=3)
    p.add_argument("--apply-images", type=int, default=100)
    p.add_argument("--fit-points", type=int, default=5000)
    p.add_argument("--layers", default=None, help="layers.names of the reference runs, e.g. [stage3,stage5]")
    p.add_argument("--map-draws", type=int, default=16)
    p.add_argument("--score-layers", default=None, help="comma-separated layers to score (default: all)")
    p.add_argument("--skip-histology", action="store_true")
    p.add_argument("--skip-textures", action="store_true", help="no deletion test on the textures run")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [
        "viz=none",
        f"infer.fit_points={args.fit_points}",
        "infer.heldout_points=2000",
        f"infer.map_draws={args.map_draws}",
        "infer.num_draws=8",
        "infer.progress=false",
    ]
    if args.layers:
        common.append(f"layers.names={args.layers}")
    score = args.score_layers.split(",") if args.score_layers else None
    results: dict = {"settings": vars(args), "deletion": {}}
    textures = None
    if not args.skip_textures or args.apply_images > 0:
        textures = reference_run(
            out, "real_textures", ["data=real_textures", f"data.num_images={args.ref_images}", *common]
        )
    if not args.skip_textures:
        results["deletion"]["real_textures"] = deletion_study(
            textures,
            _textures(args.images, seed=7),  # new mosaics, not the run's images
            max_images=args.images,
            sobol_masks=args.sobol_masks,
            random_orders=args.random_orders,
            layers=score,
            save_dir=out / "layers" / "real_textures",
        )
    if not args.skip_histology:
        ihc = reference_run(out, "ihc", ["data=ihc", *common])
        from dpmodels.analysis import RunOutputs

        results["deletion"]["ihc"] = deletion_study(
            ihc, RunOutputs(ihc).images(), max_images=1, sobol_masks=args.sobol_masks,
            random_orders=args.random_orders, layers=score, save_dir=out / "layers" / "ihc",
        )  # fmt: skip
    if args.apply_images > 0:
        results["apply_speed"] = apply_speed(textures, args.apply_images)
    tag = {(False, False): "", (True, False): "_ihc", (False, True): "_textures", (True, True): "_apply"}[
        (args.skip_textures, args.skip_histology)
    ]
    (out / f"deletion{tag}.json").write_text(json.dumps(results, indent=2, default=str))
    md = _markdown(results)
    (out / f"deletion{tag}.md").write_text(md)
    print(md)
    return results


if __name__ == "__main__":
    main()
