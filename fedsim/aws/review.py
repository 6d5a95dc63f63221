"""Review what a silo would run, before pinning it: `python -m fedsim.aws.review`.

A silo operator reads the computations of a stack from its bucket (content-addressed, so the
hash printed is the hash of the bytes read) and sees, for each one, its hash, type signature,
ops with counts and constant sizes (`fedsim.core.review`). The hashes go to the silo's
`--accept`.

    python -m fedsim.aws.review --stack-config stack.json --run 3f9a0c1d2b4e5f60   # a run's silo phases
    python -m fedsim.aws.review --stack-config stack.json --hash 77ab...02         # one computation
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from fedsim.aws import protocol
from fedsim.aws.config import StackConfig
from fedsim.aws.store import MAX_COMPUTATION_BYTES, Store
from fedsim.core import review

__all__ = ["SILO_PHASES", "review_computation", "review_run", "run_pins", "main"]

SILO_PHASES = ("preprocess", "work")  # what a silo deserializes and runs in a round


def review_computation(store: Store, digest: str) -> review.ComputationSummary:
    """The summary of the stored computation whose SHA-256 is `digest` (checked)."""
    data = store.get_checked(protocol.computation_key(digest), digest, max_bytes=MAX_COMPUTATION_BYTES)
    return review.summarize(data)


def review_run(store: Store, run_id: str) -> dict:
    """`{phase: summary}` for the computations silos run in `run_id`."""
    references = _silo_references(store.get_json(f"runs/{run_id}/manifest.json"))
    return {phase: review_computation(store, references[phase]["sha256"]) for phase in SILO_PHASES if phase in references}


def run_pins(store: Store, run_id: str) -> dict:
    """`{phase: what a silo pins}` for `run_id`: each computation's hash, the work's with the
    run's secure layout (`protocol.work_pin`).

    Args:
        store: the stack's store.
        run_id: the run.

    Returns:
        `{phase: hex digest}` for the phases silos run (`SILO_PHASES`), and `evaluation_work`
        when the run evaluates.
    """
    manifest = store.get_json(f"runs/{run_id}/manifest.json")
    references = _silo_references(manifest)
    pins = {phase: references[phase]["sha256"] for phase in SILO_PHASES if phase in references}
    if "work" in pins:
        pins["work"] = protocol.work_pin(pins["work"], manifest.get("secure_sums"))
    evaluation = manifest.get("evaluation")
    if isinstance(evaluation, dict) and isinstance(evaluation.get("phases", {}).get("work"), dict):
        pins["evaluation_work"] = protocol.work_pin(evaluation["phases"]["work"]["sha256"], evaluation.get("secure_sums"))
    return pins


def _silo_references(manifest: dict) -> dict:
    references = dict(manifest.get("phases", {}))
    if manifest.get("preprocess"):
        references["preprocess"] = manifest["preprocess"]
    return references


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedsim.aws.review", description=__doc__.splitlines()[0])
    parser.add_argument("--stack-config", required=True, help="JSON written by LocalStack or StackConfig.to_json")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", help="a run id: review the computations its silos run")
    target.add_argument("--hash", help="the SHA-256 of one stored computation")
    args = parser.parse_args(argv)
    try:
        with open(args.stack_config) as stream:
            store = Store(StackConfig.from_json(stream.read()))
        summaries = review_run(store, args.run) if args.run else {"computation": review_computation(store, args.hash)}
        pins = run_pins(store, args.run) if args.run else {}
        secure_sums = store.get_json(f"runs/{args.run}/manifest.json").get("secure_sums") if args.run else None
    except Exception as error:  # a missing object, a stack that does not answer: one line, not a traceback
        parser.exit(1, f"python -m fedsim.aws.review: {type(error).__name__}: {error}\n")
    for phase, summary in summaries.items():
        sys.stdout.write(f"== {phase}\n{summary.format()}\n")
    if secure_sums:
        sys.stdout.write(f"== secure sums (per aggregation of the work's output: bitwidths, or none: in the clear)\n"
                         f"{json.dumps(secure_sums)}\nthe work's pin covers this layout\n")
    if args.run:
        sys.stdout.write("pin with: --accept " + ",".join(pins[phase] for phase in summaries) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
