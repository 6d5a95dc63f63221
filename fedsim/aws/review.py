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
import sys
from typing import Optional

from fedsim.aws import protocol
from fedsim.aws.config import StackConfig
from fedsim.aws.store import MAX_COMPUTATION_BYTES, Store
from fedsim.core import review

__all__ = ["SILO_PHASES", "review_computation", "review_run", "main"]

SILO_PHASES = ("preprocess", "work")  # what a silo deserializes and runs in a round


def review_computation(store: Store, digest: str) -> review.ComputationSummary:
    """The summary of the stored computation whose SHA-256 is `digest` (checked)."""
    data = store.get_checked(protocol.computation_key(digest), digest, max_bytes=MAX_COMPUTATION_BYTES)
    return review.summarize(data)


def review_run(store: Store, run_id: str) -> dict:
    """`{phase: summary}` for the computations silos run in `run_id`."""
    manifest = store.get_json(f"runs/{run_id}/manifest.json")
    references = dict(manifest.get("phases", {}))
    if manifest.get("preprocess"):
        references["preprocess"] = manifest["preprocess"]
    return {phase: review_computation(store, references[phase]["sha256"]) for phase in SILO_PHASES if phase in references}


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
    except Exception as error:  # a missing object, a stack that does not answer: one line, not a traceback
        parser.exit(1, f"python -m fedsim.aws.review: {type(error).__name__}: {error}\n")
    for phase, summary in summaries.items():
        sys.stdout.write(f"== {phase}\n{summary.format()}\n")
    if args.run:
        sys.stdout.write("pin with: --accept " + ",".join(s.sha256 for s in summaries.values()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
