"""A fake training run honouring the workdir contract (docs/CONTRACTS.md), for sweep tests.

python -m fake_run --config=C --game=G --seed=S --workdir=W [--steps=N] [--sleep=S]
                   [--crash_at=K] [--kill_at=K] [--eval_every=E] [--any_other=value]

Each step appends to metrics.jsonl and checkpoints a counter (checkpoints/ckpt_<step>.json,
tmp + rename, last 2 kept); a re-run resumes from the last checkpoint; final.json is written
last. --crash_at / --kill_at make the FIRST attempt raise / SIGKILL itself at step K.
attempts.jsonl records, per attempt: start step, pid, CUDA_VISIBLE_DEVICES, start/end times.
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def _atomic_write(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--config", required=True)
  p.add_argument("--game", default="")
  p.add_argument("--games", default="")
  p.add_argument("--seed", type=int, required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--sleep", type=float, default=0.0)
  p.add_argument("--crash_at", type=int, default=-1)
  p.add_argument("--kill_at", type=int, default=-1)
  p.add_argument("--eval_every", type=int, default=0)
  args, _unknown = p.parse_known_args()
  wd = Path(args.workdir)
  if (wd / "final.json").exists():
    return 0
  wd.mkdir(parents=True, exist_ok=True)
  ckdir = wd / "checkpoints"
  ckdir.mkdir(exist_ok=True)
  if not (wd / "config.json").exists():
    _atomic_write(
        wd / "config.json",
        json.dumps(
            {"config_name": args.config, "game": args.game, "seed": args.seed, "steps": args.steps}
        ),
    )
  ckpts = sorted(ckdir.glob("ckpt_*.json"), key=lambda q: int(q.stem.split("_")[1]))
  step = json.loads(ckpts[-1].read_text())["step"] if ckpts else 0
  first_attempt = not (wd / "attempts.jsonl").exists()
  attempt = {
      "start_step": step,
      "pid": os.getpid(),
      "t0": time.time(),
      "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
      "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
  }
  with open(wd / "attempts.jsonl", "a") as f:
    f.write(json.dumps(attempt) + "\n")
  print(f"fake run {args.game} seed {args.seed}: starting at step {step}", flush=True)
  t_start = time.time()
  with open(wd / "metrics.jsonl", "a") as metrics:
    while step < args.steps:
      if first_attempt and step == args.crash_at:
        raise RuntimeError(f"forced crash at step {step}")
      if first_attempt and step == args.kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
      time.sleep(args.sleep)
      step += 1
      rec = {"step": step, "time_s": time.time() - t_start}
      if args.eval_every and step % args.eval_every == 0:
        rec["eval_mean_score"] = float(step)
        rec["eval_episodes"] = 2
      metrics.write(json.dumps(rec) + "\n")
      metrics.flush()
      _atomic_write(ckdir / f"ckpt_{step}.json", json.dumps({"step": step}))
      for old in sorted(ckdir.glob("ckpt_*.json"), key=lambda q: int(q.stem.split("_")[1]))[:-2]:
        old.unlink(missing_ok=True)
  score = 10.0 * args.seed + 1.0
  (wd / "eval.csv").write_text(
      "episode,score,length\n0,%s,100\n1,%s,100\n" % (score - 1, score + 1)
  )
  with open(wd / "attempts.jsonl", "a") as f:
    f.write(json.dumps({"end": time.time(), "pid": os.getpid()}) + "\n")
  _atomic_write(
      wd / "final.json",
      json.dumps(
          {
              "game": args.game or args.games,
              "seed": args.seed,
              "config_name": args.config,
              "steps": step,
              "budget_steps": args.steps,
              "eval_episodes": 2,
              "mean_score": score,
              "hns": 0.0,
              "wall_time_s": time.time() - t_start,
          }
      ),
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
