"""The secure-sum protocol among simulated clients: exact sums under every dropout pattern, a
cheating server refused with its reason, and masked inputs that say nothing about the input."""

import itertools

import numpy as np
import pytest

from fedsim.core.secagg import crypto, simulation
from fedsim.core.secagg.client import SecAggClient
from fedsim.core.secagg.messages import AdvertiseKeys, KeyDirectory, ProtocolError, ProtocolRefusal, UnmaskRequest
from fedsim.core.secagg.params import SecAggParams
from fedsim.core.secagg.server import SecAggServer

CLIENTS = ("a", "b", "c", "d", "e")
BITS = 20
IDENTITIES = {c: crypto.identity_key() for c in CLIENTS}


def _inputs(seed=0, length=16, clients=CLIENTS, high=2**16):
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, high, length).astype(np.uint64) for c in clients}


def _patterns():
    """Every assignment of (stays, or dies before one of the steps) to the 5 clients."""
    return itertools.product((None,) + simulation.DROP_POINTS, repeat=len(CLIENTS))


def test_every_dropout_pattern_up_to_n_minus_t_gives_the_exact_sum():
    inputs = _inputs()
    recovered = 0
    for pattern in _patterns():
        drop = {c: point for c, point in zip(CLIENTS, pattern) if point is not None}
        if len(CLIENTS) - len(drop) < 3:
            continue
        outcome = simulation.run_protocol(inputs, threshold=3, modulus_bits=BITS, drop=drop, identities=IDENTITIES)
        # whoever sent a masked input is in the sum, whether or not it lived to unmask
        senders = [c for c in CLIENTS if drop.get(c) not in ("share_keys", "masked_input")]
        expected = np.sum([inputs[c] for c in senders], axis=0) % 2**BITS
        assert outcome.included == tuple(senders), drop
        np.testing.assert_array_equal(outcome.total, expected, err_msg=str(drop))
        recovered += 1
    assert recovered == 181  # 1 + 5*4 + 10*16 patterns with at most n - t = 2 clients lost


@pytest.mark.parametrize("point", simulation.DROP_POINTS)
def test_more_than_n_minus_t_dropouts_fail_with_the_reason(point):
    with pytest.raises(ProtocolError, match="the threshold is 3"):
        simulation.run_protocol(_inputs(), threshold=3, modulus_bits=BITS, drop={"a": point, "b": point, "c": point},
                                identities=IDENTITIES)


def test_secagg_plus_neighbourhoods_give_the_exact_sum_with_shares_that_do_not_grow_with_n():
    small, large = _inputs(1, clients=tuple("abcdefghi")), _inputs(2, clients=tuple("abcdefghijklmnopq"))
    drop = {"b": "masked_input", "e": "unmask"}
    for inputs in (small, large):
        outcome = simulation.run_protocol(inputs, threshold=3, modulus_bits=BITS, neighbours=4, drop=drop)
        senders = [c for c in inputs if c != "b"]
        np.testing.assert_array_equal(outcome.total, np.sum([inputs[c] for c in senders], axis=0) % 2**BITS)
    full = simulation.run_protocol(large, threshold=3, modulus_bits=BITS)
    plus = simulation.run_protocol(large, threshold=3, modulus_bits=BITS, neighbours=4)
    assert plus.uploaded_bytes["a"] < full.uploaded_bytes["a"] / 2


