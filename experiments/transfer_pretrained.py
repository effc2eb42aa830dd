"""``python -m experiments.transfer net=efficientnet_lite0``: which stages of an ImageNet network
transfer to which target, and do label-free DPGMM quantities predict it (protocol P18 in
experiments/bench/PROTOCOLS.md)? Writes transfer_table.csv (stage x target: measured transfer and
predictors), measured_per_seed.csv, correlations.csv, metrics.json, summary.md and
figures/predictor_vs_transfer.png into the run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from dpmodels.activations import conv_layers
from dpmodels.analysis import obtain_network
from dpmodels.io import atomic_write_json, atomic_write_text
from dpmodels.transfer import pretrained as pt
from dpmodels.viz import save_figure

from .common import mark_done, mark_started

log = logging.getLogger("dpmodels.transfer")


def _check(cfg: DictConfig) -> None:
    p = cfg.pretrained
    unknown = [t for t in p.targets if t not in pt.TARGETS]
    if unknown or not p.targets:
        raise ValueError(
            f"pretrained.targets {list(p.targets)}: unknown {unknown}; choose from {sorted(pt.TARGETS)}."
        )
    if p.shots < 2 or p.test_per_class < 1 or len(p.seeds) < 2 or p.size < 32:
        raise ValueError(
            "pretrained needs shots >= 2, test_per_class >= 1, at least 2 seeds (for the seed SD) and size >= 32; "
            f"got shots={p.shots}, test_per_class={p.test_per_class}, seeds={list(p.seeds)}, size={p.size}."
        )


def run_pretrained(cfg: DictConfig, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    _check(cfg)
    p = cfg.pretrained
    net = OmegaConf.to_container(cfg.net, resolve=True)
    if net["train"] or net["name"] == "small_cnn":
        raise ValueError(
            f"net={net['name']} with train={net['train']}: the pretrained transfer study takes a network as loaded "
            "(net=efficientnet_lite0 or its _random control); the small CNN has its own scenarios (omit net=)."
        )
    name = net.pop("name")
    net.pop("train")
    model, net_info = obtain_network(name, train=False, device=cfg.device, **net)
    layers = list(p.layers) if p.layers else conv_layers(model, (3, p.size, p.size))
    staging = mark_started(out_dir, cfg)
    log.info("%s (weights %s) stages %s; targets %s", name, net_info["weights"], layers, list(p.targets))
    per_seed, predictors = [], []
    source = pt.bundled_crops(
        pt.SOURCE_PHOTOS, max(p.source_images // len(pt.SOURCE_PHOTOS), 1), p.size, seed=7
    )
    for target_name in p.targets:
        target = pt.Target(target_name, pt.TARGETS[target_name])
        t1 = time.perf_counter()
        per_seed.append(
            pt.measured_transfer(
                model,
                layers,
                target,
                size=p.size,
                shots=p.shots,
                test_per_class=p.test_per_class,
                seeds=list(p.seeds),
            )
        )
        pool = target.loader(p.pool_per_class, p.size, 100)
        rows = pt.stage_predictors(
            model, layers, pool, source, pca_dim=p.pca_dim, fit_points=p.fit_points,
            heldout_points=p.heldout_points, seed=cfg.seed,
        )  # fmt: skip
        predictors.append(rows.assign(target=target_name))
        log.info("target %s: %.0f s", target_name, time.perf_counter() - t1)
    seeds = pd.concat(per_seed, ignore_index=True)
    measured = pt.summarise_transfer(seeds)
    table = measured.merge(pd.concat(predictors, ignore_index=True), on=["target", "layer"])
    check = pt.instrument_check(measured)
    corr = pt.predictor_correlations(table, n_boot=p.n_boot, seed=cfg.seed)
    verdict = _verdict(corr, check)
    seeds.to_csv(staging / "measured_per_seed.csv", index=False)
    table.to_csv(staging / "transfer_table.csv", index=False)
    pd.DataFrame([{"predictor": k, "rho": v["rho"], "ci_low": v["ci"][0], "ci_high": v["ci"][1], "n": v["n"]}
                  for k, v in corr.items()]).to_csv(staging / "correlations.csv", index=False)  # fmt: skip
    (staging / "figures").mkdir(exist_ok=True)
    save_figure(_figure(table, corr, verdict["best"]), staging / "figures" / "predictor_vs_transfer.png")
    metrics = {
        "protocol": "P18 (experiments/bench/PROTOCOLS.md)",
        "network": net_info,
        "layers": layers,
        "targets": list(p.targets),
        "correlations": corr,
        "instrument_check": check,
        "verdict": verdict,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "config": OmegaConf.to_container(cfg),
    }
    atomic_write_json(staging / "metrics.json", metrics)
    atomic_write_text(
        staging / "summary.md", _summary(table, corr, check, verdict, f"{name} ({net_info['weights']})")
    )
    mark_done(out_dir, cfg, {"targets": list(p.targets)})
    log.info("results in %s (%.0f s): %s", out_dir, metrics["wall_seconds"], verdict["text"])
    return metrics


def _verdict(corr: dict, check: dict) -> dict:
    label_free = {k: v for k, v in corr.items() if k != "cka"}
    best = max(
        label_free,
        key=lambda k: abs(label_free[k]["rho"]) if label_free[k]["rho"] == label_free[k]["rho"] else -1,
    )
    primary = corr.get("k_hat", {"rho": float("nan")})["rho"]
    cka = corr.get("cka", {"rho": float("nan")})["rho"]
    met = bool(abs(primary) >= 0.7 and abs(primary) > abs(cka) and check["passed"])
    text = (
        f"primary predictor k_hat: rho = {primary:.2f} (CKA {cka:.2f}); goal |rho| >= 0.7 and above CKA's: "
        f"{'met' if met else 'not met'}; best label-free predictor {best} (rho = {corr[best]['rho']:.2f}, chosen "
        f"on the same pairs); instrument check {'passed' if check['passed'] else 'FAILED'}"
    )
    return {
        "primary": "k_hat",
        "primary_rho": primary,
        "cka_rho": cka,
        "best": best,
        "met": met,
        "text": text,
    }


def _figure(table: pd.DataFrame, corr: dict, best: str):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, (best, "cka"), strict=True):
        for target, frame in table.groupby("target", sort=False):
            ax.errorbar(
                frame[name], frame["accuracy"], yerr=frame["accuracy_sd"], fmt="o", label=target, capsize=2
            )
            for _, row in frame.iterrows():
                ax.annotate(row["layer"], (row[name], row["accuracy"]), fontsize=6, alpha=0.7)
        c = corr[name]
        ax.set_title(f"{name}: Spearman ρ = {c['rho']:.2f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]", fontsize=9)
        ax.set_xlabel(name)
        ax.set_ylabel("few-shot linear-probe accuracy (mean ± SD over seeds)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _summary(table: pd.DataFrame, corr: dict, check: dict, verdict: dict, net: str) -> str:
    cols = ["target", "layer", "accuracy", "accuracy_sd", *[c for c in pt.PREDICTORS if c in table]]
    lines = [
        f"# Which stage of {net} transfers? (protocol P18)",
        "",
        verdict["text"] + ".",
        "",
        "## Spearman rho against measured transfer (all stage x target pairs)",
        "",
        "| predictor | rho | 95 % CI |",
        "|---|---|---|",
        *[f"| {k} | {v['rho']:.3f} | [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}] |" for k, v in corr.items()],
        "",
        "## Instrument check (range over stages vs seed SD)",
        "",
        *[f"- {k}: range {v['range']:.3f}, seed SD {v['seed_sd']:.3f}, "
          + ("saturated (every stage at the same accuracy in every seed)" if v["saturated"] else
             f"ratio {v['ratio']:.1f}" if v["ratio"] is not None else "no seed SD") for k, v in check["targets"].items()],
        "",
        "## Table",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *["| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |" for _, r in table.iterrows()],
        "",
        "![predictor vs transfer](figures/predictor_vs_transfer.png)",
        "",
    ]  # fmt: skip
    return "\n".join(lines)
