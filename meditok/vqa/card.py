"""Model card (README.md) of a VQA adapter: what it needs, how it was trained, how it scores."""
from __future__ import annotations

import json
from typing import Any

from meditok.vqa.config import VQAModelConfig


def _pct(v: Any) -> str:
    return f"{100 * v:.2f} %" if isinstance(v, (int, float)) else "–"


def model_card(config: VQAModelConfig) -> str:
    """The README written next to a saved adapter (provenance from ``config.meta``)."""
    meta = config.meta
    lm = meta.get("lm_identity", {})
    tr = meta.get("training", {})
    name = meta.get("name") or tr.get("name") or "meditok-vqa adapter"
    what = ("A LLaVA-style adapter: frozen MedITok vision tower → 2-layer GELU MLP projector → "
            f"{'LoRA-adapted ' if config.lora.r else ''}causal LM. Only the "
            f"{'projector and LoRA weights are' if config.lora.r else 'projector is'} stored here; the "
            "tokenizer and the LM are loaded by name.")
    size = f"{config.image_size} px" if config.image_size else "the tokenizer's own size"
    decoding = f"visual contrastive, alpha {config.contrast.alpha:g}" if config.contrast.active else "greedy"
    install = f" — install: `{lm['install']}` ({lm.get('licence')})" if lm.get("install") else ""
    lines = ["---", "library_name: meditok", "tags: [medical-imaging, vqa, llava, lora]", "---", "",
             f"# {name}", "", what, "",
             (f"- **tokenizer**: `{config.tokenizer}` (features: `{config.features}`; images read at "
              f"{size}, {config.merge}x{config.merge} grid positions per image token; decoding: {decoding})"),
             (f"- **language model**: `{config.lm}` ({lm.get('architecture', '?')}, hidden "
             f"{lm.get('hidden_size', '?')}){install}"),
             (f"- **image input**: {'yes' if config.use_image else 'no (text-only baseline)'}; LoRA "
             f"r={config.lora.r}, alpha={config.lora.alpha} on {', '.join(config.lora.target_modules)}"),
             "", "```bash", f'meditok vqa ask IMAGE "Is there a fracture?" --model {meta.get("name", "DIR")}',
             "```", ""]
    ev = meta.get("evaluation")
    if ev:
        lines += ["## Evaluation", "",
                  (f"{ev.get('split')}: closed-ended accuracy {_pct(ev.get('closed_accuracy'))}, open-ended "
                  f"recall {_pct(ev.get('open_recall'))}, open exact match {_pct(ev.get('open_accuracy'))} "
                  f"(answering took {ev.get('eval_wall_s')} s, load {ev.get('eval_load')}). Every VQA-RAD "
                  "test image is also a training image (a property of the dataset); see "
                  "benchmarks/results/vqa/vqa_rad.md for the baselines (majority answer, text-only)."), ""]
    for key, title in (("stage_a", "Stage A (projector on image–caption pairs)"),
                       ("training", f"Stage {tr.get('stage', '?')}")):
        st = meta.get(key)
        if not st:
            continue
        lines += [f"## {title}", "",
                  (f"- {st.get('steps')} steps ({st.get('epochs')} epochs), wall {st.get('wall_time_s')} s, "
                  f"load {st.get('load_average')}"),
                  f"- data: `{json.dumps(st.get('data', {}), default=str)[:700]}`"]
        sel = st.get("selection")
        if sel:
            curve = ", ".join(f"{p['epochs']}: {_pct(p['closed_accuracy'])}" for p in sel.get("curve", []))
            lines.append(f"- epoch chosen on the validation split ({sel.get('val_questions')} training questions "
                         f"held out, fraction {sel.get('val_fraction')}, seed {sel.get('val_seed')}): val closed "
                         f"accuracy by epoch {curve} → step {sel.get('selected_step')} of "
                         f"{st.get('trained_steps')} ({sel.get('rule')})")
        if st.get("command"):
            lines.append(f"- command: `{st['command']}` on {st.get('machine')} ({st.get('device')}, "
                         f"{st.get('precision')})")
        lines.append("")
    for key in ("reproduce", "notes"):
        if key in meta:
            lines.append(f"- **{key}**: {meta[key]}")
    return "\n".join(lines) + "\n"
