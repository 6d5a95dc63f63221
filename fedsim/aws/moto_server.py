"""The local stack's moto server: `python fedsim/aws/moto_server.py -H 127.0.0.1 -p PORT`.

Run as a file (it imports moto only, not fedsim or TensorFlow, so the server starts fast).

Plain `moto.server`, plus one thing IAM enforcement needs: moto's emulated Step Functions calls
SNS with the fixed credentials `ak`/`sk`, which no IAM user holds, so under enforcement every
round message would be refused. This registers those credentials as the emulated service's own
principal (an IAM user allowed only `sns:Publish`, as the state machine's role is) before
serving. Local stack only; nothing of it exists on AWS.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

__all__ = ["main", "STATES_SERVICE_USER"]

STATES_SERVICE_USER = "fedsim-states-service"
_ACCOUNT = "123456789012"  # moto's default account
_PUBLISH_ONLY = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sns:Publish", "Resource": "*"}]})


def _register_states_service_credentials() -> None:
    from moto.iam.models import iam_backends

    backend = iam_backends[_ACCOUNT]["aws"]
    backend.create_user(region_name="us-east-1", user_name=STATES_SERVICE_USER)
    backend.put_user_policy(STATES_SERVICE_USER, "publish-round-messages", _PUBLISH_ONLY)
    key = backend.create_access_key(STATES_SERVICE_USER)
    key.access_key_id, key.secret_access_key = "ak", "sk"  # what moto's Step Functions signs with


def main(argv: Optional[list] = None) -> None:
    from moto import server

    _register_states_service_credentials()
    server.main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