def test_the_masked_input_is_independent_of_the_input():
    """What the server receives from one client: uniform modulo 2**k and uncorrelated with its input,
    however structured the input (the plain upload correlates at r = 1)."""
    length = 20000
    ramp = (np.arange(length) % 2**16).astype(np.uint64)
    inputs = {"a": ramp, "b": ramp[::-1].copy(), "c": np.zeros(length, np.uint64)}
    params = SecAggParams("s", tuple(inputs), threshold=2, modulus_bits=32, vector_length=length)
    pinned = {c: crypto.public_bytes(IDENTITIES.get(c) or crypto.identity_key()) for c in inputs}
    clients = {c: SecAggClient(c, params, IDENTITIES[c], pinned) for c in inputs}
    server = SecAggServer(params)
    for client in clients.values():
        server.receive_keys(client.advertise())
    directory = server.close_advertising()
    for client in clients.values():
        server.receive_shares(client.share_keys(directory))
    uploads = {c: np.frombuffer(clients[c].masked_input(shares, inputs[c]).vector, "<u4").astype(np.float64)
               for c, shares in server.close_sharing().items()}
    for c in ("a", "b"):
        r = np.corrcoef(uploads[c], inputs[c].astype(np.float64))[0, 1]
        assert abs(r) < 0.05, (c, r)
        assert abs(uploads[c].mean() / 2**32 - 0.5) < 0.01  # uniform: mean 1/2, variance 1/12
        assert abs(uploads[c].var() / 2**64 - 1 / 12) < 0.005
    assert abs(np.corrcoef(uploads["a"], uploads["b"])[0, 1]) < 0.05  # nor with another client's


# A server that cheats -------------------------------------------------------------------------------

def _session(clients=CLIENTS, threshold=3):
    params = SecAggParams("cheat", clients, threshold=threshold, modulus_bits=BITS, vector_length=4)
    pinned = {c: crypto.public_bytes(IDENTITIES[c]) for c in clients}
    parties = {c: SecAggClient(c, params, IDENTITIES[c], pinned) for c in clients}
    return params, parties, SecAggServer(params)


def _through_sharing():
    """An honest session up to the forwarded shares: `(params, parties, server, forwarded)`."""
    params, parties, server = _session()
    for party in parties.values():
        server.receive_keys(party.advertise())
    directory = server.close_advertising()
    for party in parties.values():
        server.receive_shares(party.share_keys(directory))
    return params, parties, server, server.close_sharing()


def _through_masking(drop=()):
    params, parties, server, forwarded = _through_sharing()
    for c, shares in forwarded.items():
        if c not in drop:
            server.receive_masked(parties[c].masked_input(shares, np.ones(4, np.uint64)))
    survivors = server.close_masking()
    signatures = {c: parties[c].sign_survivors(survivors) for c in survivors}
    return params, parties, survivors, signatures


def test_a_client_both_surviving_and_dropped_is_refused():
    _, parties, survivors, signatures = _through_masking(drop=("e",))
    with pytest.raises(ProtocolRefusal, match="a: the server lists b as both surviving and dropped"):
        parties["a"].unmask(UnmaskRequest(survivors, ("b", "e")), signatures)


def test_a_server_telling_clients_different_survivors_is_refused():
    """The equivocation that would unmask b: tell a that b dropped (to get b's mask key share)
    while b's self-mask seed is asked of the others. a signed the true list; it refuses."""
    _, parties, survivors, signatures = _through_masking(drop=("e",))
    with pytest.raises(ProtocolRefusal, match="not the list this client signed"):
        parties["a"].unmask(UnmaskRequest(tuple(s for s in survivors if s != "b"), ("b", "e")), signatures)


def test_too_few_or_forged_signatures_on_the_survivors_are_refused():
    _, parties, survivors, signatures = _through_masking()
    with pytest.raises(ProtocolRefusal, match="only 2 survivors signed"):
        parties["a"].unmask(UnmaskRequest(survivors, ()), {c: signatures[c] for c in ("a", "b")})
    _, parties, survivors, signatures = _through_masking()
    forged = dict(signatures, c=crypto.sign(crypto.identity_key(), b"anything"))
    with pytest.raises(ProtocolRefusal, match="c's signature on the survivors' list does not verify"):
        parties["a"].unmask(UnmaskRequest(survivors, ()), forged)


def test_a_server_that_swaps_a_key_is_detected_by_the_pinned_identity():
    _, parties, server = _session()
    advertised = [party.advertise() for party in parties.values()]
    own = crypto.public_bytes(crypto.new_agreement_key())
    swapped = [AdvertiseKeys(m.sender, m.cipher_public, own, m.signature) if m.sender == "b" else m for m in advertised]
    with pytest.raises(ProtocolRefusal, match="keys listed for b are not signed by its pinned identity key"):
        parties["a"].share_keys(KeyDirectory(tuple(swapped)))


