"""Secure aggregation: the server learns only the sum of the clients' integer vectors.

The protocol of Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving
Machine Learning"), with the sparse neighbourhoods of Bell et al. 2020 (SecAgg+) as an option.
It runs the secure-sum intrinsics (`federated_secure_sum_bitwidth`, `federated_secure_sum`):
among simulated clients (`fedsim.core.secagg.simulation`) and, with the same classes, on silos.

Modules, one job each:
- `shamir`: t-out-of-n secret sharing over the prime field of 2**521 - 1;
- `crypto`: the primitives, all from pyca `cryptography` (X25519, Ed25519, HKDF-SHA256,
  AES-GCM, AES-256-CTR as the mask generator); nothing here is written from scratch;
- `vectors`: integer leaves <-> one vector modulo 2**k, and masks;
- `messages`: what travels between a client and the server, with strict JSON forms;
- `client`, `server`: the two parties' state machines;
- `simulation`: the protocol run among simulated clients, with dropouts.

Trust assumptions: the server may be malicious towards privacy (it may lie about who dropped,
swap keys or replay messages; each client refuses these, naming why); clients' long-term
identity keys are pinned out of band (a silo's config); fewer than `threshold` clients collude
with the server. Integrity of the sum against malicious clients is not a goal (a client may
send any vector in range).

Example::

    result = simulation.run_protocol({"a": x_a, "b": x_b, "c": x_c}, threshold=2, modulus_bits=32)
"""

from fedsim.core.secagg.messages import ProtocolError, ProtocolRefusal
from fedsim.core.secagg.params import SecAggParams

__all__ = ["ProtocolError", "ProtocolRefusal", "SecAggParams"]
