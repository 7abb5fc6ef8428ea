"""The table of benchmarks/gpu_check.py: one row per check, rendered from its JSON."""

from __future__ import annotations

import math


from gpu_fixtures import GiB, gib  # noqa: F401

REFERENCE_S = 4959.0  #: 20,000 examples of the seed setting on an RTX 2070
TARGET_S = 120.0  #: ... and the target on one H200
PROJECT_EXAMPLES = 20_000


def first_metric(r: dict) -> tuple[str | None, float | None]:
    final = r.get("final") or {}
    metrics = final.get("metrics") or {}
    for split in metrics.values():
        key = r.get("primary_metric")
        if key in split:
            return key, split[key]
    return None, None


def small_rank(variant: str) -> int | None:
    """8 for variants whose default rank is above 16 (QLoRA, MiSS: r = 64), which the small check
    models' narrowest layers (the KV projections) cannot hold; else the variant's default."""
    import dataclasses

    import lorabench

    default = {f.name: f.default for f in dataclasses.fields(lorabench.adapters.get(variant).Options)}.get("r")
    return 8 if isinstance(default, int) and default > 16 else None


def variant_row(r: dict) -> dict:
    """One variant's row from its lorabench result."""
    key, value = first_metric(r)
    loss = r["train_loss"][-1][1] if r.get("train_loss") else None
    row = {"status": "ok" if r["status"] == "ok" and r["steps"]["done"] >= 1 and r.get("final") else "error",
           "run_status": r["status"], "steps": r["steps"]["done"], "train_loss": loss, key or "metric": value,
           "trainable": r["params"]["trainable"], "precision": r["env"].get("precision"),
           "peak_allocated_bytes": r["memory"].get("peak_allocated_bytes")}
    if r.get("error"):
        row["error"] = r["error"]
        if r.get("traceback"):
            row["traceback"] = r["traceback"]
    elif row["status"] != "ok":
        row["error"] = f"run status {r['status']}, {r['steps']['done']} step(s), final {r.get('final')}"
    return row


def seed_figures(r: dict, batch: int, cuda: bool) -> dict:
    """Planner, memory and time figures of a seed-setting run.

    Step time: between the first and the last evaluation, from each evaluation's ``train_s``
    (the training clock, evaluation excluded), so the first steps' CUDA warm-up is left out.
    """
    mem, tm = r["memory"], r["time"]
    hist = [h for h in r.get("history", []) if h.get("train_s") is not None]
    step_s = None
    if len(hist) >= 2 and hist[-1]["step"] > hist[0]["step"]:
        step_s = (hist[-1]["train_s"] - hist[0]["train_s"]) / (hist[-1]["step"] - hist[0]["step"])
    done = r["steps"]["done"]
    out = {
        "status": "ok" if r["status"] == "ok" else "error",
        "run_status": r["status"], "run_error": r.get("error"), "steps": done,
        "micro_batch_size": mem.get("micro_batch_size"), "grad_accum_steps": mem.get("grad_accum_steps"),
        "oom_retries": mem.get("oom_retries"),
        "peak_allocated_bytes": mem.get("peak_allocated_bytes"), "peak_reserved_bytes": mem.get("peak_reserved_bytes"),
        "budget_bytes": mem.get("budget_bytes"), "peak_rss_bytes": mem.get("peak_rss_bytes"),
        "step_s": step_s, "step_s_incl_warmup": tm["train_s"] / done if done else None,
        "examples_per_s": tm.get("examples_per_s"), "tokens_per_example": (tm.get("tokens", 0) / tm["examples"])
        if tm.get("examples") else None,
        "projected_s": step_s * math.ceil(PROJECT_EXAMPLES / batch) if step_s is not None else None,
        "projected_examples": PROJECT_EXAMPLES, "reference_rtx2070_s": REFERENCE_S, "target_s": TARGET_S,
        "projection_note": f"step_s x ceil({PROJECT_EXAMPLES} / {batch}) optimizer steps: training only "
                           "(no model loading, no evaluation)",
        "prepare_s": tm.get("prepare_s"), "eval_s": tm.get("eval_s"), "trainable": r["params"]["trainable"],
    }
    if cuda:
        peak, budget = out["peak_reserved_bytes"], out["budget_bytes"]
        out["under_budget"] = None if peak is None or budget is None else peak <= budget
    else:
        out["under_budget"] = None
        out["memory_note"] = "CPU: no CUDA allocator, so no CUDA peaks; the budget is recorded but not enforced"
    if r.get("error"):
        out["error"] = r["error"]
        out["traceback"] = r.get("traceback")
    return out