def test_replayed_reordered_and_other_session_messages_are_refused():
    params, parties, server = _session()
    advertised = [party.advertise() for party in parties.values()]
    for message in advertised:
        server.receive_keys(message)
    directory = server.close_advertising()
    with pytest.raises(ProtocolRefusal, match="at step 'advertised'; a replayed or reordered message"):
        parties["a"].masked_input(None, np.ones(4, np.uint64))  # out of order
    with pytest.raises(ProtocolRefusal, match="replayed or reordered"):
        parties["b"].advertise()  # a second time
    parties["c"].share_keys(directory)
    with pytest.raises(ProtocolRefusal, match="replayed or reordered"):
        parties["c"].share_keys(directory)
    # Keys signed for another session are worthless here: the signature binds the session digest.
    _, other_parties, _ = _session()
    other_keys = [party.advertise() for party in other_parties.values()]
    other = SecAggParams("another round", CLIENTS, threshold=3, modulus_bits=BITS, vector_length=4)
    fresh = SecAggClient("d", other, IDENTITIES["d"], {c: crypto.public_bytes(IDENTITIES[c]) for c in CLIENTS})
    fresh.advertise()
    with pytest.raises(ProtocolRefusal, match="not signed by its pinned identity key"):
        fresh.share_keys(KeyDirectory(tuple(other_keys)))


def test_an_altered_share_ciphertext_is_refused():
    _, parties, _, forwarded = _through_sharing()
    shares = forwarded["a"]
    tampered = bytearray(shares.ciphertexts["b"])
    tampered[-1] ^= 1
    shares = type(shares)("a", dict(shares.ciphertexts, b=bytes(tampered)))
    with pytest.raises(ProtocolRefusal, match="the share from b does not authenticate"):
        parties["a"].masked_input(shares, np.ones(4, np.uint64))


@pytest.mark.parametrize("bits", [7, 20, 32, 40, 64])
def test_a_modular_sum_in_place_equals_the_term_by_term_definition(bits):
    from fedsim.core.secagg import vectors

    rng = np.random.default_rng(bits)
    length = 1001
    inputs = [rng.integers(0, 2**bits, length, dtype=np.uint64) if bits < 64 else rng.integers(0, 2**63, length, dtype=np.uint64)
              for _ in range(3)]
    seeds = [bytes([i]) * 32 for i in range(4)]
    expected = np.zeros(length, np.uint64)
    total = vectors.ModularSum(length, bits)
    for index, vector in enumerate(inputs):
        expected = vectors.add(expected, vector, bits) if index % 2 == 0 else vectors.subtract(expected, vector, bits)
        total.add(vector, sign=1 if index % 2 == 0 else -1)
    for index, seed in enumerate(seeds):
        mask = vectors.mask(seed, length, bits)
        expected = vectors.add(expected, mask, bits) if index % 2 else vectors.subtract(expected, mask, bits)
        total.add_mask(seed, sign=1 if index % 2 else -1)
    np.testing.assert_array_equal(total.value(), expected)
    # and against Python's integers, the definition itself
    reference = [0] * length
    for index, vector in enumerate(inputs):
        reference = [(r + (1 if index % 2 == 0 else -1) * int(v)) for r, v in zip(reference, vector)]
    for index, seed in enumerate(seeds):
        reference = [(r + (1 if index % 2 else -1) * int(m)) for r, m in zip(reference, vectors.mask(seed, length, bits))]
    assert [r % 2**bits for r in reference] == [int(v) for v in total.value()]


def test_the_mask_keystream_is_aes_ctr_by_its_definition_written_in_place_or_not():
    """AES-256-CTR from counter 0: block i of the keystream is AES_k(i as 128 big-endian bits)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed = bytes(range(32))
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    length = 16 * 5 + 7  # not a whole number of blocks
    expected = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(6))[:length]
    assert crypto.keystream(seed, length) == expected
    buffer = bytearray(length + 15)
    assert bytes(crypto.keystream_into(seed, buffer, length)) == expected
    assert bytes(crypto.keystream_into(seed, buffer, length)) == expected  # a reused buffer
    with pytest.raises(ValueError, match="bytes are needed|are needed"):
        crypto.keystream_into(seed, bytearray(length), length)
