"""``meditok synth eval``: paper Table 3 per condition — gFID, diversity, conditional accuracy —
for one or more generators next to the real-vs-real floor (metric conventions:
:mod:`meditok.metrics.generation`).

Real images come from a corpus manifest (every split), as model inputs at the tokenizer's
size. For each condition the real images are shuffled once (seeded) into a *floor set* B of
``N = min(n, half the images)`` images and a *reference set* A of the next ``ref_cap``
images. Then, all at the same N:

* gFID = FID(A, the first N generated images), floor = FID(A, B);
* diversity over all ``n`` generated images (and over B, for reference);
* conditional accuracy: a linear classifier on the Inception features of A *after a round
  trip through the generator's tokenizer* (the domain generated images live in; modalities, and
  separately the classes of each class-conditioned dataset), tested on B after the same round
  trip (the ceiling a perfect generator reaches) and applied to the generated images. The
  classifier on the original images of A is kept beside it (``cond_acc_raw``; its accuracy on
  the original B is the floor row's).

``Avg.`` is the mean over modality conditions (the paper's overall numbers); ``All`` is one FID
over the pooled sets (reference ∪A against ∪generated, and against ∪B for the floor, which have
the same per-condition counts). Per-condition results of a generator are cached in
``OUT/cache/`` so an interrupted evaluation resumes; real features can be cached across runs
(``features_cache``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from meditok.data.benchmarks import PAPER_MODALITY_LABELS, Sample, load_batch, samples_from_manifest
from meditok.data.preprocess import to_uint8, to_unit
from meditok.errors import InvalidInputError, MedITokError
from meditok.metrics.generation import (GENERATION_CONVENTIONS, conditional_accuracy, describe_msssim,
                                        diversity, fid_from_features, inception_pool3, msssim_settings,
                                        train_condition_classifier)
from meditok.synthesis.model import SAMPLER, Synthesizer
from meditok.synthesis.sample import condition_seed, image_grid, safe_name, save_png
from meditok.utils.results import batches, markdown_table, write_results

RESULT_NAME = "synthesis_eval"


@dataclass
class EvalConfig:
    n: int = 100
    ref_cap: int = 400
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"
    features_cache: str | None = None
    grid_n: int = 16


# ----------------------------------------------------------------------------- real sets
def real_sets(manifest: str | Path, synth: Synthesizer, cfg: EvalConfig) -> dict[str, dict[str, list[Sample]]]:
    """Per condition of ``synth``: the floor set B and the reference set A (see module doc)."""
    samples = samples_from_manifest(manifest)
    conds = synth.conditions
    out = {}
    for ci, name in enumerate(conds.names):
        if name in conds.classes:
            ds, lab = conds.classes[name]
            pool = [s for s in samples if (s.dataset or "").lower() == ds and s.label is not None
                    and int(s.label) == lab]
        else:
            pool = [s for s in samples if s.modality == name]
        if len(pool) < 4:
            raise InvalidInputError(f"{manifest}: only {len(pool)} real images for condition {name!r}")
        order = np.random.default_rng([cfg.seed, ci]).permutation(len(pool))
        n_floor = min(cfg.n, len(pool) // 2)
        out[name] = {"floor": [pool[i] for i in order[:n_floor]],
                     "ref": [pool[i] for i in order[n_floor:n_floor + cfg.ref_cap]]}
    return out


class FeatureStore:
    """Inception features of real images by path, optionally cached in a file; with ``through``
    (a tokenizer) the features of their reconstructions, cached beside under its identity."""

    def __init__(self, path: str | Path | None, preprocess, device: str, through=None, identity: Any = None):
        self.pre, self.device, self.through = preprocess, device, through
        self.key = hashlib.sha256(json.dumps([preprocess.to_dict(), identity], sort_keys=True,
                                             default=str).encode()).hexdigest()[:16]
        self.path = Path(path) if path else None
        if self.path and through is not None:
            self.path = self.path.with_name(f"{self.path.stem}.recon-{self.key}{self.path.suffix}")
        self.feats: dict[str, torch.Tensor] = {}
        if self.path and self.path.is_file():
            data = torch.load(self.path, weights_only=True)
            if data.get("key") == self.key:
                self.feats = dict(zip(data["paths"], data["features"]))

    def get(self, samples: Sequence[Sample], progress: bool = False) -> tuple[torch.Tensor, list[Sample]]:
        todo = [s for s in samples if s.path not in self.feats]
        from tqdm.auto import tqdm

        for chunk in tqdm(list(batches(todo, 32)), desc="real features", disable=not progress or not todo):
            x, kept, _ = load_batch(chunk, self.pre)
            if x is not None:
                if self.through is not None:
                    with torch.no_grad():
                        x = self.through.reconstruct(x.to(self.device)).cpu()
                for s, f in zip(kept, inception_pool3(to_uint8(x), self.device).float()):
                    self.feats[s.path] = f
        if todo and self.path:
            from meditok.utils.io import atomic_path

            with atomic_path(self.path) as tmp:
                paths = sorted(self.feats)
                torch.save({"key": self.key, "paths": paths,
                            "features": torch.stack([self.feats[p] for p in paths])}, tmp)
        kept = [s for s in samples if s.path in self.feats]
        feats = torch.stack([self.feats[s.path] for s in kept]) if kept else torch.zeros(0, 2048)
        return feats.double(), kept


# ----------------------------------------------------------------------------- one generator
def generate_condition(synth: Synthesizer, name: str, cfg: EvalConfig, cache_dir: Path, label: str,
                       settings: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Sample ``cfg.n`` images for one condition → features, diversity, grid (cached)."""
    key = hashlib.sha256(json.dumps([synth.source, name, cfg.n, cfg.seed, cfg.batch_size, settings, SAMPLER],
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir / f"{safe_name(label)}_{safe_name(name)}_{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    import time

    cid = synth.conditions.id(name)
    t0 = time.perf_counter()
    tokens = synth.sample_tokens(cid, cfg.n, seed=condition_seed(cfg.seed, cid), batch_size=cfg.batch_size,
                                 progress=progress, **settings)
    t_sample = time.perf_counter() - t0
    images = synth.decode(tokens, cfg.batch_size)
    record = {"tokens": tokens.to(torch.int16 if synth.gpt.config.codebook_size < 32768 else torch.int64),
              "features": inception_pool3(to_uint8(images), cfg.device).float(),
              "diversity": diversity(to_unit(images)),
              "grid": torch.from_numpy(image_grid(images[:cfg.grid_n])),
              "sample_seconds": t_sample}
    from meditok.utils.io import atomic_path

    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return record


def _classifiers(conds, feats_ref: dict[str, torch.Tensor], seed: int) -> dict[str, Any]:
    """One classifier over the modality conditions, one per class-conditioned dataset."""
    groups: dict[str, list[str]] = {"modality": [c for c in conds.names if c not in conds.classes]}
    for c, (ds, _) in conds.classes.items():
        groups.setdefault(ds, []).append(c)
    out = {}
    for group, names in groups.items():
        if len(names) < 2:
            continue
        x = torch.cat([feats_ref[c] for c in names])
        y = np.concatenate([np.full(len(feats_ref[c]), i) for i, c in enumerate(names)])
        out[group] = (names, train_condition_classifier(x, y, len(names), seed=seed))
    return out


def evaluate(manifest: str | Path, synths: Sequence[Synthesizer], labels: Sequence[str], out_dir: Path,
             cfg: EvalConfig, settings: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    first = synths[0]
    for s in synths[1:]:
        if s.conditions.names != first.conditions.names:
            raise InvalidInputError(f"{s.source} models other conditions than {first.source}: "
                                    f"{s.conditions.names} vs {first.conditions.names}")
    conds = first.conditions
    sets = real_sets(manifest, first, cfg)
    store = FeatureStore(cfg.features_cache, first.tokenizer.config.preprocess, cfg.device)
    ref, floor, floor_imgs = {}, {}, {}
    for name, parts in sets.items():
        ref[name], _ = store.get(parts["ref"], progress)
        floor[name], kept = store.get(parts["floor"], progress)
        x, _, _ = load_batch(kept, first.tokenizer.config.preprocess)
        floor_imgs[name] = x
        save_png(image_grid(x[:cfg.grid_n]), out_dir / f"grid_real_{safe_name(name)}.png")
    classifiers = _classifiers(conds, ref, cfg.seed)
    modalities = [c for c in conds.names if c not in conds.classes]
    table: dict[str, Any] = {"real-vs-real floor": {}}
    for name in conds.names:
        table["real-vs-real floor"][name] = {
            "n": len(floor[name]), "n_ref": len(ref[name]),
            "gfid": fid_from_features(ref[name], floor[name]),
            "diversity": diversity(to_unit(floor_imgs[name])),
            "cond_acc": _accuracy(classifiers, name, floor[name].float())}
    gen_feats: dict[str, dict[str, torch.Tensor]] = {}
    for synth, label in zip(synths, labels):
        recon, ceiling = _round_trip_classifiers(synth, sets, cfg, progress)
        rows, gen_feats[label] = {}, {}
        for name in conds.names:
            rec = generate_condition(synth, name, cfg, out_dir / "cache", label, settings, progress)
            n_m = len(floor[name])
            feats = rec["features"].double()
            gen_feats[label][name] = feats[:n_m]
            rows[name] = {"n": n_m, "n_generated": int(feats.shape[0]),
                          "gfid": fid_from_features(ref[name], feats[:n_m]),
                          "gfid_all_generated": fid_from_features(ref[name], feats),
                          "diversity": float(rec["diversity"]),
                          "cond_acc": _accuracy(recon, name, feats),
                          "cond_acc_ceiling": ceiling.get(name),
                          "cond_acc_raw": _accuracy(classifiers, name, feats),
                          "images_per_s": float(feats.shape[0] / max(rec["sample_seconds"], 1e-9))}
            save_png(rec["grid"].numpy(), out_dir / f"grid_{safe_name(label)}_{safe_name(name)}.png")
        table[label] = rows
    # summaries: mean over modality conditions, and pooled FID
    pooled_ref = torch.cat([ref[m] for m in modalities])
    summary = {}
    for label, rows in table.items():
        pooled = torch.cat([floor[m] if label == "real-vs-real floor" else gen_feats[label][m]
                            for m in modalities])
        vals = [rows[m] for m in modalities]
        summary[label] = {
            "gfid_avg": float(np.mean([r["gfid"] for r in vals])),
            "gfid_all": fid_from_features(pooled_ref, pooled),
            "diversity_avg": float(np.mean([r["diversity"] for r in vals])),
            "class_acc_avg": _mean_or_none([rows[c]["cond_acc"] for c in conds.classes])}
        for key in ("cond_acc", "cond_acc_ceiling", "cond_acc_raw"):
            summary[label][f"{key}_avg"] = (float(np.mean([r[key] for r in vals]))
                                            if all(r.get(key) is not None for r in vals) else None)
    ms = msssim_settings(int(first.tokenizer.config.preprocess.image_size))
    return {"conditions": list(conds.names), "modalities": modalities, "table": table,
            "summary": summary, "generators": {lab: s.source for lab, s in zip(labels, synths)},
            "tokenizers": {lab: s.needs for lab, s in zip(labels, synths)},
            "excluded_conditions": conds.excluded, "config": asdict(cfg),
            "sampling": {**first.sampling_defaults().to_dict(), **settings, "sampler": SAMPLER},
            "msssim": {**ms, "text": describe_msssim(ms)},
            "conventions": dict(GENERATION_CONVENTIONS), "manifest": str(manifest)}


def _accuracy(classifiers: dict[str, Any], name: str, feats: torch.Tensor) -> float | None:
    for names, clf in classifiers.values():
        if name in names:
            return conditional_accuracy(clf, feats, names.index(name))
    return None


def _round_trip_classifiers(synth: Synthesizer, sets: dict[str, dict[str, list[Sample]]], cfg: EvalConfig,
                            progress: bool) -> tuple[dict[str, Any], dict[str, float | None]]:
    """Classifiers on the reference images after a round trip through ``synth``'s tokenizer,
    and their accuracy on the floor images after the same round trip (the ceiling)."""
    store = FeatureStore(cfg.features_cache, synth.tokenizer.config.preprocess, cfg.device,
                         through=synth.tokenizer, identity=synth.needs)
    ref = {name: store.get(parts["ref"], progress)[0] for name, parts in sets.items()}
    floor = {name: store.get(parts["floor"], progress)[0] for name, parts in sets.items()}
    classifiers = _classifiers(synth.conditions, ref, cfg.seed)
    return classifiers, {name: _accuracy(classifiers, name, floor[name].float()) for name in sets}


def _mean_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# ----------------------------------------------------------------------------- report
def to_markdown(result: dict[str, Any]) -> str:
    mods, conds = result["modalities"], result["conditions"]
    head = ["Model"] + [PAPER_MODALITY_LABELS.get(m, m) for m in mods]
    parts = ["# Modality-conditioned synthesis (paper Table 3, per modality)\n"]
    for key, title, digits in (("gfid", "gFID (↓)", 2), ("diversity", "Diversity (↑)", 4)):
        rows = []
        for label, r in result["table"].items():
            s = result["summary"][label]
            extra = [s["gfid_avg"], s["gfid_all"]] if key == "gfid" else [s["diversity_avg"]]
            rows.append([label] + [r[m][key] for m in mods] + extra)
        cols = head + (["Avg.", "All"] if key == "gfid" else ["Avg."])
        parts.append(f"\n## {title}\n\n" + markdown_table(cols, rows, digits))
    gens = [lab for lab in result["table"] if lab != "real-vs-real floor"]
    rows = []
    for label in gens:
        r, s = result["table"][label], result["summary"][label]
        rows.append([f"real floor set through the tokenizer of {label} (ceiling)"]
                    + [r[m].get("cond_acc_ceiling") for m in mods] + [s.get("cond_acc_ceiling_avg")])
        rows.append([label] + [r[m]["cond_acc"] for m in mods] + [s["cond_acc_avg"]])
    parts.append("\n## Conditional accuracy (↑)\n\nClassifier trained on the reference images after a round "
                 "trip through the generator's tokenizer (generated images are decoder outputs).\n\n"
                 + markdown_table(head + ["Avg."], rows, 3))
    floor_row = result["table"]["real-vs-real floor"]
    rows = [["real floor set (original images)"] + [floor_row[m]["cond_acc"] for m in mods]
            + [result["summary"]["real-vs-real floor"]["cond_acc_avg"]]]
    rows += [[label] + [result["table"][label][m].get("cond_acc_raw") for m in mods]
             + [result["summary"][label].get("cond_acc_raw_avg")] for label in gens]
    parts.append("\nThe same with the classifier trained on the original reference images (it also judges the "
                 "tokenizer's artefacts):\n\n" + markdown_table(head + ["Avg."], rows, 3))
    floor = result["table"]["real-vs-real floor"]
    parts.append("\nN per modality (generated = real floor set): "
                 + ", ".join(f"{m} {floor[m]['n']} (ref {floor[m]['n_ref']})" for m in mods) + "\n")
    extra = [c for c in conds if c not in mods]
    if extra:
        rows = [[label] + [f"{r[c]['gfid']:.2f} / {r[c]['diversity']:.4f} / "
                           f"{'–' if r[c]['cond_acc'] is None else format(r[c]['cond_acc'], '.3f')}"
                           for c in extra] for label, r in result["table"].items()]
        parts.append("\n## Class conditions (gFID / diversity / class accuracy)\n\n"
                     + markdown_table(["Model"] + extra, rows))
    if result["excluded_conditions"]:
        parts.append("\nNot modelled: " + "; ".join(f"{k}: {v}" for k, v in result["excluded_conditions"].items()) + "\n")
    parts.append(f"\n* sampling: {result['sampling']}\n* diversity: {result['msssim']['text']}\n")
    parts += [f"* **{k}**: {v}\n" for k, v in result["conventions"].items()]
    return "".join(parts)


def run_evaluation(manifest: str | Path, generators: Sequence[str], out_dir: str | Path, cfg: EvalConfig,
                   labels: Sequence[str] = (), overwrite: bool = False, progress: bool = True,
                   settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the generators, evaluate, write ``synthesis_eval.{json,md}`` and the grids."""
    out = Path(out_dir)
    if (out / f"{RESULT_NAME}.json").exists() and not overwrite:
        raise MedITokError(f"{out / (RESULT_NAME + '.json')} already exists; pass --overwrite")
    labels = list(labels) or [Path(str(g)).name for g in generators]
    if len(labels) != len(generators) or len(set(labels)) != len(labels):
        raise InvalidInputError("give one distinct --label per --generator")
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    out.mkdir(parents=True, exist_ok=True)
    synths = [Synthesizer.load(g, device=cfg.device) for g in generators]
    result = evaluate(manifest, synths, labels, out, cfg, settings, progress)
    result["markdown"] = to_markdown(result)
    write_results(out, RESULT_NAME, {k: v for k, v in result.items() if k != "markdown"}, result["markdown"])
    return result