# ---- the table -------------------------------------------------------------------------------
def _ms(x):
    return "n/a" if x is None else f"{1e3 * x:.0f} ms"


def _figures(name: str, s: dict) -> str:
    if s["status"] in ("error", "skipped") and name != "variants":
        return (s.get("error") or s.get("reason") or "")[:160]
    if name == "variants":
        c = s["counts"]
        return f"{c['ok']} ok, {c['error']} error, {c['skipped']} skipped of {len(s['rows'])}"
    if name.startswith("seed000"):
        budget = "" if s.get("under_budget") is None else (" <= " if s["under_budget"] else " > ")
        budget = f"{budget}budget {gib(s['budget_bytes'])}" if budget else f"(budget {gib(s['budget_bytes'])})"
        proj = "n/a" if s.get("projected_s") is None else f"{s['projected_s']:.0f} s"
        text = (f"micro {s['micro_batch_size']} x {s['grad_accum_steps']}; peak alloc {gib(s['peak_allocated_bytes'])}, "
                f"reserved {gib(s['peak_reserved_bytes'])} {budget}; step {_ms(s['step_s'])}; 20k ex {proj}")
        if name == "seed000":
            judged = s.get("target_note") or ("target met" if s.get("meets_target") else "target MISSED")
            text += f" (target <= {TARGET_S:.0f} s, {judged}; RTX 2070 {REFERENCE_S:.0f} s)"
        return text + (f"; {s['run_error']}" if s.get("run_error") else "")
    if name == "peft_step_time":
        return f"{sum(r['status'] == 'ok' for r in s['rows'])} of {len(s['rows'])} measured (rows below)"
    if name == "oom_retry":
        chain = " -> ".join(map(str, s.get("micro_batch_chain", [])))
        return (f"micro {chain} ({s['oom_retries']} retries), accum {s['grad_accum_steps']}, "
                f"run {s['run_status']}, {s['examples']} examples")
    return s.get("reason", "")


def render_section(name: str, s: dict) -> str:
    lines = [f"{name:<22} {s['status']:<8} {_figures(name, s)}"]
    if name == "variants" and "rows" in s:
        for r in s["rows"]:
            if r["status"] == "ok":
                metric = next((k for k in r if k in ("accuracy", "mcc", "pearson", "metric")), None)
                val = r.get(metric)
                text = (f"loss {r['train_loss']:.4f}, {metric} {val:.3f}" if isinstance(val, float)
                        and isinstance(r.get("train_loss"), float) else f"steps {r['steps']}")
                text += f", {r['seconds']:.1f} s"
            else:
                text = (r.get("error") or r.get("reason") or "")[:140]
            lines.append(f"  {r['variant']:<20} {r['status']:<8} {text}")
    if name == "peft_step_time" and "rows" in s:
        for r in s["rows"]:
            if r["status"] == "ok":
                judged = "" if "meets_target" not in r else ("  target met" if r["meets_target"] else "  target MISSED")
                text = (f"lorabench {r['lorabench_ms']:.2f} ms, PEFT {r['peft_ms']:.2f} ms, floor {r['floor_ms']:.2f} ms,"
                        f" ratio {r['ratio']:.2f}, overhead ours {100 * r['lorabench_overhead']:.0f}% / PEFT "
                        f"{100 * r['peft_overhead']:.0f}%{judged}")
            else:
                text = r.get("error", "")[:140]
            lines.append(f"  {r['variant']:<20} {r['status']:<8} {text}")
    return "\n".join(lines)


def render(report: dict) -> str:
    m = report["meta"]
    head = (f"lorabench GPU check ({'tiny' if m.get('tiny') else 'full'}) on {m.get('device_name')}: torch {m.get('torch')}, "
            f"transformers {m.get('transformers')}, peft {m.get('peft')}, {m.get('bitsandbytes')}; "
            f"{m.get('elapsed_s', 0):.0f} s")
    rule = "-" * 100
    body = [render_section(name, s) for name, s in report["sections"].items()]
    return "\n".join([head, f"{'check':<22} {'status':<8} figures", rule, *body, rule])


# ---- main ---------------------------------------------------------------------------------------
